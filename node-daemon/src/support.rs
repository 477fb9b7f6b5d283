//! Support bundles (issue 17): one `tar.gz` of what a person debugging the appliance asks
//! for first, built on the node when the hub asks through the tunnel. The node's own files
//! go in with their secrets redacted; nothing is read from the token or key files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::status::LocalStatus;

/// What a bundle reads.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The root the configuration lives under (`/` on an appliance).
    pub root: PathBuf,
    /// The status the local API serves.
    pub status: Arc<RwLock<LocalStatus>>,
    /// The upgrade record (`<upgrade.data_dir>/state.json`).
    pub upgrade_record: PathBuf,
}

/// Longest one command of the bundle may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes one command contributes (the journal of a long boot can be large).
const COMMAND_LIMIT: usize = 64 * 1024 * 1024;
/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Whether a configuration key names a secret (or where one is kept): its value is left out.
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "token",
        "key",
        "password",
        "passwd",
        "secret",
        "psk",
        "passphrase",
        "credential",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// The YAML with the value of every secret key (at any depth) replaced by [`REDACTED`].
/// Text that does not parse is left out whole: it cannot be redacted safely.
pub fn redact_yaml(text: &str) -> String {
    fn walk(value: &mut serde_yaml_ng::Value) {
        match value {
            serde_yaml_ng::Value::Mapping(map) => {
                for (k, v) in map.iter_mut() {
                    if k.as_str().is_some_and(secret_key) {
                        *v = serde_yaml_ng::Value::String(REDACTED.into());
                    } else {
                        walk(v);
                    }
                }
            }
            serde_yaml_ng::Value::Sequence(items) => items.iter_mut().for_each(walk),
            serde_yaml_ng::Value::Tagged(tagged) => walk(&mut tagged.value),
            _ => {}
        }
    }
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        Ok(mut value) => {
            walk(&mut value);
            serde_yaml_ng::to_string(&value)
                .unwrap_or_else(|e| format!("# left out: cannot print it redacted: {e}\n"))
        }
        Err(e) => format!("# left out: not YAML, so it cannot be redacted: {e}\n"),
    }
}

/// Runs argv (no shell) and returns its standard output, then its standard error, cut at
/// [`COMMAND_LIMIT`]; a failure to run is the text of the file instead.
async fn capture(argv: &[&str]) -> Vec<u8> {
    let run = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let mut out = match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok(Ok(out)) => {
            let mut bytes = out.stdout;
            bytes.extend(out.stderr);
            bytes
        }
        Ok(Err(e)) => format!("cannot run {}: {e}\n", argv[0]).into_bytes(),
        Err(_) => format!("{} killed after {COMMAND_TIMEOUT:?}\n", argv[0]).into_bytes(),
    };
    out.truncate(COMMAND_LIMIT);
    out
}

/// The bundle's files, by name.
async fn files(sources: &Sources, journal_dir: Option<&Path>) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut journal = vec!["journalctl", "--no-pager", "-o", "short-iso", "--boot"];
    let directory = journal_dir.map(|d| format!("--directory={}", d.display()));
    if let Some(d) = &directory {
        journal.push(d);
    }
    files.push(("journal.txt".to_owned(), capture(&journal).await));
    let status = sources
        .status
        .read()
        .map(|s| serde_json::to_vec_pretty(&*s).unwrap_or_default())
        .unwrap_or_default();
    files.push(("status.json".to_owned(), status));
    for (name, argv) in [
        ("ip-addr.json", ["ip", "-j", "addr"]),
        ("ip-route.json", ["ip", "-j", "route"]),
        ("ip-link.json", ["ip", "-j", "link"]),
    ] {
        files.push((name.to_owned(), capture(&argv).await));
    }
    files.push(("dmesg.txt".to_owned(), capture(&["dmesg"]).await));
    let versions = format!(
        "cairn-node {}\nos {}\nkernel {}",
        env!("CARGO_PKG_VERSION"),
        crate::daemon::os_version(&sources.root),
        String::from_utf8_lossy(&capture(&["uname", "-a"]).await),
    );
    files.push(("versions.txt".to_owned(), versions.into_bytes()));
    let record = std::fs::read(&sources.upgrade_record)
        .unwrap_or_else(|e| format!("no upgrade record: {e}\n").into_bytes());
    files.push(("upgrade-state.json".to_owned(), record));
    for path in config_files(&sources.root) {
        let text = std::fs::read_to_string(&path)
            .map(|t| redact_yaml(&t))
            .unwrap_or_else(|e| format!("# cannot read it: {e}\n"));
        let name = path.strip_prefix(&sources.root).unwrap_or(&path);
        files.push((format!("config/{}", name.display()), text.into_bytes()));
    }
    files
}

/// `/etc/cairn/node.yaml` and its drop-ins, under `root`.
fn config_files(root: &Path) -> Vec<PathBuf> {
    let mut paths = vec![root.join(crate::config::MAIN_FILE)];
    if let Ok(dir) = std::fs::read_dir(root.join("etc/cairn/node.d")) {
        let mut drop_ins: Vec<_> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        drop_ins.sort();
        paths.extend(drop_ins);
    }
    paths
}

/// The bundle, gzipped tar, every file under `support-bundle/`; the journal read from
/// `journal_dir` when given (`journalctl --directory`).
pub async fn build(sources: &Sources, journal_dir: Option<&Path>) -> std::io::Result<Vec<u8>> {
    let files = files(sources, journal_dir).await;
    tokio::task::spawn_blocking(move || {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(now);
            tar.append_data(
                &mut header,
                format!("support-bundle/{name}"),
                bytes.as_slice(),
            )?;
        }
        tar.into_inner()?.finish()
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_unparseable_text_is_left_out() {
        let text = "hub:\n  url: https://hub\n  token_file: /etc/cairn/token\nnetwork:\n  wifis:\n    wlan0:\n      access-points:\n        home:\n          password: hunter2\n  list: [{private_key: abc}]\n";
        let out = redact_yaml(text);
        for secret in ["hunter2", "abc", "/etc/cairn/token"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.contains("https://hub"), "{out}");
        assert!(out.contains("password: <redacted>"), "{out}");
        let broken = redact_yaml("password: [unclosed\n");
        assert!(!broken.contains("unclosed"), "{broken}");
    }
}
