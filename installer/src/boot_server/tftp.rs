//! TFTP for the iPXE binaries: a NIC's PXE ROM speaks only TFTP, so it first loads iPXE
//! (`ipxe.efi` under UEFI, `undionly.kpxe` under BIOS) from here; iPXE then asks DHCP again,
//! identifies itself as iPXE and gets its per-MAC script over HTTP.
//!
//! The protocol (RFC 1350 with the blksize, timeout and tsize options) is async-tftp's; it
//! runs on its own async-io reactor, so it is polled from tokio like any other future.
//!
//! Anyone on the PXE LAN can send requests, from any source port and never acknowledge a
//! block. async-tftp's defaults would then resend each block 100 times, at a timeout the
//! client picks (up to 255 s), with no cap on concurrent transfers: each holds a file and a
//! socket, so a flood of requests exhausts the boot server's descriptors and no server in
//! the rack can boot (the `tftp_request` fuzz target found it). Here a transfer nobody
//! acknowledges ends after a few seconds, the client cannot stretch that or its window,
//! and at most [`Limits::transfers`] run at once: one more is told the server is busy, which a
//! PXE ROM answers by asking again.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_tftp::packet;
use async_tftp::server::handlers::{DirHandler, DirHandlerMode};
use async_tftp::server::{Handler, TftpServerBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The files a PXE ROM is sent, by firmware: (UEFI, BIOS).
pub const BOOT_FILES: (&str, &str) = ("ipxe.efi", "undionly.kpxe");

/// How much of the boot server one TFTP client can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transfers running at once (a whole rack PXE-booting together stays well below).
    pub transfers: usize,
    /// How long a block waits for its acknowledgement before it is sent again.
    pub timeout: Duration,
    /// How many times a block is sent again before the transfer is dropped.
    pub retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            transfers: 128,
            timeout: Duration::from_secs(2),
            retries: 4,
        }
    }
}

/// Why TFTP could not start.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// A boot file is missing from the iPXE directory.
    #[error("{0} is missing (install Debian's ipxe package, or pass --ipxe-dir)")]
    Missing(String),
    /// The server could not bind or failed.
    #[error("TFTP on {addr}")]
    Serve {
        /// Where it listened.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: async_tftp::Error,
    },
}

/// A bound read-only TFTP server for the iPXE binaries in `dir`.
pub struct Tftp {
    server: async_tftp::server::TftpServer<Capped>,
    addr: SocketAddr,
}

impl Tftp {
    /// Binds `addr` and serves `dir` read-only within `limits`, after checking both boot
    /// files are there.
    pub async fn bind(dir: &Path, addr: SocketAddr, limits: Limits) -> Result<Self, TftpError> {
        for name in [BOOT_FILES.0, BOOT_FILES.1] {
            if !dir.join(name).is_file() {
                return Err(TftpError::Missing(dir.join(name).display().to_string()));
            }
        }
        let serve = |source| TftpError::Serve { addr, source };
        let handler = Capped {
            dir: DirHandler::new(dir, DirHandlerMode::ReadOnly).map_err(serve)?,
            slots: Arc::new(Semaphore::new(limits.transfers)),
        };
        let server = TftpServerBuilder::with_handler(handler)
            .bind(addr)
            .timeout(limits.timeout)
            .max_send_retries(limits.retries)
            .ignore_client_timeout()
            .ignore_client_window_size()
            .build()
            .await
            .map_err(serve)?;
        let addr = server.listen_addr().map_err(serve)?;
        Ok(Self { server, addr })
    }

    /// Where it listens (the port is chosen by the kernel when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until dropped.
    pub async fn serve(self) -> Result<(), TftpError> {
        let addr = self.addr;
        self.server
            .serve()
            .await
            .map_err(|source| TftpError::Serve { addr, source })
    }
}

/// The read-only directory handler, holding one of a fixed number of slots per transfer.
struct Capped {
    dir: DirHandler,
    slots: Arc<Semaphore>,
}

/// A file being sent; its slot frees when async-tftp drops it at the end of the transfer.
struct Slotted<R> {
    file: R,
    _slot: OwnedSemaphorePermit,
}

