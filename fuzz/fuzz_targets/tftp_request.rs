//! Datagrams anyone on the segment sends to the boot server's TFTP port. The parser is
//! async-tftp's (private), so each input goes to a real server over UDP, which must then
//! still serve a well-formed read request.
#![no_main]

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

use cairn_installer::boot_server::tftp::{BOOT_FILES, Tftp};
use libfuzzer_sys::fuzz_target;

struct Server {
    addr: SocketAddr,
    fuzz: UdpSocket,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cairn-fuzz-tftp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [BOOT_FILES.0, BOOT_FILES.1] {
            std::fs::write(dir.join(name), vec![0x90u8; 3000]).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tftp = Tftp::bind(&dir, "127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                tx.send(tftp.addr()).unwrap();
                tftp.serve().await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        let fuzz = UdpSocket::bind("127.0.0.1:0").unwrap();
        Server { addr, fuzz }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = server();
    let _ = s.fuzz.send_to(data, s.addr);
    // A read request the server must still answer with the first block.
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(BOOT_FILES.1.as_bytes());
    rrq.extend_from_slice(b"\0octet\0");
    // A new port each time: the server serves one transfer per client address at a time.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    probe.send_to(&rrq, s.addr).unwrap();
    let mut buf = [0u8; 1024];
    let (n, from) = probe
        .recv_from(&mut buf)
        .expect("the TFTP server stopped answering");
    assert!(
        n >= 4 && buf[..2] == [0, 3],
        "no DATA block: {:?}",
        &buf[..n]
    );
    // Abort the transfer (ERROR packet) so it does not linger.
    let _ = probe.send_to(&[0, 5, 0, 0, 0], from);
});
