//! kubelet bootstrap: the files a kubelet reads, rendered from the hub's join bundle, and the
//! decision of what to do with `kubelet.service` (pure; systemd is reached through
//! [`crate::systemd::UnitManager`]).
//!
//! Files are rewritten only when their content changes, and the unit is restarted only when a
//! file it reads changed, so re-applying the same desired state does nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_api::JoinBundle;
use cairn_formats::fsio::atomic_write_mode;
use tera::{Context, Tera};

/// Name of the drop-in inside `kubelet.service.d/`.
pub const DROPIN_NAME: &str = "10-cairn.conf";

/// Rendering or writing failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A template did not render (a bug in a shipped template).
    #[error("rendering {template}")]
    Render {
        /// Template name.
        template: &'static str,
        /// tera's error.
        #[source]
        source: tera::Error,
    },
    /// Writing a file failed.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where kubelet files go. Paths inside files are as the kubelet sees them (`/var/lib/...`);
/// `root` is where they are written (`/`, or a test directory).
#[derive(Debug, Clone)]
pub struct Layout {
    /// Directory written to (rooted).
    pub dir: PathBuf,
    /// The same directory as the kubelet sees it.
    pub dir_in_host: PathBuf,
    /// Unit drop-in directory (rooted).
    pub dropin_dir: PathBuf,
    /// `ExecStart=`.
    pub exec_start: String,
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Where it goes.
    pub path: PathBuf,
    /// Content.
    pub content: String,
    /// Permission bits.
    pub mode: u32,
    /// Whether systemd must re-read units after it changes.
    pub unit_file: bool,
}

/// YAML scalars are written as JSON strings, which YAML reads back verbatim: no value from the
/// hub can break out of its field.
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn templates() -> Tera {
    let mut tera = Tera::default();
    tera.autoescape_on(Vec::<&str>::new());
    for (name, text) in [
        (
            "bootstrap-kubeconfig",
            include_str!("../templates/kubelet/bootstrap-kubeconfig"),
        ),
        (
            "config.yaml",
            include_str!("../templates/kubelet/config.yaml"),
        ),
        (
            "dropin.conf",
            include_str!("../templates/kubelet/dropin.conf"),
        ),
    ] {
        // The templates are compiled in; a parse failure is caught by the tests below.
        if let Err(e) = tera.add_raw_template(name, text) {
            tracing::error!(template = name, error = %e, "shipped template does not parse");
        }
    }
    tera
}

/// Renders every file for a join bundle.
pub fn render(
    bundle: &JoinBundle,
    layout: &Layout,
    appliance_id: &str,
) -> Result<Vec<RenderedFile>, KubeletError> {
    let tera = templates();
    let ca_in_host = layout.dir_in_host.join("pki/cluster-ca.crt");
    let kubeconfig_in_host = layout.dir_in_host.join("bootstrap-kubeconfig");
    let mut ctx = Context::new();
    ctx.insert("control_plane", &quoted(&bundle.control_plane));
    ctx.insert("api_server_url", &quoted(&bundle.api_server_url));
    ctx.insert("bootstrap_token", &quoted(&bundle.bootstrap_token));
    ctx.insert("ca_file", &quoted(&ca_in_host.to_string_lossy()));
    ctx.insert("revision", &bundle.revision);
    ctx.insert("provider_id", &quoted(&format!("cairn://{appliance_id}")));
    ctx.insert(
        "bootstrap_kubeconfig",
        &kubeconfig_in_host.to_string_lossy(),
    );
    ctx.insert("exec_start", &layout.exec_start);
    let render = |template: &'static str| {
        tera.render(template, &ctx)
            .map_err(|source| KubeletError::Render { template, source })
    };
    Ok(vec![
        RenderedFile {
            path: layout.dir.join("pki/cluster-ca.crt"),
            content: bundle.ca_bundle_pem.clone(),
            mode: 0o644,
            unit_file: false,
        },
        RenderedFile {
            path: layout.dir.join("bootstrap-kubeconfig"),
            content: render("bootstrap-kubeconfig")?,
            mode: 0o600,
            unit_file: false,
        },
        RenderedFile {
            path: layout.dir.join("config.yaml"),
            content: render("config.yaml")?,
            mode: 0o644,
            unit_file: false,
        },
        RenderedFile {
            path: layout.dropin_dir.join(DROPIN_NAME),
            content: render("dropin.conf")?,
            mode: 0o644,
            unit_file: true,
        },
    ])
}

