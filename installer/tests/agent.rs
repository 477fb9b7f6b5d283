//! cairn-agent writing the real minimal image onto disk image files (the same code path as a
//! block device): a good, signed install; a manifest not signed by a trusted key; a
//! corrupted payload, also over an older install; a disk that holds data.
//! The boot of what it wrote is tested in QEMU (tests/qemu_install.rs).

mod common;

use std::path::Path;

use cairn_formats::gpt;
use common::*;

const AGENT: &str = env!("CARGO_BIN_EXE_cairn-agent");

fn agent(source: &Path, target: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "--source",
        source.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    run(AGENT, &args, &[])
}

fn sgdisk_print(disk: &Path) -> String {
    let out = std::process::Command::new("sgdisk")
        .arg("--print")
        .arg(disk)
        .output()
        .expect("sgdisk is needed: apt-get install gdisk");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Offset and size of a partition, from `sgdisk --info` (the reference reader).
fn partition(disk: &Path, number: u32) -> (u64, u64) {
    let out = std::process::Command::new("sgdisk")
        .arg(format!("--info={number}"))
        .arg(disk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let first = field("First sector: ");
    let last = field("Last sector: ");
    (first * 512, (last - first + 1) * 512)
}

/// The MBR under the new GPT holds only the code that hands back to the firmware.
fn assert_no_boot_code(disk: &Path, what: &str) {
    let mut expected = vec![0u8; 440];
    expected[..gpt::NO_BOOT_CODE.len()].copy_from_slice(&gpt::NO_BOOT_CODE);
    assert!(read_at(disk, 0, 440) == expected, "{what}");
}

/// A directory of trusted release keys holding the key `minimal_image` signed with, as
/// `cairn image build` puts it into the install environment.
fn trusted_keys(image: &Path, dir: &Path) -> std::path::PathBuf {
    let keys = dir.join("release-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(image.join("release.key.pub"), keys.join("release.pem")).unwrap();
    keys
}

/// An ISO seed's node.yaml, in cairn-node's schema; the agent copies it as it is.
const NODE_YAML: &str = "hostname: edge-1\nhub:\n  url: https://hub.example:8443\n  ca_file: /etc/cairn/hub-ca.pem\n  token_file: /etc/cairn/enrollment-token\n";

#[test]
fn installs_the_image_with_its_seed_and_only_then_boot_code() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    std::fs::create_dir_all(source.join("seed/netplan")).unwrap();
    std::fs::write(source.join("seed/node.yaml"), NODE_YAML).unwrap();
    std::fs::write(source.join("seed/enrollment-token"), "t0ken\n").unwrap();
    std::fs::write(
        source.join("seed/netplan/10-lan.yaml"),
        "network: {version: 2}\n",
    )
    .unwrap();
    std::fs::write(source.join("seed/install.yaml"), "name: edge-1\n").unwrap();
    let disk = dir.path().join("disk.img");
    blank_disk(&disk, 1024);
    // Old data where the ESP's free clusters will be (a disk is rarely all zeros).
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&vec![0xa5; 24 << 20], 4 << 20).unwrap();
    }

    let keys = trusted_keys(&image, dir.path());
    let (code, out, err) = agent(&source, &disk, &["--release-keys", keys.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("\"installed\""), "{out}");
    assert!(err.contains("signed by release key"), "{err}");
    for step in ["partitioned", "verified", "bootloader", "seed"] {
        assert!(
            err.to_lowercase().contains(step),
            "no {step} step logged:\n{err}"
        );
    }

    let table = sgdisk_print(&disk);
    for name in ["esp", "root-a", "root-b", "data"] {
        assert!(table.contains(name), "{table}");
    }
    // root-a holds exactly the image the build made.
    let root =
        zstd::stream::decode_all(std::fs::File::open(image.join("root.img.zst")).unwrap()).unwrap();
    let (off, size) = partition(&disk, 2);
    assert!(size >= root.len() as u64);
    assert!(
        read_at(&disk, off, root.len()) == root,
        "root-a differs from root.img"
    );
    // The ESP is a sound FAT filesystem holding UEFI GRUB and its environment, though its
    // image stops after the last used block.
    let (off, size) = partition(&disk, 1);
    let esp = dir.path().join("esp.img");
    std::fs::write(&esp, read_at(&disk, off, size as usize)).unwrap();
    let fsck = std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(&esp)
        .output()
        .expect("fsck.fat (dosfstools)");
    assert!(fsck.status.success(), "{fsck:?}");
    let dir_list = std::process::Command::new("mdir")
        .args(["-b", "-i"])
        .arg(&esp)
        .args(["::/EFI/BOOT", "::/grub"])
        .output()
        .expect("mdir (mtools)");
    let listed = String::from_utf8_lossy(&dir_list.stdout);
    for file in ["BOOTX64.EFI", "grubenv", "grub.cfg"] {
        assert!(listed.contains(file), "{file} not on the ESP: {listed}");
    }
    // BIOS boot code is in the MBR (GRUB's boot.img starts with a jump).
    let mbr = read_at(&disk, 0, 512);
    assert_eq!(mbr[0], 0xeb, "no boot code in the MBR");
    // The seed is on the data filesystem (debugfs reads it without mounting).
    let (off, size) = partition(&disk, 4);
    let data = dir.path().join("data.img");
    std::fs::write(&data, read_at(&disk, off, (size.min(64 << 20)) as usize)).unwrap();
    let cat = |p: &str| {
        let o = std::process::Command::new("debugfs")
            .args(["-R", &format!("cat {p}")])
            .arg(&data)
            .output()
            .expect("debugfs (e2fsprogs)");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(cat("/seed/node.yaml"), NODE_YAML);
    assert_eq!(cat("/seed/enrollment-token"), "t0ken");
    assert_eq!(cat("/seed/netplan/10-lan.yaml"), "network: {version: 2}\n");
    assert_eq!(cat("/seed/hostname"), "edge-1\n");
}

#[test]
fn a_corrupted_image_is_refused_and_the_disk_left_unbootable() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    let payload = source.join("root.img.zst");
    let mut bytes = std::fs::read(&payload).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&payload, bytes).unwrap();
    let disk = dir.path().join("disk.img");
    blank_disk(&disk, 1024);

    let (code, out, err) = agent(&source, &disk, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("\"failed\"") && out.contains("root image"),
        "{out}"
    );
    // No partition table, no boot code: firmware finds nothing to boot.
    assert!(
        read_at(&disk, 0, 1 << 20).iter().all(|b| *b == 0),
        "the first MiB was not wiped"
    );
    assert!(
        sgdisk_print(&disk).contains("GPT: not present") || !sgdisk_print(&disk).contains("root-a")
    );

    // With --keep-on-error the partial write stays for inspection, still without boot code.
    let (code, _, _) = agent(&source, &disk, &["--keep-on-error"]);
    assert_eq!(code, 1);
    assert!(sgdisk_print(&disk).contains("root-a"));
    assert_no_boot_code(&disk, "boot code written before verification");
}

