//! TFTP for the iPXE binaries: a NIC's PXE ROM speaks only TFTP, so it first loads iPXE
//! (`ipxe.efi` under UEFI, `undionly.kpxe` under BIOS) from here; iPXE then asks DHCP again,
//! identifies itself as iPXE and gets its per-MAC script over HTTP.
//!
//! The protocol (RFC 1350 with the blksize, timeout and tsize options) is async-tftp's; it
//! runs on its own async-io reactor, so it is polled from tokio like any other future.

use std::net::SocketAddr;
use std::path::Path;

use async_tftp::server::TftpServerBuilder;

/// The files a PXE ROM is sent, by firmware: (UEFI, BIOS).
pub const BOOT_FILES: (&str, &str) = ("ipxe.efi", "undionly.kpxe");

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
    server: async_tftp::server::TftpServer<async_tftp::server::handlers::DirHandler>,
    addr: SocketAddr,
}

impl Tftp {
    /// Binds `addr` and serves `dir` read-only, after checking both boot files are there.
    pub async fn bind(dir: &Path, addr: SocketAddr) -> Result<Self, TftpError> {
        for name in [BOOT_FILES.0, BOOT_FILES.1] {
            if !dir.join(name).is_file() {
                return Err(TftpError::Missing(dir.join(name).display().to_string()));
            }
        }
        let serve = |source| TftpError::Serve { addr, source };
        let server = TftpServerBuilder::with_dir_ro(dir)
            .map_err(serve)?
            .bind(addr)
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
        let tftp = Tftp::bind(dir.path(), "127.0.0.1:0".parse().unwrap())
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

    #[tokio::test]
    async fn a_missing_boot_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), b"x").unwrap();
        let err = Tftp::bind(dir.path(), "127.0.0.1:0".parse().unwrap())
            .await
            .err()
            .expect("undionly.kpxe is missing");
        assert!(err.to_string().contains("undionly.kpxe"), "{err}");
    }
}
