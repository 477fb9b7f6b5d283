//! A small busybox initramfs for guest tests, built without root tricks or loop devices.
//!
//! # API
//! [`Initramfs::new`] starts from Debian's `busybox-static` with every applet linked in
//! `/bin`; then
//! - [`Initramfs::file`] adds a file with given contents and mode,
//! - [`Initramfs::binary`] copies a host executable plus every library `ldd` lists (and the
//!   ELF interpreter) to the same paths,
//! - [`Initramfs::module`] adds a kernel module of the guest kernel with its dependencies,
//!   resolved by `modprobe -S <version> -D` against the host's `/lib/modules/<version>`,
//!   loaded at boot in dependency order with the given parameters,
//! - [`Initramfs::init`] sets the `/init` script (see [`crate::guest`] for a ready-made one),
//! - [`Initramfs::write`] runs `depmod -b` over the tree and writes an uncompressed newc cpio.
//!
//! [`debian_kernel`] finds `/boot/vmlinuz-*` and its version.
//!
//! # Pitfalls handled here (LAB.md)
//! - Copying a binary over a busybox applet symlink would overwrite busybox itself through the
//!   link: the link is removed first. Scripts must still call copied tools by full path,
//!   because busybox's shell prefers its own applets.
//! - `bonding` is loaded with `max_bonds=0` and `dummy` with `numdummies=0` unless the caller
//!   passes parameters, so the kernel creates no `bond0`/`dummy0` of its own.
//! - `/dev/console` is written into the archive as a device node, so `/init` has a console
//!   before devtmpfs is mounted.
//!
//! The cpio writer is ours (about 40 lines) rather than `find | cpio`: it needs no shell,
//! produces a deterministic archive and can add the device node without `mknod`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A host tool failed or is missing.
    #[error("running {tool}: {detail} (install it via scripts/setup: {package})")]
    Tool {
        /// The command.
        tool: String,
        /// What went wrong.
        detail: String,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No Debian kernel under /boot.
    #[error(
        "no /boot/vmlinuz-* with matching /lib/modules (install linux-image-amd64 via scripts/setup)"
    )]
    NoKernel,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> InitramfsError {
    let what = what.into();
    move |source| InitramfsError::Io { what, source }
}

/// The guest kernel: its image and version (`6.1.0-56-amd64`).
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `/boot/vmlinuz-<version>`.
    pub image: PathBuf,
    /// The version, naming `/lib/modules/<version>`.
    pub version: String,
}

/// Finds Debian's kernel (the newest `/boot/vmlinuz-*` whose modules are installed).
pub fn debian_kernel() -> Result<Kernel, InitramfsError> {
    let mut found: Vec<Kernel> = std::fs::read_dir("/boot")
        .map_err(|_| InitramfsError::NoKernel)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&version)
                .is_dir()
                .then(|| Kernel {
                    image: e.path(),
                    version,
                })
        })
        .collect();
    found.sort_by(|a, b| a.version.cmp(&b.version));
    found.pop().ok_or(InitramfsError::NoKernel)
}

/// One entry of the archive tree.
#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File { data: Source, mode: u32 },
    Symlink(String),
}

#[derive(Debug, Clone)]
enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// An initramfs under construction.
#[derive(Debug, Clone)]
pub struct Initramfs {
    kernel_version: String,
    entries: BTreeMap<String, Entry>,
    /// `insmod` lines in load order: path inside the guest, parameters.
    modules: Vec<(String, String)>,
}