/// Replaces the source's root image by `image`, with `payload` as `root.img.zst` and an
/// unsigned install.json (the agent trusts no key in these tests) describing `image` in
/// the manifest's format `format`: 2 lists frame digests, 1 is what earlier builds wrote.
fn replace_root(source: &Path, image: &[u8], payload: &[u8], format: u32) {
    use cairn_formats::stream::{Digest, FrameDigests};
    let (root, frames) = FrameDigests::of_reader(image).unwrap();
    let path = source.join("install.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["root_image"] = serde_json::to_value(root).unwrap();
    m["root_payload"] = serde_json::to_value(Digest::of_reader(payload).unwrap()).unwrap();
    m["root_frames"] = serde_json::to_value(frames).unwrap();
    if format == 1 {
        let fields = m.as_object_mut().unwrap();
        for field in ["format", "root_frames", "esp_frames"] {
            fields.remove(field);
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    std::fs::remove_file(source.join("install.json.sig")).ok();
    std::fs::write(source.join("root.img.zst"), payload).unwrap();
}

/// A root image of `frames` whole 4 MiB frames and a bit, no two frames alike and no zero
/// runs (a squashfs has none).
fn pseudo_random_image(frames: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..frames * FRAME + 1000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

const FRAME: usize = cairn_formats::stream::FRAME_SIZE;

/// A payload whose middle frame decodes cleanly but is not the one the manifest lists (a
/// mirror serving other bytes): the frames before it are in root-a, not a byte of it is,
/// the error names it, and nothing is bootable.
#[test]
fn a_frame_that_does_not_match_its_digest_never_reaches_the_disk() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    let root = pseudo_random_image(6);
    let mut bad = root.clone();
    for b in &mut bad[3 * FRAME..4 * FRAME] {
        *b = !*b;
    }
    let mut payload = Vec::new();
    cairn_formats::stream::compress_frames(&bad[..], &mut payload).unwrap();
    replace_root(&source, &root, &payload, 2);
    let disk = dir.path().join("disk.img");
    blank_disk(&disk, 1024);

    let (code, out, err) = agent(&source, &disk, &["--keep-on-error"]);
    assert_eq!(code, 1, "{out}\n{err}");
    let offset = 3 * FRAME;
    assert!(
        out.contains(&format!(
            "frame 3 (image bytes {offset}..{}) does not match",
            offset + FRAME
        )),
        "{out}"
    );
    let (slot, _) = partition(&disk, 2);
    // --keep-on-error: what was written stays as a power cut would leave it.
    assert!(
        read_at(&disk, slot, 3 * FRAME) == root[..3 * FRAME],
        "the verified frames 0 to 2 were written"
    );
    let there = read_at(&disk, slot + offset as u64, FRAME);
    assert!(
        there != bad[offset..offset + FRAME] && there.iter().all(|b| *b == 0),
        "bytes of the unverified frame reached the disk"
    );
    assert!(
        read_at(&disk, slot + 4 * FRAME as u64, FRAME)
            .iter()
            .all(|b| *b == 0),
        "a frame after it was written"
    );
    assert_no_boot_code(&disk, "boot code written");
}

/// An install.json of format 1 (earlier builds: one digest per image, no frame list) still
/// installs, its image checked as a whole.
#[test]
fn an_install_manifest_of_format_1_still_installs() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    let root = pseudo_random_image(2);
    let mut payload = Vec::new();
    cairn_formats::stream::compress_frames(&root[..], &mut payload).unwrap();
    replace_root(&source, &root, &payload, 1);
    let manifest = std::fs::read_to_string(source.join("install.json")).unwrap();
    assert!(
        !manifest.contains("frames") && !manifest.contains("format"),
        "{manifest}"
    );
    let disk = dir.path().join("disk.img");
    blank_disk(&disk, 1024);

    let (code, out, err) = agent(&source, &disk, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (slot, _) = partition(&disk, 2);
    assert!(
        read_at(&disk, slot, root.len()) == root,
        "root-a differs from the image"
    );

    // The same image damaged in its middle frame is refused by the whole-image digest.
    let mut bad = root.clone();
    bad[FRAME + 7] ^= 1;
    let mut payload = Vec::new();
    cairn_formats::stream::compress_frames(&bad[..], &mut payload).unwrap();
    std::fs::write(source.join("root.img.zst"), payload).unwrap();
    let (code, out, err) = agent(&source, &disk, &["--wipe"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("image mismatch"), "{out}");
}

/// A boot server (or anyone on its LAN) that serves its own install.json, with digests of
/// its own payload, is refused before a byte reaches the disk, as is a manifest that is
/// unsigned or signed by a key the install environment does not trust.
#[test]
fn a_manifest_no_trusted_key_signed_is_refused_before_anything_is_written() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let keys = trusted_keys(&image, dir.path());
    let source = source_copy(&image, dir.path());
    let disk = dir.path().join("disk.img");
    blank_disk(&disk, 1024);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&vec![0x5a; 8 << 20], 0).unwrap();
    }
    let before = read_at(&disk, 0, 8 << 20);
    let manifest = std::fs::read_to_string(source.join("install.json")).unwrap();
    let signature = std::fs::read(source.join("install.json.sig")).unwrap();
    let other_keys = dir.path().join("other-keys");
    std::fs::create_dir_all(&other_keys).unwrap();
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_cairn"),
        &[
            "image",
            "keygen",
            "--out",
            dir.path().join("other.key").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::copy(
        dir.path().join("other.key.pub"),
        other_keys.join("other.pem"),
    )
    .unwrap();

    let cases: [(&str, &dyn Fn(), &Path, &str); 3] = [
        (
            "a changed manifest",
            &|| {
                let changed = manifest.replacen("\"sha256\": \"", "\"sha256\": \"0", 1);
                std::fs::write(source.join("install.json"), changed).unwrap();
            },
            &keys,
            "not made by a trusted release key",
        ),
        (
            "no signature",
            &|| {
                std::fs::write(source.join("install.json"), &manifest).unwrap();
                std::fs::remove_file(source.join("install.json.sig")).unwrap();
            },
            &keys,
            "install.json is not signed",
        ),
        (
            "a key not trusted",
            &|| std::fs::write(source.join("install.json.sig"), &signature).unwrap(),
            &other_keys,
            "not made by a trusted release key",
        ),
    ];
    for (case, prepare, trusted, expect) in cases {
        prepare();
        let (code, out, err) = agent(
            &source,
            &disk,
            &["--release-keys", trusted.to_str().unwrap(), "--wipe"],
        );
        assert_eq!(code, 1, "{case}: {out}\n{err}");
        assert!(out.contains(expect), "{case}: {out}");
        assert!(
            read_at(&disk, 0, 8 << 20) == before,
            "{case}: the disk was written"
        );
    }
}

/// A power cut while streaming the root image over an older install: with the old ESP
/// and data filesystem left where the new GPT points, firmware would boot the old GRUB
/// into a partial slot. The agent destroys them before the new GPT, so nothing boots.
#[test]
fn an_install_cut_short_over_an_older_install_leaves_nothing_bootable() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    let disk = dir.path().join("disk.img");
    blank_disk(&disk, 1024);
    let (code, out, err) = agent(&source, &disk, &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (esp, _) = partition(&disk, 1);
    let (data, _) = partition(&disk, 4);
    assert_eq!(
        read_at(&disk, esp + 510, 2),
        [0x55, 0xaa],
        "no FAT boot sector"
    );

    // The second install's payload breaks half-way; --keep-on-error leaves the disk as a
    // power cut at that moment would.
    let payload = source.join("root.img.zst");
    let mut bytes = std::fs::read(&payload).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&payload, bytes).unwrap();
    let (code, out, err) = agent(&source, &disk, &["--wipe", "--keep-on-error"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        sgdisk_print(&disk).contains("root-a"),
        "the new GPT is there"
    );
    assert!(
        read_at(&disk, esp, 1 << 20).iter().all(|b| *b == 0),
        "the old ESP survived under the new GPT"
    );
    assert!(
        read_at(&disk, data, 1 << 20).iter().all(|b| *b == 0),
        "the old data filesystem (and its seed) survived under the new GPT"
    );
    assert_no_boot_code(&disk, "boot code left in the MBR");
}

#[test]
fn a_disk_holding_a_filesystem_is_refused_without_the_wipe_flag() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    let disk = dir.path().join("disk.img");
    blank_disk(&disk, 1024);
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .expect("mkfs.ext4");
    assert!(status.success());
    let before = read_at(&disk, 0, 2 << 20);

    let (code, out, err) = agent(&source, &disk, &[]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("ext2/3/4 filesystem") && out.contains("refusing"),
        "{out}"
    );
    assert!(
        read_at(&disk, 0, 2 << 20) == before,
        "a refused disk was modified"
    );

    let (code, out, err) = agent(&source, &disk, &["--wipe"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(sgdisk_print(&disk).contains("root-a"));
}

#[test]
fn a_bad_disk_hint_is_reported() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    let (code, out, _) = run(
        AGENT,
        &[
            "--source",
            source.to_str().unwrap(),
            "--disk-hint",
            "biggest",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.contains("unknown criterion \\\"biggest\\\""), "{out}");
}
