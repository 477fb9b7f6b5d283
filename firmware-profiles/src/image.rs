//! Firmware images: downloaded once into a local cache named by SHA-256, verified there, and
//! handed to the BMC from that verified copy (pushed to it, or served by cairn), so the
//! digest in the profile covers exactly the bytes the BMC flashes.
//!
//! A file already in the cache is hashed again before each use and replaced when it no
//! longer matches its name. Between that check and the BMC reading the file, the file's
//! size, modification time and inode are compared with what was verified: a file changed in
//! between is refused, never sent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why an image is not available verified.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The cache directory or a file in it failed.
    #[error("{doing} {}", path.display())]
    Io {
        /// What cairn was doing.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The download failed.
    #[error(
        "downloading firmware image {url} (check the profile's image_url and that this machine reaches it)"
    )]
    Download {
        /// The profile's `image_url`, as [`shown`].
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The download is not the image the profile names.
    #[error(
        "SHA-256 of {url} is {got}, the profile wants {wanted}: nothing was sent to the BMC (fix the profile's sha256 or the file at image_url)"
    )]
    Digest {
        /// The profile's `image_url`, as [`shown`].
        url: String,
        /// The profile's `sha256`.
        wanted: String,
        /// What the download hashes to.
        got: String,
    },
    /// The verified file changed before the BMC got it.
    #[error(
        "{} changed after it was verified; it is not sent to the BMC (run the apply again to download and verify it anew)",
        path.display()
    )]
    Changed {
        /// The cached file.
        path: PathBuf,
    },
}

/// 128 random bits as hex: the unguessable part of served URLs and of download file names.
pub(crate) fn random_token() -> String {
    let mut nonce = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .expect("the system's random number generator");
    hex::encode(nonce)
}

/// `url` as it may be shown in logs and errors: without user and password, and without its
/// query (signed download URLs carry their token there).
pub fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let query = u.query().is_some();
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.set_query(None);
            format!("{u}{}", if query { "?…" } else { "" })
        }
        Err(_) => "(an unparsable URL)".into(),
    }
}

/// A cached image whose content hashed to its SHA-256 when it was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    /// The cached file, named by its SHA-256.
    pub path: PathBuf,
    /// Its SHA-256 (lower-case hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether this check downloaded it (false: the cached copy was verified again).
    pub downloaded: bool,
    stamp: Stamp,
}

/// What identifies the file as the one verified: a write or a replacement changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        size: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    }
}

impl VerifiedImage {
    /// Fails when the file is no longer the one verified (written to or replaced).
    pub fn still_verified(&self) -> Result<(), ImageError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if stamp(&meta) == self.stamp => Ok(()),
            _ => Err(ImageError::Changed {
                path: self.path.clone(),
            }),
        }
    }
}

/// The local cache of firmware images, one file per SHA-256.
#[derive(Debug)]
pub struct ImageCache {
    dir: PathBuf,
    http: reqwest::Client,
    /// One download or check per digest at a time: servers of a rack share an image.
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where images are cached unless `--image-cache` says otherwise.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cairn/firmware")
}

async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish()))
}

impl ImageCache {
    /// Opens (creating) the cache directory, readable by this user only.
    pub fn open(dir: &Path) -> Result<ImageCache, ImageError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |doing, source| ImageError::Io {
            doing,
            path: dir.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("creating the image cache", e))?;
        let config = cairn_hardware::tls::client_config(&cairn_hardware::tls::Trust::System, "")
            .map_err(|e| {
                io(
                    "setting up TLS for downloads into",
                    std::io::Error::other(e),
                )
            })?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .connect_timeout(Duration::from_secs(30))
            // Between two chunks of a download, not for all of it: images are large.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| io("setting up downloads into", std::io::Error::other(e)))?;
        Ok(ImageCache {
            dir: dir.to_owned(),
            http,
            busy: Mutex::default(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image with this SHA-256: the cached copy when it still hashes to it, else a
    /// fresh download from `url`, kept only when it matches.
    pub async fn get(&self, url: &str, sha256: &str) -> Result<VerifiedImage, ImageError> {
        let sha256 = sha256.to_ascii_lowercase();
        let lock = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sha256.clone())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let path = self.dir.join(&sha256);
        let io = |doing, path: &Path, source| ImageError::Io {
            doing,
            path: path.to_owned(),
            source,
        };
        // The metadata is taken before hashing: a write during the hash changes it, and
        // `still_verified` then refuses the file.
        if let Ok(meta) = std::fs::metadata(&path) {
            let before = stamp(&meta);
            match sha256_of(&path).await {
                Ok(got) if got == sha256 => {
                    tracing::debug!(path = %path.display(), "cached firmware image verified");
                    return Ok(VerifiedImage {
                        path,
                        sha256,
                        size: before.size,
                        downloaded: false,
                        stamp: before,
                    });
                }
                Ok(got) => tracing::warn!(path = %path.display(), %got,
                    "cached firmware image does not match its SHA-256; downloading it again"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cached firmware image unreadable; downloading it again"),
            }
            std::fs::remove_file(&path).map_err(|e| io("removing the stale image", &path, e))?;
        }
        // Another cairn may be downloading the same image into the same cache.
        let part = self.dir.join(format!(".{sha256}.{}.part", random_token()));
        let result = self.download(url, &sha256, &part).await;
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result?;
        std::fs::rename(&part, &path).map_err(|e| io("storing the verified image as", &path, e))?;
        let meta = std::fs::metadata(&path).map_err(|e| io("reading", &path, e))?;
        tracing::info!(url = %shown(url), path = %path.display(), size = meta.len(), "firmware image downloaded and verified");
        Ok(VerifiedImage {
            path,
            sha256,
            size: meta.len(),
            downloaded: true,
            stamp: stamp(&meta),
        })
    }

    /// Streams `url` into `part`, hashing as it writes; fails unless the digest matches.
    async fn download(&self, url: &str, sha256: &str, part: &Path) -> Result<(), ImageError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |doing, source| ImageError::Io {
            doing,
            path: part.to_owned(),
            source,
        };
        let download = |source: reqwest::Error| ImageError::Download {
            url: shown(url),
            source: source.without_url(),
        };
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(download)?;
        // Read-only from the start: the verified copy is never written through this name.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(part)
            .map_err(|e| io("creating", e))?;
        let mut file = tokio::fs::File::from_std(file);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        while let Some(chunk) = resp.chunk().await.map_err(download)? {
            ctx.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
        }
        file.sync_all().await.map_err(|e| io("syncing", e))?;
        let got = hex::encode(ctx.finish());
        if got != sha256 {
            return Err(ImageError::Digest {
                url: shown(url),
                wanted: sha256.to_owned(),
                got,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            shown("https://user:secret@mirror.example/fw/bios.bin?X-Amz-Signature=abc"),
            "https://mirror.example/fw/bios.bin?…"
        );
        assert_eq!(
            shown("http://10.0.0.5:8080/bios.bin"),
            "http://10.0.0.5:8080/bios.bin"
        );
        assert!(!shown("not a url with secret").contains("secret"));
    }
}