impl Initramfs {
    /// Busybox with all applets in `/bin` (and `/sbin` pointing there), for the given kernel.
    pub fn new(kernel: &Kernel) -> Result<Self, InitramfsError> {
        let mut me = Self {
            kernel_version: kernel.version.clone(),
            entries: BTreeMap::new(),
            modules: Vec::new(),
        };
        for dir in [
            "dev", "proc", "sys", "tmp", "run", "etc", "root", "var", "var/run",
        ] {
            me.dir(dir);
        }
        let busybox = which("busybox").ok_or_else(|| InitramfsError::Tool {
            tool: "busybox".into(),
            detail: "not found".into(),
            package: "busybox-static",
        })?;
        let dynamic = run("ldd", &[busybox.to_str().unwrap_or("busybox")], "libc-bin")
            .map(|out| !out.contains("not a dynamic executable"))
            .unwrap_or(false);
        if dynamic {
            return Err(InitramfsError::Tool {
                tool: "busybox".into(),
                detail: format!("{} is dynamically linked", busybox.display()),
                package: "busybox-static",
            });
        }
        me.dir("bin");
        me.entries.insert(
            "bin/busybox".into(),
            Entry::File {
                data: Source::Host(busybox.clone()),
                mode: 0o755,
            },
        );
        let list = run(
            busybox.to_str().unwrap_or("busybox"),
            &["--list"],
            "busybox-static",
        )?;
        for applet in list
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox")
        {
            me.entries
                .insert(format!("bin/{applet}"), Entry::Symlink("busybox".into()));
        }
        me.entries
            .insert("sbin".into(), Entry::Symlink("bin".into()));
        me.dir("usr");
        me.entries
            .insert("usr/bin".into(), Entry::Symlink("../bin".into()));
        me.entries
            .insert("usr/sbin".into(), Entry::Symlink("../bin".into()));
        Ok(me)
    }

