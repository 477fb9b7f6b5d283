//! Free loopback ports, for peers that cannot listen on port 0 and report the port (sushy-tools,
//! etcd, chromedriver, `ipmi_sim`). Whatever can bind port 0 itself should: a port picked here
//! is free when picked, and another process could take it before the peer binds it.

use std::net::{TcpListener, UdpSocket};

/// `n` distinct free TCP ports on 127.0.0.1.
pub fn free_tcp_ports(n: usize) -> Vec<u16> {
    // Every listener is held until all are chosen, so no port is handed out twice.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// One free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    free_tcp_ports(1)[0]
}

/// One free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("binding a loopback UDP port")
        .port()
}
