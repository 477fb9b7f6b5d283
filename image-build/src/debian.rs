//! The `debian` profile's root: mmdebstrap from the mirror configured in `/etc/apt`.
//!
//! What still varies between two builds with the same `SOURCE_DATE_EPOCH` (README, limits):
//! the package versions the mirror serves that day, and files that packages' maintainer
//! scripts generate (the initramfs, ssh host keys if any, `ldconfig` and man caches). The
//! squashfs step is reproducible, so the image is as reproducible as the tree is.

use std::path::Path;

use crate::args;
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

/// Bootstraps `root` (which must not exist yet).
pub(crate) fn bootstrap(root: &Path, cfg: &ImageConfig, epoch: u64) -> Result<(), ToolError> {
    let mut packages: Vec<&str> = BASE_PACKAGES.to_vec();
    packages.extend(cfg.debian.extra_packages.iter().map(String::as_str));
    let include = format!("--include={}", packages.join(","));
    run(
        "mmdebstrap",
        args![
            "--variant=minbase",
            "--mode=root",
            include,
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            // The root is squashfs: the initramfs must be able to mount it.
            "--customize-hook=echo squashfs >> \"$1/etc/initramfs-tools/modules\"",
            "--customize-hook=chroot \"$1\" update-initramfs -u -k all",
            "--customize-hook=chroot \"$1\" systemctl enable serial-getty@ttyS0.service",
            "--customize-hook=rm -f \"$1\"/var/cache/apt/*.bin \"$1\"/var/lib/apt/lists/*_Packages",
            cfg.debian.suite,
            root,
        ],
        epoch,
    )?;
    Ok(())
}
