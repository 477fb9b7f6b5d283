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
