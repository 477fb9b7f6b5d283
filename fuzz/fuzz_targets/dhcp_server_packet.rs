//! Datagrams anyone on the segment sends to the boot server's DHCP ports (67, 4011).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the sender's port, 0 among them.
    let Some((&port, packet)) = data.split_first() else {
        return;
    };
    let port = match port % 3 {
        0 => 0,
        1 => 68,
        _ => 4011,
    };
    cairn_installer::fuzzing::dhcp_server_packet(packet, port);
});
