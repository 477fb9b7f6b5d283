//! Datagrams anyone on the segment sends to the boot server's TFTP port. The parser is
//! async-tftp's (private), so each input goes to a real server over UDP, which must then
//! still serve a well-formed read request, whole, to a client that retransmits as RFC 1350
//! asks. (It found that requests nobody acknowledges used to pile up until the server ran
//! out of descriptors; see the boot server's tftp module.)
#![no_main]

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

use cairn_installer::boot_server::tftp::{BOOT_FILES, Limits, Tftp};
use libfuzzer_sys::fuzz_target;

const FILE_LEN: usize = 3000;

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
            std::fs::write(dir.join(name), vec![0x90u8; FILE_LEN]).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tftp = Tftp::bind(&dir, "127.0.0.1:0".parse().unwrap(), Limits::default())
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
    // A new port each time: the server serves one transfer per client address at a time. A
    // port the kernel hands out again right after the last transfer from it can find that
    // transfer not yet forgotten, so, like any client, resend what got no answer.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let (mut to, mut last) = (s.addr, rrq);
    let mut got = 0;
    for block in 1u16.. {
        let mut tries = 0;
        let n = loop {
            probe.send_to(&last, to).unwrap();
            match probe.recv_from(&mut buf) {
                Ok((n, from)) => {
                    to = from;
                    break n;
                }
                Err(_) if tries < 5 => tries += 1,
                Err(e) => panic!("the TFTP server stopped answering (block {block}): {e}"),
            }
        };
        assert!(
            n >= 4 && buf[..2] == [0, 3] && buf[2..4] == block.to_be_bytes(),
            "no DATA block {block}: {:?}",
            &buf[..n]
        );
        got += n - 4;
        last = [&[0, 4][..], &block.to_be_bytes()].concat();
        if n - 4 < 512 {
            probe.send_to(&last, to).unwrap();
            break;
        }
    }
    assert_eq!(got, FILE_LEN, "the file came back whole");
});
