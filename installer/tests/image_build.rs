//! `cairn image build|keygen|sign|verify` through the real CLI.

mod common;

use common::*;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

#[test]
fn two_minimal_builds_with_the_same_epoch_are_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifests = Vec::new();
    for n in ["one", "two"] {
        let out = dir.path().join(n);
        let (code, _, err) = run(
            CAIRN,
            &[
                "image",
                "build",
                "--config",
                example("minimal").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", EPOCH)],
        );
        assert_eq!(code, 0, "{err}");
        manifests.push(std::fs::read_to_string(out.join("manifest.json")).unwrap());
    }
    assert_eq!(manifests[0], manifests[1], "two builds differ");
    let m: serde_json::Value = serde_json::from_str(&manifests[0]).unwrap();
    let files = m["files"].as_object().unwrap();
    for f in [
        "disk.raw",
        "disk.qcow2",
        "root.img.zst",
        "installer.iso",
        "update-0.1.0.bundle",
        "pxe/vmlinuz",
        "pxe/initrd.img",
        "pxe/ipxe.tera",
    ] {
        assert!(files.contains_key(f), "manifest lacks {f}");
    }
    // The manifest's digests are what sha256sum (the reference) says, and the files match
    // byte for byte across the builds.
    for (name, d) in files {
        let a = dir.path().join("one").join(name);
        let out = std::process::Command::new("sha256sum")
            .arg(&a)
            .output()
            .unwrap();
        let sum = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            sum.split_whitespace().next(),
            d["sha256"].as_str(),
            "{name}"
        );
        assert_eq!(
            std::fs::metadata(&a).unwrap().len(),
            d["size"].as_u64().unwrap(),
            "{name}"
        );
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(dir.path().join("two").join(name)).unwrap(),
            "{name} differs"
        );
    }
    // A changed epoch changes the image (timestamps really come from it).
    let out = dir.path().join("three");
    let (code, _, err) = run(
        CAIRN,
        &[
            "image",
            "build",
            "--config",
            example("minimal").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", "1700000001")],
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        std::fs::read_to_string(out.join("manifest.json")).unwrap(),
        manifests[0]
    );
}

#[test]
fn verify_accepts_only_an_intact_bundle_signed_by_the_key() {
    let image = minimal_image();
    let bundle = image.join("update-0.1.0.bundle");
    let pubkey = image.join("release.key.pub");
    let verify = |bundle: &std::path::Path, key: &std::path::Path| {
        run(
            CAIRN,
            &[
                "image",
                "verify",
                "--pubkey",
                key.to_str().unwrap(),
                bundle.to_str().unwrap(),
                "--output",
                "json",
            ],
            &[],
        )
    };
    let (code, out, err) = verify(&bundle, &pubkey);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"version\": \"0.1.0\""), "{out}");
    // Format 2: the signed manifests list the frame digests of the images.
    assert!(
        out.contains("\"root_frames\"") && out.contains("\"frame_size\": 4194304"),
        "{out}"
    );
    let install = std::fs::read_to_string(image.join("pxe/install.json")).unwrap();
    assert!(
        install.contains("\"format\": 2") && install.contains("\"esp_frames\""),
        "{install}"
    );

    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.key");
    assert_eq!(
        run(
            CAIRN,
            &["image", "keygen", "--out", other.to_str().unwrap()],
            &[]
        )
        .0,
        0
    );
    let (code, _, err) = verify(&bundle, &dir.path().join("other.key.pub"));
    assert_eq!(code, 1);
    assert!(err.contains("not made by a trusted key"), "{err}");
    // keygen never overwrites a key.
    let (code, _, err) = run(
        CAIRN,
        &["image", "keygen", "--out", other.to_str().unwrap()],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");

    // One flipped byte in the manifest, or in the payload: refused.
    let original = std::fs::read(&bundle).unwrap();
    let tampered = dir.path().join("tampered.bundle");
    for at in [40, original.len() / 2, original.len() - 10] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&tampered, &bytes).unwrap();
        let (code, _, err) = verify(&tampered, &pubkey);
        assert_eq!(code, 1, "byte {at} flipped was accepted: {err}");
    }
    // Re-signing with another key makes it that key's bundle, and no longer ours.
    std::fs::write(&tampered, &original).unwrap();
    let (code, _, err) = run(
        CAIRN,
        &[
            "image",
            "sign",
            "--key",
            other.to_str().unwrap(),
            tampered.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(verify(&tampered, &dir.path().join("other.key.pub")).0, 0);
    assert_eq!(verify(&tampered, &pubkey).0, 1);
    // A wrong key file is invalid input.
    let (code, _, _) = run(
        CAIRN,
        &[
            "image",
            "verify",
            "--pubkey",
            bundle.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 3);
}

#[test]
fn a_config_mistake_names_the_key_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("image.yaml");
    std::fs::write(
        &config,
        "profile: minimal\nversion: 0.1.0\ndisk:\n  size_gib: 1\n",
    )
    .unwrap();
    let (code, _, err) = run(
        CAIRN,
        &[
            "image",
            "build",
            "--config",
            config.to_str().unwrap(),
            "--out",
            dir.path().join("o").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 3);
    assert!(err.contains("size_gib") && err.contains("line 4"), "{err}");
}