/// What writing the files changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Some file changed.
    pub any: bool,
    /// A unit file changed (daemon-reload needed).
    pub unit_files: bool,
}

/// Writes files whose content or mode differs; leaves the others untouched (same mtime).
/// Each write goes to a temporary file first and is renamed into place, so the kubelet never
/// reads half a file and a secret never sits in a file with looser permissions.
pub fn write_changed(files: &[RenderedFile]) -> Result<Written, KubeletError> {
    let mut written = Written::default();
    for file in files {
        let same = std::fs::read(&file.path).is_ok_and(|c| c == file.content.as_bytes())
            && std::fs::metadata(&file.path)
                .is_ok_and(|m| m.permissions().mode() & 0o7777 == file.mode);
        if same {
            continue;
        }
        atomic_write_mode(&file.path, file.content.as_bytes(), file.mode).map_err(|source| {
            KubeletError::Write {
                path: file.path.clone(),
                source,
            }
        })?;
        written.any = true;
        written.unit_files |= file.unit_file;
    }
    Ok(written)
}

/// The unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active: String,
    /// `running`, `dead`, `failed`, ...
    pub sub: String,
}

/// What to do with the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Start it.
    Start,
    /// Restart it (its files changed while it ran).
    Restart,
}

/// Supervises the unit: starts it, restarts it when its files change, and restarts it with
/// exponential backoff when it fails. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct Supervisor {
    failures: u32,
    not_before: Option<Instant>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// First restart delay after a failure.
    pub const BASE: Duration = Duration::from_secs(5);
    /// Longest delay between restarts.
    pub const CAP: Duration = Duration::from_secs(300);

    /// A supervisor that has seen no failure.
    pub fn new() -> Self {
        Self {
            failures: 0,
            not_before: None,
        }
    }

    /// Restarts made after failures since the unit was last seen running.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Decides given the unit's state and whether its files just changed.
    pub fn decide(&mut self, state: &UnitState, files_changed: bool, now: Instant) -> Action {
        match state.active.as_str() {
            "active" | "reloading" => {
                if state.sub == "running" {
                    self.failures = 0;
                    self.not_before = None;
                }
                if files_changed {
                    Action::Restart
                } else {
                    Action::None
                }
            }
            "activating" | "deactivating" => Action::None,
            "failed" => {
                if files_changed {
                    // New configuration: worth trying at once.
                    self.not_before = None;
                }
                match self.not_before {
                    Some(t) if now < t => Action::None,
                    _ => {
                        let delay = Self::BASE
                            .saturating_mul(1 << self.failures.min(10))
                            .min(Self::CAP);
                        self.failures += 1;
                        self.not_before = Some(now + delay);
                        Action::Restart
                    }
                }
            }
            // inactive, or not loaded yet
            _ => Action::Start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn bundle() -> JoinBundle {
        JoinBundle {
            control_plane: "edge-east".into(),
            api_server_url: "https://cp.example.test:6443".into(),
            ca_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            bootstrap_token: "abcdef.0123456789abcdef".into(),
            revision: 3,
        }
    }

    fn layout(root: &Path) -> Layout {
        Layout {
            dir: root.join("var/lib/kubelet"),
            dir_in_host: "/var/lib/kubelet".into(),
            dropin_dir: root.join("etc/systemd/system/kubelet.service.d"),
            exec_start: "/usr/bin/kubelet --config=/var/lib/kubelet/config.yaml".into(),
        }
    }

    #[test]
    fn rendered_files_are_what_a_kubelet_reads() {
        let dir = tempfile::tempdir().unwrap();
        let files = render(&bundle(), &layout(dir.path()), "a-1").unwrap();
        let kubeconfig: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files[1].content).unwrap();
        assert_eq!(
            kubeconfig["clusters"][0]["cluster"]["server"],
            "https://cp.example.test:6443"
        );
        assert_eq!(
            kubeconfig["clusters"][0]["cluster"]["certificate-authority"],
            "/var/lib/kubelet/pki/cluster-ca.crt"
        );
        assert_eq!(
            kubeconfig["users"][0]["user"]["token"],
            "abcdef.0123456789abcdef"
        );
        assert_eq!(files[1].mode, 0o600);
        let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files[2].content).unwrap();
        assert_eq!(config["kind"], "KubeletConfiguration");
        assert_eq!(config["apiVersion"], "kubelet.config.k8s.io/v1beta1");
        assert_eq!(config["providerID"], "cairn://a-1");
        assert!(files[3].content.contains(
            "ExecStart=\nExecStart=/usr/bin/kubelet --config=/var/lib/kubelet/config.yaml\n"
        ));
    }

    #[test]
    fn hostile_bundle_values_stay_inside_their_yaml_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = bundle();
        b.bootstrap_token = "x\nkind: Evil".into();
        let files = render(&b, &layout(dir.path()), "a-1").unwrap();
        let kubeconfig: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files[1].content).unwrap();
        assert_eq!(kubeconfig["kind"], "Config");
        assert_eq!(kubeconfig["users"][0]["user"]["token"], "x\nkind: Evil");
    }

    #[test]
    fn unchanged_files_are_not_rewritten_and_secrets_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let files = render(&bundle(), &layout(dir.path()), "a-1").unwrap();
        let first = write_changed(&files).unwrap();
        assert_eq!(
            first,
            Written {
                any: true,
                unit_files: true
            }
        );
        let kubeconfig = dir.path().join("var/lib/kubelet/bootstrap-kubeconfig");
        let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mtime = std::fs::metadata(&kubeconfig).unwrap().modified().unwrap();
        assert_eq!(write_changed(&files).unwrap(), Written::default());
        assert_eq!(
            std::fs::metadata(&kubeconfig).unwrap().modified().unwrap(),
            mtime
        );
        let mut b = bundle();
        b.revision = 4;
        b.bootstrap_token = "new.token".into();
        let again = write_changed(&render(&b, &layout(dir.path()), "a-1").unwrap()).unwrap();
        assert_eq!(
            again,
            Written {
                any: true,
                unit_files: false
            }
        );
    }

    fn state(active: &str, sub: &str) -> UnitState {
        UnitState {
            active: active.into(),
            sub: sub.into(),
        }
    }

    #[test]
    fn supervisor_starts_restarts_on_change_and_backs_off_on_failure() {
        let mut s = Supervisor::new();
        let t0 = Instant::now();
        assert_eq!(
            s.decide(&state("inactive", "dead"), true, t0),
            Action::Start
        );
        assert_eq!(
            s.decide(&state("active", "running"), false, t0),
            Action::None
        );
        assert_eq!(
            s.decide(&state("active", "running"), true, t0),
            Action::Restart
        );
        // Failure: restart at once, then wait 5 s, then 10 s.
        assert_eq!(
            s.decide(&state("failed", "failed"), false, t0),
            Action::Restart
        );
        assert_eq!(
            s.decide(
                &state("failed", "failed"),
                false,
                t0 + Duration::from_secs(4)
            ),
            Action::None
        );
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            s.decide(&state("failed", "failed"), false, t1),
            Action::Restart
        );
        assert_eq!(
            s.decide(
                &state("failed", "failed"),
                false,
                t1 + Duration::from_secs(9)
            ),
            Action::None
        );
        assert_eq!(s.failures(), 2);
        // Running again resets the backoff.
        s.decide(&state("active", "running"), false, t1);
        assert_eq!(s.failures(), 0);
    }

    #[test]
    fn backoff_is_capped_at_five_minutes() {
        let mut s = Supervisor::new();
        let mut t = Instant::now();
        for _ in 0..20 {
            s.decide(&state("failed", "failed"), false, t);
            t += Duration::from_secs(301);
        }
        assert_eq!(
            s.decide(&state("failed", "failed"), false, t),
            Action::Restart
        );
    }
}
