//! DNS and NTP servers of the fleet configuration (docs/node-daemon.md "Fleet
//! configuration"), written where the resolver and the time daemon read drop-ins:
//! a systemd-resolved drop-in (`DNS=`) and a chrony sources file (`server ... iburst`), both
//! under the node's root so tests use a tempdir. A setting removed on the hub removes its
//! file. Files are rewritten only when their content changes; the caller then has the
//! daemons re-read them.

use std::path::{Path, PathBuf};

use cairn_api::node_config::FleetConfig;

/// Where the two files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFiles {
    /// systemd-resolved drop-in.
    pub resolved: PathBuf,
    /// chrony sources file (`sourcedir /etc/chrony/sources.d` in chrony.conf reads it).
    pub chrony: PathBuf,
}

impl HostFiles {
    /// The standard paths under `root` (`/` on an appliance).
    pub fn under(root: &Path) -> Self {
        Self {
            resolved: root.join("etc/systemd/resolved.conf.d/50-cairn.conf"),
            chrony: root.join("etc/chrony/sources.d/cairn.sources"),
        }
    }
}

/// Which files a write changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// The resolved drop-in.
    pub dns: bool,
    /// The chrony sources.
    pub ntp: bool,
}

/// The resolved drop-in for `servers`.
fn resolved_text(servers: &[String]) -> String {
    format!(
        "# Written by cairn-node from the hub's configuration (settings.dns).\n[Resolve]\nDNS={}\n",
        servers.join(" ")
    )
}

/// The chrony sources for `servers`.
fn chrony_text(servers: &[String]) -> String {
    let mut text =
        "# Written by cairn-node from the hub's configuration (settings.ntp).\n".to_owned();
    for s in servers {
        text.push_str(&format!("server {s} iburst\n"));
    }
    text
}

/// Writes (or, for an unset setting, removes) the files `settings` call for.
pub fn write(files: &HostFiles, settings: &FleetConfig) -> std::io::Result<Changed> {
    Ok(Changed {
        dns: put(&files.resolved, settings.dns.as_deref().map(resolved_text))?,
        ntp: put(&files.chrony, settings.ntp.as_deref().map(chrony_text))?,
    })
}

/// Makes `path` hold `text`, or not exist for `None`; whether that changed anything.
fn put(path: &Path, text: Option<String>) -> std::io::Result<bool> {
    let current = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if current == text {
        return Ok(false);
    }
    match text {
        Some(text) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Renamed into place: the daemon never reads half a file.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)?;
        }
        None => std::fs::remove_file(path)?,
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_follow_the_settings_and_change_only_when_they_differ() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostFiles::under(dir.path());
        let settings = FleetConfig {
            dns: Some(vec!["192.0.2.53".into(), "2001:db8::53".into()]),
            ntp: Some(vec!["ntp.example".into(), "192.0.2.123".into()]),
            ..Default::default()
        };
        let steps: [(&FleetConfig, Changed); 3] = [
            (
                &settings,
                Changed {
                    dns: true,
                    ntp: true,
                },
            ),
            (&settings, Changed::default()),
            (
                &FleetConfig::default(),
                Changed {
                    dns: true,
                    ntp: true,
                },
            ),
        ];
        for (i, (s, want)) in steps.into_iter().enumerate() {
            assert_eq!(write(&files, s).unwrap(), want, "step {i}");
            if i == 0 {
                let resolved = std::fs::read_to_string(&files.resolved).unwrap();
                assert!(resolved.ends_with("[Resolve]\nDNS=192.0.2.53 2001:db8::53\n"));
                let chrony = std::fs::read_to_string(&files.chrony).unwrap();
                assert!(chrony.ends_with("server ntp.example iburst\nserver 192.0.2.123 iburst\n"));
            }
        }
        assert!(
            !files.resolved.exists() && !files.chrony.exists(),
            "unset: removed"
        );
    }
}
