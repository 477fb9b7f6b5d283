//! Where the first configuration comes from, in order: the file the install agent wrote
//! (`/etc/cairn/node.yaml`), a seed on a filesystem labelled `CAIRN-SEED` (USB stick or ISO),
//! otherwise the first-boot wizard.
//!
//! A seed is a directory holding `node.yaml` and whatever it refers to (token file, hub CA,
//! `netplan/*.yaml`); it is copied into `/etc/cairn/` without overwriting anything there.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_formats::fsio::atomic_write_mode;

use crate::config::MAIN_FILE;

/// The filesystem label a seed medium carries.
pub const SEED_LABEL: &str = "CAIRN-SEED";

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `/etc/cairn/node.yaml` already existed (written by the install agent or the wizard).
    Installed,
    /// Copied from a seed directory.
    Seed(PathBuf),
    /// Nothing configures the box: the wizard must run.
    Nothing,
}

/// Seeding failures.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Copying the seed failed.
    #[error("copying the seed from {from} to {to}")]
    Copy {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Mounting the labelled filesystem failed.
    #[error("mounting the {SEED_LABEL} filesystem {device}: {detail}")]
    Mount {
        /// The device.
        device: PathBuf,
        /// mount's message.
        detail: String,
    },
}

/// Makes sure `/etc/cairn/node.yaml` exists if any seed source provides it.
/// `seed_dirs` are checked first (an already mounted seed, `--seed-dir`); then the
/// `CAIRN-SEED` label under `<root>/dev/disk/by-label/` is mounted read-only and checked.
pub fn ensure_config(root: &Path, seed_dirs: &[PathBuf]) -> Result<Origin, SeedError> {
    if root.join(MAIN_FILE).exists() {
        return Ok(Origin::Installed);
    }
    for dir in seed_dirs {
        if dir.join("node.yaml").is_file() {
            copy_seed(dir, &root.join("etc/cairn"))?;
            return Ok(Origin::Seed(dir.clone()));
        }
    }
    let device = root.join("dev/disk/by-label").join(SEED_LABEL);
    if device.exists() {
        let mount_point = root.join("run/cairn/seed");
        mount_ro(&device, &mount_point)?;
        let copied = if mount_point.join("node.yaml").is_file() {
            copy_seed(&mount_point, &root.join("etc/cairn")).map(|()| true)
        } else {
            tracing::warn!(device = %device.display(), "the {SEED_LABEL} filesystem holds no node.yaml");
            Ok(false)
        };
        let _ = Command::new("umount").arg(&mount_point).status();
        if copied? {
            return Ok(Origin::Seed(device));
        }
    }
    Ok(Origin::Nothing)
}

/// The one place that runs `mount`: seeds are read-only, and nothing on them may run.
fn mount_ro(device: &Path, at: &Path) -> Result<(), SeedError> {
    let err = |detail: String| SeedError::Mount {
        device: device.to_path_buf(),
        detail,
    };
    std::fs::create_dir_all(at).map_err(|e| err(e.to_string()))?;
    let out = Command::new("mount")
        .args(["-o", "ro,nosuid,nodev,noexec"])
        .arg(device)
        .arg(at)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

fn copy_seed(from: &Path, to: &Path) -> Result<(), SeedError> {
    let err = |source| SeedError::Copy {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(to).map_err(err)?;
    for entry in std::fs::read_dir(from).map_err(err)? {
        let entry = entry.map_err(err)?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(err)?;
        if kind.is_dir() {
            copy_seed(&entry.path(), &target)?;
        } else if kind.is_file() && !target.exists() {
            // Seeds carry secrets (the enrollment token): keep copies private from the first
            // byte; and node.yaml present means "configured", so it is never half written.
            let bytes = std::fs::read(entry.path()).map_err(err)?;
            atomic_write_mode(&target, &bytes, 0o600).map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_config_wins_over_a_seed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/cairn")).unwrap();
        std::fs::write(root.path().join(MAIN_FILE), "hostname: a\n").unwrap();
        let seed = tempfile::tempdir().unwrap();
        std::fs::write(seed.path().join("node.yaml"), "hostname: b\n").unwrap();
        let origin = ensure_config(root.path(), &[seed.path().into()]).unwrap();
        assert_eq!(origin, Origin::Installed);
        assert_eq!(
            std::fs::read_to_string(root.path().join(MAIN_FILE)).unwrap(),
            "hostname: a\n"
        );
    }

    #[test]
    fn a_seed_is_copied_with_its_files_and_kept_private() {
        let root = tempfile::tempdir().unwrap();
        let seed = tempfile::tempdir().unwrap();
        std::fs::write(seed.path().join("node.yaml"), "hostname: b\n").unwrap();
        std::fs::write(seed.path().join("token"), "cairn-et.x.y\n").unwrap();
        std::fs::create_dir_all(seed.path().join("netplan")).unwrap();
        std::fs::write(seed.path().join("netplan/10.yaml"), "network: {}\n").unwrap();
        let empty = tempfile::tempdir().unwrap();
        let origin =
            ensure_config(root.path(), &[empty.path().into(), seed.path().into()]).unwrap();
        assert_eq!(origin, Origin::Seed(seed.path().into()));
        let token = root.path().join("etc/cairn/token");
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "cairn-et.x.y\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&token).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(root.path().join("etc/cairn/netplan/10.yaml").is_file());
    }

    #[test]
    fn nothing_anywhere_means_the_wizard() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(ensure_config(root.path(), &[]).unwrap(), Origin::Nothing);
    }
}
