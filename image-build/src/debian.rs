//! The `debian` profile's root: mmdebstrap from the mirror configured in `/etc/apt`.
//!
//! What still varies between two builds with the same `SOURCE_DATE_EPOCH` (README, limits):
//! the package versions the mirror serves that day, and files that packages' maintainer
//! scripts generate (the initramfs, ssh host keys if any, `ldconfig` and man caches). The
//! squashfs step is reproducible, so the image is as reproducible as the tree is.
//!
//! Downloaded packages are kept in a cache directory (default
//! [`DEFAULT_PACKAGE_CACHE`]) and handed to the next build, so a warm build downloads only
//! the package indexes and what changed: mmdebstrap's own recipe (its manual, "--skip"),
//! sync-in before the download and sync-out after the install.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use crate::config::ImageConfig;
use crate::tools::{ToolError, run};

/// Packages every `debian` image has.
pub(crate) const BASE_PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "udev",
    "initramfs-tools",
    "e2fsprogs",
];

/// Where downloaded `.deb` files are kept between builds unless told otherwise.
pub(crate) const DEFAULT_PACKAGE_CACHE: &str = "/var/cache/cairn/packages";

/// Bootstraps `root` (which must not exist yet). With `package_cache` (an existing
/// directory), the `.deb` files in it are used instead of downloading them again and the
/// ones this build downloaded are added to it.
pub(crate) fn bootstrap(
    root: &Path,
    cfg: &ImageConfig,
    package_cache: Option<&Path>,
    epoch: u64,
) -> Result<(), ToolError> {
    let mut packages: Vec<&str> = BASE_PACKAGES.to_vec();
    packages.extend(cfg.debian.extra_packages.iter().map(String::as_str));
    let mut argv: Vec<OsString> = vec![
        "--variant=minbase".into(),
        "--mode=root".into(),
        format!("--include={}", packages.join(",")).into(),
    ];
    if let Some(cache) = package_cache {
        let cache = shell_quote(&cache.to_string_lossy());
        argv.extend([
            // The archive directory is not empty (the cache is in it), and the essential
            // packages' .deb files stay there until sync-out has copied them.
            "--skip=download/empty".into(),
            "--skip=essential/unlink".into(),
            "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/".into(),
            format!("--setup-hook=sync-in {cache} /var/cache/apt/archives/").into(),
            format!("--customize-hook=sync-out /var/cache/apt/archives {cache}").into(),
        ]);
    }
    argv.extend(
        [
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            // The root is squashfs: the initramfs must be able to mount it. Said before the
            // kernel is installed, so that its postinst builds the one initramfs with it
            // (mkinitramfs reads every file of modules.d; regenerating it afterwards cost a
            // second initramfs build).
            "--essential-hook=mkdir -p \"$1/usr/share/initramfs-tools/modules.d\" && echo squashfs > \"$1/usr/share/initramfs-tools/modules.d/cairn-squashfs\"",
            "--customize-hook=chroot \"$1\" systemctl enable serial-getty@ttyS0.service",
            "--customize-hook=rm -f \"$1\"/var/cache/apt/*.bin \"$1\"/var/lib/apt/lists/*_Packages",
        ]
        .map(OsString::from),
    );
    argv.push(cfg.debian.suite.clone().into());
    argv.push(root.into());
    let argv: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
    run("mmdebstrap", &argv, epoch)?;
    Ok(())
}

/// Quotes a path for the shell that runs mmdebstrap's hooks.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
