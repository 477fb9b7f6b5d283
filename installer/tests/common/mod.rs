//! Shared by the install-path tests: one `minimal` image build per test run, made by the
//! real `cairn image build` with the freshly built `cairn-agent`, shared across test
//! processes through a lock file (nextest runs every test in its own process).

#![allow(unreachable_pub)] // a helper module of test binaries: `pub` is how they share it
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a binary, returning (exit code, stdout, stderr).
pub fn run(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub const EPOCH: &str = "1700000000";

/// The example config with the defaults the tests use.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../image-build/examples")
        .join(format!("{name}.yaml"))
}

/// Builds the minimal image once per set of binaries; returns its output directory.
pub fn minimal_image() -> PathBuf {
    let cairn = env!("CARGO_BIN_EXE_cairn");
    let agent = env!("CARGO_BIN_EXE_cairn-agent");
    let stamp = |p: &str| {
        let m = std::fs::metadata(p).expect("binary");
        format!(
            "{}-{}",
            m.len(),
            m.modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        )
    };
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cairn-images");
    std::fs::create_dir_all(&base).unwrap();
    let out = base.join(format!("minimal-{}-{}", stamp(cairn), stamp(agent)));
    let lock = std::fs::File::create(base.join("lock")).unwrap();
    lock.lock().unwrap();
    if !out.join("manifest.json").exists() {
        let key = base.join(format!("release-{}.key", std::process::id()));
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("key.pub"));
        let (code, _, err) = run(
            cairn,
            &["image", "keygen", "--out", key.to_str().unwrap()],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = run(
            cairn,
            &[
                "image",
                "build",
                "--config",
                example("minimal").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--signing-key",
                key.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", EPOCH)],
        );
        assert_eq!(code, 0, "cairn image build failed:\n{err}");
        std::fs::copy(
            key.with_file_name(format!(
                "{}.pub",
                key.file_name().unwrap().to_string_lossy()
            )),
            out.join("release.key.pub"),
        )
        .unwrap();
    }
    drop(lock);
    out
}

/// A copy of the image's `pxe/` directory that a test may modify (e.g. add a seed).
pub fn source_copy(image: &Path, dir: &Path) -> PathBuf {
    let src = dir.join("source");
    std::fs::create_dir_all(&src).unwrap();
    for e in std::fs::read_dir(image.join("pxe")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), src.join(e.file_name())).unwrap();
    }
    src
}

/// A blank sparse disk image.
pub fn blank_disk(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

/// Reads `len` bytes of a file at `offset`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// `disk`'s ESP as mtools names it (`file@@offset`).
pub fn esp(disk: &Path) -> String {
    let table = cairn_formats::gpt::read(&mut std::fs::File::open(disk).unwrap()).unwrap();
    let offset = table.get("esp").expect("the image has an ESP").offset();
    format!("{}@@{offset}", disk.display())
}

/// Runs an mtools command (on a disk image's ESP, named by [`esp`]).
pub fn mtools(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (apt-get install mtools)"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replaces `grub/<name>` on the ESP.
pub fn put(disk: &Path, name: &str, bytes: &[u8]) {
    let tmp = disk.with_file_name(name);
    std::fs::write(&tmp, bytes).unwrap();
    mtools(
        "mcopy",
        &[
            "-o",
            "-i",
            &esp(disk),
            tmp.to_str().unwrap(),
            &format!("::grub/{name}"),
        ],
    );
}

/// `grub/<name>` from the ESP.
pub fn get(disk: &Path, name: &str) -> Vec<u8> {
    let tmp = disk.with_file_name(format!("{name}.out"));
    mtools(
        "mcopy",
        &[
            "-o",
            "-n",
            "-i",
            &esp(disk),
            &format!("::grub/{name}"),
            tmp.to_str().unwrap(),
        ],
    );
    std::fs::read(tmp).unwrap()
}

/// The image installs slot a only; slot b gets the same root, so either boots a kernel
/// whose command line says which one GRUB chose.
pub fn copy_slot_a_to_b(disk: &Path) {
    use std::os::unix::fs::FileExt as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let table = cairn_formats::gpt::read(&mut f).unwrap();
    let (a, b) = (table.get("root-a").unwrap(), table.get("root-b").unwrap());
    let mut slot = vec![0; usize::try_from(a.size()).unwrap()];
    f.read_exact_at(&mut slot, a.offset()).unwrap();
    f.write_all_at(&slot, b.offset()).unwrap();
}
