//! Per-server seeded installer ISOs, for virtual media: the installer ISO of a build with
//! `cairn/seed/install.yaml` (the install plan a PXE install gets from the boot server), so
//! a virtual-media install needs no boot server. `cairn rack provision` makes one per server
//! (with that server's single-use enrollment token) and deletes it after the install.

use std::path::Path;

use crate::build::BuildError;
use crate::rootfs;
use crate::tools::run;

/// The seeded ISOs are per server and deleted after their install: reproducibility has no
/// use for them, so every tool runs with this fixed `SOURCE_DATE_EPOCH`.
const EPOCH: u64 = 0;

/// Builds `out`: the installer ISO of `artifacts` (a `cairn image build` output) with
/// `cairn/seed/install.yaml` = `install_yaml` (mode 0600: it may carry an enrollment token).
/// The ISO is rebuilt with grub-mkrescue from the build's own pieces (pxe/: kernel, initrd,
/// payload; grub.cfg from its ISO) in about a second; editing the built ISO in place with
/// xorriso breaks its El Torito boot image. The scratch tree sits beside `out` (so the
/// payload is hard-linked rather than copied where the file system allows) and is removed.
pub fn seeded_iso(artifacts: &Path, install_yaml: &[u8], out: &Path) -> Result<(), BuildError> {
    let tree = out.with_extension("tree");
    let _ = std::fs::remove_dir_all(&tree);
    let result = fill_tree(artifacts, install_yaml, &tree).and_then(|()| {
        run(
            "grub-mkrescue",
            crate::args!["-o", out, &tree, "--", "-volid", "CAIRN-INSTALL"],
            EPOCH,
        )
        .map_err(BuildError::from)
    });
    let _ = std::fs::remove_dir_all(&tree);
    result.map(|_| ())
}

fn fill_tree(artifacts: &Path, install_yaml: &[u8], tree: &Path) -> Result<(), BuildError> {
    rootfs::dirs(tree, &["boot/grub", "cairn/seed"])?;
    run(
        "osirrox",
        crate::args![
            "-indev",
            artifacts.join("installer.iso"),
            "-extract",
            "/boot/grub/grub.cfg",
            tree.join("boot/grub/grub.cfg")
        ],
        EPOCH,
    )?;
    let pxe = artifacts.join("pxe");
    let copies = [
        ("vmlinuz", "boot/vmlinuz"),
        ("initrd.img", "boot/initrd.img"),
        ("install.json", "cairn/install.json"),
        ("root.img.zst", "cairn/root.img.zst"),
        ("esp.img.zst", "cairn/esp.img.zst"),
        ("mbr.bin", "cairn/mbr.bin"),
        ("core.img", "cairn/core.img"),
    ];
    let sig = cairn_formats::install::SIGNATURE_FILE;
    let signed = pxe
        .join(sig)
        .is_file()
        .then_some((sig, "cairn/install.json.sig"));
    for (from, to) in copies.into_iter().chain(signed) {
        let (from, to) = (pxe.join(from), tree.join(to));
        // Hard links where the file system allows: the payload is tens of MB.
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|source| BuildError::Io {
                what: "copying into the ISO tree",
                path: from.clone(),
                source,
            })?;
        }
    }
    rootfs::write(tree, "cairn/seed/install.yaml", install_yaml, 0o600)?;
    Ok(())
}
