//! The per-server seeded installer ISOs of virtual media, in `ARTIFACTS/media/`, which the
//! boot server serves at `/media/` (see `boot_server`). Each ISO is the build's installer
//! ISO with the install plan a PXE install would get from the boot server (hostname, disk
//! hint, wipe, node.yaml, netplan, hub CA) plus the server's own enrollment token, built by
//! `cairn_image_build::media::seeded_iso`.
//!
//! Layout: `media/<128-bit random hex>/<server id>.iso`, directory 0700 and file 0600. The
//! random segment makes the URL unguessable (the boot server lists no directory), the
//! server id (a hash of the inventory name, which may hold any character) lets a later
//! attempt or run find and delete the server's earlier ISO.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::agent::plan::InstallPlan;
use crate::rack::machine::{MediaStore, PeerError};

/// Builds the seeded ISOs into `ARTIFACTS/media/` and names their boot server URLs.
#[derive(Debug)]
pub struct IsoStore {
    artifacts: PathBuf,
    /// `BOOT_SERVER/media/`.
    base: url::Url,
    /// The plan of every virtual-media server, without its token.
    plans: BTreeMap<String, InstallPlan>,
}

impl IsoStore {
    /// A store for the build in `artifacts`, served by the boot server at `boot_server`.
    pub fn new(
        artifacts: &Path,
        boot_server: &url::Url,
        plans: BTreeMap<String, InstallPlan>,
    ) -> Result<Self, PeerError> {
        let base = boot_server
            .join("media/")
            .map_err(|e| PeerError(format!("--boot-server {boot_server}: {e}")))?;
        Ok(Self {
            artifacts: artifacts.to_owned(),
            base,
            plans,
        })
    }

    fn dir(&self) -> PathBuf {
        self.artifacts.join("media")
    }
}

/// The file name of server `name`'s ISO.
fn iso_name(name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    format!("{}.iso", hex::encode(&digest.as_ref()[..8]))
}

fn random_segment() -> Result<String, PeerError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| PeerError("no randomness for the ISO's URL".into()))?;
    Ok(hex::encode(bytes))
}

fn io(what: &str, path: &Path, e: std::io::Error) -> PeerError {
    PeerError(format!("{what} {}: {e}", path.display()))
}

/// Deletes every `dir/*/file`'s directory.
fn remove_all(dir: &Path, file: &str) -> Result<(), PeerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading", dir, e)),
    };
    for entry in entries.flatten() {
        let sub = entry.path();
        if sub.join(file).exists() {
            std::fs::remove_dir_all(&sub).map_err(|e| io("deleting", &sub, e))?;
        }
    }
    Ok(())
}

