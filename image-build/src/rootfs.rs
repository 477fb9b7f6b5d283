//! Assembling root trees on disk: busybox, host binaries with their libraries, kernel
//! modules with their dependencies. Used for the `minimal` root and for the initramfs.

use std::path::{Path, PathBuf};

use crate::args;
use crate::tools::{ToolError, run};

/// Why a tree could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TreeError {
    let path = path.to_owned();
    move |source| TreeError::Io { what, path, source }
}

/// Creates `dir/rel`'s parent directories.
fn parent(dir: &Path, rel: &str) -> Result<PathBuf, TreeError> {
    let dst = dir.join(rel.trim_start_matches('/'));
    if let Some(p) = dst.parent() {
        std::fs::create_dir_all(p).map_err(io("creating", p))?;
    }
    Ok(dst)
}

/// Writes a file into the tree.
pub fn write(dir: &Path, rel: &str, contents: &[u8], mode: u32) -> Result<(), TreeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dst = parent(dir, rel)?;
    std::fs::write(&dst, contents).map_err(io("writing", &dst))?;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &dst))
}

/// Creates directories in the tree.
pub fn dirs(dir: &Path, rels: &[&str]) -> Result<(), TreeError> {
    for rel in rels {
        let p = dir.join(rel);
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
    }
    Ok(())
}

/// The static busybox of the build machine, with a symlink per applet in `bin/`.
pub fn busybox(dir: &Path, epoch: u64) -> Result<(), TreeError> {
    let host = Path::new("/bin/busybox");
    let dst = parent(dir, "bin/busybox")?;
    std::fs::copy(host, &dst).map_err(io("copying (install busybox-static)", host))?;
    let list = run("/bin/busybox", args!["--list"], epoch)?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(io("linking", &link))?;
        }
    }
    Ok(())
}

/// Copies a host executable (stripped of symbols) and the shared libraries `ldd` lists.
pub fn binary(dir: &Path, host: &Path, guest: &str, epoch: u64) -> Result<(), TreeError> {
    let dst = parent(dir, guest)?;
    if dst.exists() || dst.symlink_metadata().is_ok() {
        // An applet symlink would make `strip -o` write through it into busybox.
        std::fs::remove_file(&dst).map_err(io("replacing", &dst))?;
    }
    run("strip", args!["--strip-all", "-o", dst, host], epoch)?;
    libraries(dir, host, epoch)
}

/// Copies the shared libraries of `host` (nothing for a static binary).
pub fn libraries(dir: &Path, host: &Path, epoch: u64) -> Result<(), TreeError> {
    let out = match run("ldd", args![host], epoch) {
        Ok(out) => out,
        // ldd exits 1 for "not a dynamic executable".
        Err(ToolError::Failed { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for line in out.lines() {
        let path = match line.split("=>").nth(1) {
            Some(rest) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dst = parent(dir, path)?;
        if !dst.exists() {
            // Copy the content under the name the binary asks for (following symlinks).
            std::fs::copy(path, &dst).map_err(io("copying", Path::new(path)))?;
        }
    }
    Ok(())
}

/// Copies kernel modules `names` of kernel `version` (with their dependencies, resolved by
/// `modprobe -D`) from `modules_root` (a directory holding `lib/modules`) and writes
/// `modules.dep` with `depmod -b`. Also writes `etc/modules`, the load order for `/init`.
pub fn modules(
    dir: &Path,
    modules_root: &Path,
    version: &str,
    names: &[&str],
    epoch: u64,
) -> Result<(), TreeError> {
    let mut loaded = Vec::new();
    for name in names {
        let out = run(
            "modprobe",
            args!["-d", modules_root, "-S", version, "-D", name],
            epoch,
        )?;
        for line in out.lines() {
            let Some(path) = line.strip_prefix("insmod ").map(str::trim) else {
                continue;
            };
            let rel = path
                .strip_prefix(modules_root.to_str().unwrap_or("/"))
                .unwrap_or(path)
                .trim_start_matches('/');
            let src = modules_root.join(rel);
            let dst = parent(dir, rel)?;
            if !dst.exists() {
                std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
            }
        }
        loaded.push(*name);
    }
    let kdir = format!("lib/modules/{version}");
    for meta in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let src = modules_root.join(&kdir).join(meta);
        if src.exists() {
            let dst = parent(dir, &format!("{kdir}/{meta}"))?;
            std::fs::copy(&src, &dst).map_err(io("copying", &src))?;
        }
    }
    run("depmod", args!["-b", dir, version], epoch)?;
    write(
        dir,
        "etc/modules",
        format!("{}\n", loaded.join("\n")).as_bytes(),
        0o644,
    )
}

/// Sets every mtime in the tree to `epoch` (squashfs and cpio take times from the files).
pub fn clamp_times(dir: &Path, epoch: u64) -> Result<(), TreeError> {
    run(
        "find",
        args![
            dir,
            "-exec",
            "touch",
            "-h",
            "-d",
            format!("@{epoch}"),
            "{}",
            "+"
        ],
        epoch,
    )?;
    Ok(())
}