impl<R: futures::io::AsyncRead + Unpin> futures::io::AsyncRead for Slotted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl Handler for Capped {
    type Reader = Slotted<<DirHandler as Handler>::Reader>;
    type Writer = futures::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!(%client, file = %path.display(), "TFTP busy: every transfer slot is taken");
            return Err(packet::Error::Msg(
                "boot server busy: too many transfers, try again".into(),
            ));
        };
        let (file, size) = self.dir.read_req_open(client, path).await?;
        Ok((Slotted { file, _slot: slot }, size))
    }

    async fn write_req_open(
        &mut self,
        _client: &SocketAddr,
        _path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        Err(packet::Error::IllegalOperation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real client (curl) fetches both boot files whole, with a negotiated block size, and
    /// a missing file is an error, not an empty download.
    #[tokio::test]
    async fn curl_fetches_the_ipxe_binaries_over_tftp() {
        let dir = tempfile::tempdir().unwrap();
        let efi: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(dir.path().join("ipxe.efi"), &efi).unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"bios").unwrap();
        let tftp = Tftp::bind(
            dir.path(),
            "127.0.0.1:0".parse().unwrap(),
            Limits::default(),
        )
        .await
        .unwrap();
        let addr = tftp.addr();
        tokio::spawn(tftp.serve());
        let fetch = |name: &'static str, blksize: &'static str| {
            tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "--fail",
                    "--max-time",
                    "20",
                    "--tftp-blksize",
                    blksize,
                ])
                .arg(format!("tftp://{addr}/{name}"))
                .output()
        };
        let out = fetch("ipxe.efi", "1468")
            .await
            .expect("curl is needed: apt-get install curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == efi,
            "ipxe.efi differs ({} bytes)",
            out.stdout.len()
        );
        let out = fetch("undionly.kpxe", "512").await.unwrap();
        assert_eq!(out.stdout, b"bios");
        let out = fetch("nothere.efi", "512").await.unwrap();
        assert!(!out.status.success());
    }

    /// What a client sees of the limits: a transfer nobody acknowledges is resent
    /// `retries` times and dropped, the client's own timeout is declined, one transfer over
    /// the cap is told the server is busy, and a freed slot serves the next client.
    #[tokio::test]
    async fn an_unacknowledged_flood_is_bounded_and_the_server_recovers() {
        use tokio::net::UdpSocket;
        use tokio::time::{Instant, timeout};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), vec![1u8; 2000]).unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"bios").unwrap();
        let limits = Limits {
            transfers: 2,
            timeout: Duration::from_millis(300),
            retries: 2,
        };
        let tftp = Tftp::bind(dir.path(), "127.0.0.1:0".parse().unwrap(), limits)
            .await
            .unwrap();
        let server = tftp.addr();
        tokio::spawn(tftp.serve());
        let rrq = |opts: &[&str]| {
            let mut p = b"\0\x01ipxe.efi\0octet\0".to_vec();
            for o in opts {
                p.extend_from_slice(o.as_bytes());
                p.push(0);
            }
            p
        };
        async fn recv(sock: &UdpSocket, wait: u64) -> Option<Vec<u8>> {
            let mut buf = [0u8; 1500];
            match timeout(Duration::from_millis(wait), sock.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
                _ => None,
            }
        }
        // Two clients that never acknowledge; the first asks for a 255 s timeout.
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.send_to(&rrq(&["timeout", "255", "tsize", "0"]), server)
            .await
            .unwrap();
        b.send_to(&rrq(&[]), server).await.unwrap();
        let oack = recv(&a, 2000).await.expect("an OACK");
        assert_eq!(oack[..2], [0, 6], "{oack:?}");
        let opts = String::from_utf8_lossy(&oack[2..]).to_lowercase();
        assert!(
            opts.contains("tsize") && !opts.contains("timeout"),
            "{opts:?}"
        );
        let first = recv(&b, 2000).await.expect("block 1");
        assert_eq!(first[..4], [0, 3, 0, 1]);
        // Both slots are taken: a third client is told so at once.
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&rrq(&[]), server).await.unwrap();
        let busy = recv(&c, 2000).await.expect("an answer while busy");
        assert_eq!(busy[..2], [0, 5], "{busy:?}");
        assert!(String::from_utf8_lossy(&busy).contains("busy"), "{busy:?}");
        // b's block 1 is resent `retries` times, then nothing more.
        let mut resent = 0;
        while let Some(p) = recv(&b, 1500).await {
            if p[..4] == [0, 3, 0, 1] {
                resent += 1;
            }
        }
        assert_eq!(resent, limits.retries, "block 1 resent");
        // The dropped transfers gave their slots back.
        let start = Instant::now();
        let d = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let served = loop {
            d.send_to(&rrq(&[]), server).await.unwrap();
            match recv(&d, 300).await {
                Some(p) if p[..2] == [0, 3] => break true,
                _ if start.elapsed() > Duration::from_secs(5) => break false,
                _ => {}
            }
        };
        assert!(
            served,
            "no slot came back after the abandoned transfers ended"
        );
    }

    #[tokio::test]
    async fn a_missing_boot_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), b"x").unwrap();
        let err = Tftp::bind(
            dir.path(),
            "127.0.0.1:0".parse().unwrap(),
            Limits::default(),
        )
        .await
        .err()
        .expect("undionly.kpxe is missing");
        assert!(err.to_string().contains("undionly.kpxe"), "{err}");
    }
}