#[async_trait]
impl MediaStore for IsoStore {
    async fn publish(&self, name: &str, token: &str) -> Result<String, PeerError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut plan = self
            .plans
            .get(name)
            .cloned()
            .ok_or_else(|| PeerError(format!("{name}: no install plan for virtual media")))?;
        plan.enrollment_token = Some(token.to_owned());
        let yaml = serde_yaml_ng::to_string(&plan)
            .map_err(|e| PeerError(format!("writing the install plan: {e}")))?;
        let segment = random_segment()?;
        let file = iso_name(name);
        let url = self
            .base
            .join(&format!("{segment}/{file}"))
            .map_err(|e| PeerError(e.to_string()))?;
        let (root, artifacts) = (self.dir(), self.artifacts.clone());
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| io("creating", &root, e))?;
            let dir = root.join(&segment);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| io("creating", &dir, e))?;
            let iso = dir.join(&file);
            let built = cairn_image_build::media::seeded_iso(&artifacts, yaml.as_bytes(), &iso)
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt as _;
                    std::fs::set_permissions(&iso, std::fs::Permissions::from_mode(0o600)).map_err(
                        |source| cairn_image_build::build::BuildError::Io {
                            what: "chmod",
                            path: iso.clone(),
                            source,
                        },
                    )
                });
            if let Err(e) = built {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(PeerError(cairn_api::error_chain(&e)));
            }
            tracing::info!(server = %name, "built the seeded installer ISO");
            Ok(())
        })
        .await
        .map_err(|e| PeerError(format!("building the ISO: {e}")))??;
        Ok(url.to_string())
    }

    async fn remove(&self, name: &str) -> Result<(), PeerError> {
        let (root, file) = (self.dir(), iso_name(name));
        tokio::task::spawn_blocking(move || remove_all(&root, &file))
            .await
            .map_err(|e| PeerError(format!("deleting the ISO: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build output with the pieces a seeded ISO is made of (tiny stand-ins, and an
    /// installer ISO holding the grub.cfg).
    fn artifacts() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let pxe = dir.path().join("pxe");
        std::fs::create_dir_all(&pxe).unwrap();
        for f in [
            "vmlinuz",
            "initrd.img",
            "install.json",
            "root.img.zst",
            "esp.img.zst",
            "mbr.bin",
            "core.img",
        ] {
            std::fs::write(pxe.join(f), f).unwrap();
        }
        let tree = dir.path().join("iso-tree/boot/grub");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("grub.cfg"), "menuentry cairn {}\n").unwrap();
        let made = std::process::Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(dir.path().join("installer.iso"))
            .arg(dir.path().join("iso-tree"))
            .status()
            .unwrap();
        assert!(made.success());
        dir
    }

    fn extract(iso: &Path, file: &str, to: &Path) -> String {
        let out = std::process::Command::new("osirrox")
            .arg("-indev")
            .arg(iso)
            .args(["-extract", file])
            .arg(to)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(to).unwrap()
    }

    /// The real store with the real ISO tools: the ISO is the server's, holds its plan and
    /// token, sits 0600 under a 0700 random directory that the URL names, and is gone after
    /// `remove`, as is an earlier one.
    #[tokio::test]
    async fn a_published_iso_carries_the_plan_and_token_under_a_random_path_until_removed() {
        use std::os::unix::fs::PermissionsExt as _;
        let art = artifacts();
        let plan = InstallPlan {
            name: "srv/1".into(),
            disk_hint: Some("/dev/vda".into()),
            wipe: true,
            ..Default::default()
        };
        let boot = url::Url::parse("http://10.77.0.1:8080").unwrap();
        let store = IsoStore::new(art.path(), &boot, [("srv/1".to_owned(), plan)].into()).unwrap();
        let first = store.publish("srv/1", "cairn-et.a.SECRET1").await.unwrap();
        let url = store.publish("srv/1", "cairn-et.b.SECRET2").await.unwrap();
        assert_ne!(first, url);
        let rel = url.strip_prefix("http://10.77.0.1:8080/media/").unwrap();
        let (segment, file) = rel.split_once('/').unwrap();
        assert!(
            segment.len() == 32 && segment.chars().all(|c| c.is_ascii_hexdigit()),
            "{url}"
        );
        let iso = art.path().join("media").join(segment).join(file);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&iso), mode(iso.parent().unwrap())), (0o600, 0o700));
        let seed = extract(
            &iso,
            "/cairn/seed/install.yaml",
            &art.path().join("seed.yaml"),
        );
        let read: InstallPlan = serde_yaml_ng::from_str(&seed).unwrap();
        assert_eq!(read.name, "srv/1");
        assert_eq!(read.disk_hint.as_deref(), Some("/dev/vda"));
        assert_eq!(read.enrollment_token.as_deref(), Some("cairn-et.b.SECRET2"));
        let cfg = extract(&iso, "/boot/grub/grub.cfg", &art.path().join("grub.cfg"));
        assert_eq!(cfg, "menuentry cairn {}\n");
        // Unknown servers get nothing.
        assert!(store.publish("other", "t").await.is_err());
        store.remove("srv/1").await.unwrap();
        let left: Vec<_> = std::fs::read_dir(art.path().join("media"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "both ISOs are gone: {left:?}");
    }
}
