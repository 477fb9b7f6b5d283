//! The one place the build runs external tools (mksquashfs, mkfs.fat, mtools, grub-mkimage,
//! grub-mkrescue, qemu-img, modprobe, depmod, ldd, strip, mmdebstrap). Every run gets
//! `SOURCE_DATE_EPOCH`, and a failure names the tool, its output and the package to install.

use std::path::Path;
use std::process::Command;

/// A tool failed or is missing.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program could not be started.
    #[error("running {program} (install the Debian package {package}; scripts/setup does)")]
    Missing {
        /// The program.
        program: String,
        /// Where it comes from.
        package: &'static str,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The program exited with an error.
    #[error("{program} failed ({status}): {output}")]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its standard error and output.
        output: String,
    },
}

fn package_of(program: &str) -> &'static str {
    match program {
        "mksquashfs" => "squashfs-tools",
        "mkfs.fat" => "dosfstools",
        "mcopy" | "mmd" => "mtools",
        "osirrox" => "xorriso",
        "grub-mkimage" | "grub-mkrescue" => "grub-common, grub-pc-bin, grub-efi-amd64-bin, xorriso",
        "qemu-img" => "qemu-utils",
        "modprobe" | "depmod" => "kmod",
        "ldd" => "libc-bin",
        "strip" => "binutils",
        "mmdebstrap" => "mmdebstrap",
        "mkfs.ext4" => "e2fsprogs",
        _ => "(see scripts/setup)",
    }
}

/// Runs `program args...` with `SOURCE_DATE_EPOCH`; returns its standard output.
pub fn run(program: &str, args: &[&std::ffi::OsStr], epoch: u64) -> Result<String, ToolError> {
    run_in(program, args, epoch, None)
}

/// Like [`run`], in a working directory.
pub fn run_in(
    program: &str,
    args: &[&std::ffi::OsStr],
    epoch: u64,
    cwd: Option<&Path>,
) -> Result<String, ToolError> {
    tracing::debug!(program, ?args, "running");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| ToolError::Missing {
        program: program.to_owned(),
        package: package_of(program),
        source,
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ToolError::Failed {
            program: program.to_owned(),
            status: out.status,
            output: tail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Shorthand for building an argument list of mixed strings and paths.
#[macro_export]
#[doc(hidden)]
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(::std::convert::AsRef::<::std::ffi::OsStr>::as_ref(&$a)),*] };
}