    fn dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.trim_matches('/').split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }

    fn parent_dirs(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// Adds a file with the given contents at `path` (absolute in the guest).
    pub fn file(&mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        let path = path.trim_start_matches('/').to_string();
        self.parent_dirs(&path);
        self.entries.insert(
            path,
            Entry::File {
                data: Source::Bytes(contents.into()),
                mode,
            },
        );
        self
    }

    /// Copies a host file to `path` in the guest.
    pub fn host_file(&mut self, host: &Path, path: &str, mode: u32) -> &mut Self {
        let path = path.trim_start_matches('/').to_string();
        self.parent_dirs(&path);
        self.entries.remove(&path);
        self.entries.insert(
            path,
            Entry::File {
                data: Source::Host(host.to_path_buf()),
                mode,
            },
        );
        self
    }

    /// Copies the executable `host` to `guest_path`, plus the shared libraries and ELF
    /// interpreter `ldd` lists, at their host paths.
    pub fn binary(&mut self, host: &Path, guest_path: &str) -> Result<&mut Self, InitramfsError> {
        // Replacing an applet symlink: remove the link, never write through it.
        self.host_file(host, guest_path, 0o755);
        let out = run("ldd", &[host.to_str().unwrap_or_default()], "libc-bin").unwrap_or_default();
        for line in out.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let real = std::fs::canonicalize(path).map_err(io(format!("resolving {path}")))?;
            self.host_file(&real, path, 0o755);
        }
        Ok(self)
    }

    /// Adds kernel module `name` and its dependencies for the guest kernel, loaded at boot in
    /// dependency order. `params` (e.g. `"mode=1"`) apply to `name` itself; modprobe's own
    /// configured options are kept for dependencies.
    pub fn module(&mut self, name: &str, params: &str) -> Result<&mut Self, InitramfsError> {
        let out = run(
            "modprobe",
            &["-S", &self.kernel_version, "-D", name],
            "kmod",
        )?;
        let wanted = name.replace('-', "_");
        for line in out.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("insmod") {
                continue; // "builtin foo": nothing to load
            }
            let Some(path) = words.next() else { continue };
            let stem = Path::new(path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = stem.split('.').next().unwrap_or_default().replace('-', "_");
            let mut args: Vec<String> = words.map(str::to_string).collect();
            if stem == wanted && !params.is_empty() {
                args = vec![params.to_string()];
            }
            let defaults = match stem.as_str() {
                "bonding" => Some("max_bonds=0"),
                "dummy" => Some("numdummies=0"),
                _ => None,
            };
            if let Some(default) = defaults {
                let key = default.split('=').next().unwrap_or_default();
                if !args.iter().any(|a| a.starts_with(key)) {
                    args.push(default.to_string());
                }
            }
            if self.modules.iter().any(|(p, _)| p == path) {
                continue;
            }
            self.host_file(Path::new(path), path, 0o644);
            self.modules.push((path.to_string(), args.join(" ")));
        }
        Ok(self)
    }

    /// A shell fragment loading the added modules in order (used by the guest `/init`).
    pub fn module_loader(&self) -> String {
        self.modules
            .iter()
            .map(|(path, params)| {
                format!("insmod {path} {params} || echo \"cairn: insmod {path} failed\"\n")
            })
            .collect()
    }

    /// Sets `/init`.
    pub fn init(&mut self, script: &str) -> &mut Self {
        self.file("/init", script.as_bytes().to_vec(), 0o755)
    }

    /// Writes the archive to `out`. Runs `depmod -b` on a staging copy of the module tree so
    /// busybox `modprobe` in the guest finds dependencies too.
    pub fn write(&self, out: &Path) -> Result<(), InitramfsError> {
        let mut entries = self.entries.clone();
        if !self.modules.is_empty() {
            let stage = tempfile::tempdir().map_err(io("creating depmod staging dir"))?;
            let moddir = format!("lib/modules/{}", self.kernel_version);
            for (path, _) in &self.modules {
                let dest = stage.path().join(path.trim_start_matches('/'));
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io("staging modules"))?;
                }
                std::fs::copy(path, &dest).map_err(io(format!("copying {path}")))?;
            }
            for extra in [
                "modules.order",
                "modules.builtin",
                "modules.builtin.modinfo",
            ] {
                let src = Path::new("/").join(&moddir).join(extra);
                if src.exists() {
                    let _ = std::fs::copy(&src, stage.path().join(&moddir).join(extra));
                }
            }
            run(
                "depmod",
                &[
                    "-b",
                    stage.path().to_str().unwrap_or_default(),
                    &self.kernel_version,
                ],
                "kmod",
            )?;
            for entry in std::fs::read_dir(stage.path().join(&moddir))
                .map_err(io("reading depmod output"))?
            {
                let entry = entry.map_err(io("reading depmod output"))?;
                if entry.path().is_file() {
                    let data = std::fs::read(entry.path()).map_err(io("reading depmod output"))?;
                    entries.insert(
                        format!("{moddir}/{}", entry.file_name().to_string_lossy()),
                        Entry::File {
                            data: Source::Bytes(data),
                            mode: 0o644,
                        },
                    );
                }
            }
        }
        let mut cpio = Cpio::default();
        cpio.node("dev/console", 0o020600, 5, 1);
        for (path, entry) in &entries {
            match entry {
                Entry::Dir => cpio.push(path, 0o040755, &[]),
                Entry::Symlink(target) => cpio.push(path, 0o120777, target.as_bytes()),
                Entry::File { data, mode } => {
                    let bytes = match data {
                        Source::Bytes(b) => b.clone(),
                        Source::Host(p) => {
                            std::fs::read(p).map_err(io(format!("reading {}", p.display())))?
                        }
                    };
                    cpio.push(path, 0o100000 | mode, &bytes);
                }
            }
        }
        let bytes = cpio.finish();
        std::fs::write(out, bytes).map_err(io(format!("writing {}", out.display())))?;
        let _ = std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644));
        Ok(())
    }
}

/// A newc ("070701") cpio writer.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn push(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, mode, data.len(), (0, 0));
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn node(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.header(name, mode, 0, (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        self.out
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs a host tool and returns its standard output.
fn run(tool: &str, args: &[&str], package: &'static str) -> Result<String, InitramfsError> {
    let program = which(tool).unwrap_or_else(|| PathBuf::from(tool));
    let out = Command::new(&program)
        .args(args)
        .output()
        .map_err(|e| InitramfsError::Tool {
            tool: tool.into(),
            detail: e.to_string(),
            package,
        })?;
    if !out.status.success() {
        return Err(InitramfsError::Tool {
            tool: format!("{tool} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            package,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
