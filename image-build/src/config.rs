//! `image.yaml`: what `cairn image build` makes. Unknown keys are refused, and errors name
//! the key and line.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The build configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Which root filesystem to build.
    pub profile: Profile,
    /// OS version this image carries (goes into the bundle and `/etc/cairn-release`).
    pub version: String,
    /// Versions that may upgrade to this one with the bundle; empty means any.
    #[serde(default)]
    pub compatible_from: Vec<String>,
    /// The kernel to boot. Default: the newest `/boot/vmlinuz-*` of the build machine
    /// (`minimal`), or the one the Debian root installs (`debian`).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Where cairn's binaries are taken from. Default: the directory of the running `cairn`.
    #[serde(default)]
    pub binaries: Option<PathBuf>,
    /// Disk geometry.
    #[serde(default)]
    pub disk: DiskConfig,
    /// Kernel command line additions for the installed system and the install environment.
    #[serde(default = "default_console")]
    pub kernel_args: String,
    /// A seed directory (node.yaml, netplan) put on the install ISO, so an ISO install needs
    /// no boot server.
    #[serde(default)]
    pub iso_seed: Option<PathBuf>,
    /// Settings of the `debian` profile.
    #[serde(default)]
    pub debian: DebianConfig,
    /// Release public keys (PEM, from `cairn image keygen`) the image's cairn-node trusts
    /// for update bundles (`minimal` profile; its upgrade settings name them), and the
    /// install environment trusts for install.json: a build that lists any must be signed
    /// by one of them.
    #[serde(default)]
    pub release_keys: Vec<PathBuf>,
    /// A cairn-node configuration drop-in baked into the image (`minimal` profile), e.g. the
    /// operator's upgrade health checks and deadline; the node merges it after the seed.
    #[serde(default)]
    pub node_config: Option<PathBuf>,
}

/// The root filesystem profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// busybox and cairn's binaries; seconds to build, no mirror.
    Minimal,
    /// Debian 12 with systemd and cairn-node, from the configured mirror.
    Debian,
}

/// Sizes of the disk image and its partitions, in MiB.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Size of `disk.raw`.
    #[serde(default = "default_disk")]
    pub size_mib: u64,
    /// EFI system partition (GRUB, its config and environment).
    #[serde(default = "default_esp")]
    pub esp_mib: u64,
    /// Each root slot; the root image must fit.
    #[serde(default = "default_slot")]
    pub slot_mib: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            size_mib: default_disk(),
            esp_mib: default_esp(),
            slot_mib: default_slot(),
        }
    }
}

/// Settings of the `debian` profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianConfig {
    /// Debian suite.
    #[serde(default = "default_suite")]
    pub suite: String,
    /// Packages on top of the base set (linux-image-amd64, systemd, dbus, iproute2).
    #[serde(default)]
    pub extra_packages: Vec<String>,
}

impl Default for DebianConfig {
    fn default() -> Self {
        Self {
            suite: default_suite(),
            extra_packages: Vec::new(),
        }
    }
}

fn default_console() -> String {
    "console=ttyS0,115200 console=tty0".into()
}
fn default_disk() -> u64 {
    512
}
fn default_esp() -> u64 {
    32
}
fn default_slot() -> u64 {
    128
}
fn default_suite() -> String {
    "bookworm".into()
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is invalid (the message names the key and line).
    #[error("{path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's error with its location.
        source: serde_yaml_ng::Error,
    },
    /// A value is out of range.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A version is letters, digits and `. - + _` (it names files and URL paths).
pub fn check_version(version: &str) -> Result<(), String> {
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+_".contains(c))
    {
        return Err(format!(
            "{version:?} is not a version (letters, digits, . - + _)"
        ));
    }
    Ok(())
}

impl ImageConfig {
    /// Reads and validates a config file. Relative paths in it are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self =
            serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.kernel,
            &mut config.binaries,
            &mut config.iso_seed,
            &mut config.node_config,
        ]
        .into_iter()
        .flatten()
        .chain(config.release_keys.iter_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        check_version(&config.version).map_err(|m| invalid("version", m))?;
        let d = &config.disk;
        let needed = 2 + d.esp_mib + 2 * d.slot_mib + (cairn_formats::gpt::MIN_DATA >> 20);
        if d.size_mib < needed {
            return Err(invalid(
                "disk.size_mib",
                format!(
                    "{} MiB is too small: the partitions need {needed} MiB",
                    d.size_mib
                ),
            ));
        }
        if d.esp_mib < 16 {
            return Err(invalid(
                "disk.esp_mib",
                "the ESP needs at least 16 MiB".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ImageConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.yaml");
        std::fs::write(&path, text).unwrap();
        ImageConfig::load(&path)
    }

    #[test]
    fn the_examples_load() {
        for example in ["minimal", "debian"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(format!("{example}.yaml"));
            ImageConfig::load(&path).unwrap_or_else(|e| panic!("{example}: {e}"));
        }
    }

    #[test]
    fn mistakes_name_the_key_and_line() {
        let err = load("profile: minimal\nversion: '1'\ndisk:\n  size_mb: 10\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("size_mb") && text.contains("line 4"),
            "{text}"
        );
        let err = load("profile: minimal\nversion: '1'\ndisk:\n  size_mib: 100\n").unwrap_err();
        assert!(err.to_string().contains("disk.size_mib"), "{err}");
        let err = load("profile: gentoo\nversion: '1'\n").unwrap_err();
        assert!(err.to_string().contains("gentoo"), "{err}");
        let err = load("profile: minimal\nversion: 'a b'\n").unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
    }
}
