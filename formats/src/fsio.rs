//! Crash-safe writes of state and configuration files: after a power cut a reader finds
//! the old file or the new one, never a mix, an empty file or a temporary left behind.
//!
//! The bytes go to a temporary file in the same directory (a rename is atomic only within
//! one filesystem), which is synced, renamed over the target, and then the directory is
//! synced so the rename itself survives the crash.

use std::fs::{File, Permissions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The mode of [`atomic_write`]: what a plain file gets under the usual umask.
const DEFAULT_MODE: u32 = 0o644;

/// Replaces `path` with `bytes`, mode 0644, creating the parent directory when missing.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_mode(path, bytes, DEFAULT_MODE)
}

/// Replaces `path` with `bytes` at exactly `mode`, whatever mode an earlier file had and
/// whatever the umask: a secret written with 0600 is never readable by others, not even
/// for a moment.
pub fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write(path, bytes, mode, Replace::Yes)
}

/// Like [`atomic_write_mode`], but fails with [`std::io::ErrorKind::AlreadyExists`] when
/// `path` exists (keys, a CA: never overwritten by accident).
pub fn atomic_create(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write(path, bytes, mode, Replace::No)
}

#[derive(PartialEq)]
enum Replace {
    Yes,
    No,
}

fn write(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // Dropped (and so deleted) on any error below, before it is renamed.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Set on the open file: the umask does not apply, and no other mode is ever visible.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    match replace {
        Replace::Yes => tmp.persist(path).map_err(|e| e.error)?,
        Replace::No => tmp.persist_noclobber(path).map_err(|e| e.error)?,
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_replace_the_content_and_set_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        atomic_write(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o644);
        // A secret gets 0600 even over a world-readable file.
        std::fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        atomic_write_mode(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(entries(&dir.path().join("sub")), ["state.json"]);
    }

    #[test]
    fn create_refuses_an_existing_file_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        atomic_create(&path, b"key", 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        let err = atomic_create(&path, b"other", 0o600).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"key");
        assert_eq!(entries(dir.path()), ["key.pem"]);
    }

    #[test]
    fn the_temporary_file_is_removed_when_the_rename_fails() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory cannot be replaced by a file.
        let path = dir.path().join("taken");
        std::fs::create_dir_all(path.join("inside")).unwrap();
        assert!(atomic_write(&path, b"x").is_err());
        assert_eq!(entries(dir.path()), ["taken"]);
        assert!(path.is_dir());
    }
}
