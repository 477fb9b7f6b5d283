//! Datagrams a DHCP server (or anyone on the segment) sends to cairn's DHCP client.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_netplan::fuzzing::dhcp_client_packet(data);
});
