//! The node's GRUB environment writer on real files, through a double that records each
//! write and sync and can cut the power at any of them (tearing a write: its first sector
//! lands, the rest is garbage).

use std::collections::BTreeMap;
use std::sync::Mutex;

use cairn_formats::grubenv::{self, Source};

use super::*;

struct Recorder {
    ops: Mutex<Vec<String>>,
    /// The op (counted from 0) during which the power goes.
    cut_at: Option<usize>,
}

impl Recorder {
    fn new(cut_at: Option<usize>) -> Self {
        Self {
            ops: Mutex::default(),
            cut_at,
        }
    }

    /// Records `op`; false once the power is gone (from the cut on).
    fn power(&self, op: String) -> bool {
        let mut ops = self.ops.lock().unwrap();
        ops.push(op);
        self.cut_at.is_none_or(|cut| ops.len() <= cut)
    }

    fn ops(&self) -> Vec<String> {
        self.ops.lock().unwrap().clone()
    }
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn power_cut() -> std::io::Error {
    std::io::Error::other("power cut")
}

impl EnvFiles for Recorder {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        Disk.read(path)
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if self.power(format!("write {}", name(path))) {
            return Disk.write(path, bytes);
        }
        if self.ops().len() == self.cut_at.unwrap() + 1 {
            let mut torn = bytes.to_vec();
            torn[512..].fill(0xa5);
            Disk.write(path, &torn)?;
        }
        Err(power_cut())
    }

    fn sync(&self, path: &Path) -> std::io::Result<()> {
        if self.power(format!("sync {}", name(path))) {
            Disk.sync(path)
        } else {
            Err(power_cut())
        }
    }
}

/// An ESP's `grub/` as the image build makes it (`two`: with `grubenv.2`).
fn esp(two: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let block = grubenv::new_block(&BTreeMap::from([(grubenv::SLOT, "a")])).unwrap();
    std::fs::write(&path, &block).unwrap();
    if two {
        std::fs::write(dir.path().join("grubenv.2"), &block).unwrap();
    }
    (dir, path)
}

fn grub(path: &Path, cut_at: Option<usize>) -> Grub<Recorder> {
    Grub {
        path: path.to_owned(),
        files: Recorder::new(cut_at),
    }
}

/// What GRUB would boot from the files: (source, committed slot, tried slot).
fn boots(path: &Path) -> (Source, String, String) {
    let one = std::fs::read(path).unwrap();
    let two = std::fs::read(path.with_file_name("grubenv.2")).ok();
    let s = grubenv::select(&one, two.as_deref()).unwrap();
    let get = |k| s.vars.get(k).cloned().unwrap_or_default();
    (s.source, get(grubenv::SLOT), get(grubenv::TRY))
}

fn generation(path: &Path) -> u64 {
    grubenv::parse(&std::fs::read(path).unwrap()).unwrap()[grubenv::GEN]
        .parse()
        .unwrap()
}

#[test]
fn a_write_goes_to_copy_1_synced_then_to_copy_2_synced() {
    let (_dir, path) = esp(true);
    let g = grub(&path, None);
    g.arm(Slot::B, 2).unwrap();
    assert_eq!(
        g.files.ops(),
        [
            "write grubenv",
            "sync grubenv",
            "write grubenv.2",
            "sync grubenv.2"
        ]
    );
    let one = std::fs::read(&path).unwrap();
    assert_eq!(
        one,
        std::fs::read(path.with_file_name("grubenv.2")).unwrap()
    );
    assert_eq!(one.len(), 1024);
    let vars = grubenv::parse(&one).unwrap();
    assert_eq!(vars[grubenv::CHECK], "a:b:2:2");
    assert_eq!(boots(&path), (Source::Checked(1), "a".into(), "b".into()));
}

#[test]
fn a_power_cut_at_any_step_boots_the_old_or_the_new_selection_and_the_next_write_repairs_it() {
    // (op the power goes in, what GRUB boots afterwards)
    let cases = [
        (0, Source::Checked(2), ""), // copy 1 torn: copy 2 still has the old selection
        (1, Source::Checked(1), "b"), // copy 1 written, not known to be synced
        (2, Source::Checked(1), "b"), // copy 2 torn
        (3, Source::Checked(1), "b"),
    ];
    for (cut, source, tried) in cases {
        let (_dir, path) = esp(true);
        let g = grub(&path, Some(cut));
        assert!(g.arm(Slot::B, 2).is_err(), "cut at {cut}");
        assert_eq!(
            boots(&path),
            (source, "a".into(), tried.into()),
            "cut at {cut}"
        );
        let before = generation(&path).max(generation(&path.with_file_name("grubenv.2")));
        let g = grub(&path, None);
        g.arm(Slot::B, 2).unwrap();
        let one = std::fs::read(&path).unwrap();
        assert_eq!(
            one,
            std::fs::read(path.with_file_name("grubenv.2")).unwrap(),
            "cut at {cut}: both copies rewritten"
        );
        assert!(generation(&path) > before, "cut at {cut}: generation grows");
        assert_eq!(boots(&path), (Source::Checked(1), "a".into(), "b".into()));
    }
}

#[test]
fn the_generation_grows_with_every_write() {
    let (_dir, path) = esp(true);
    let g = Grub::new(path.clone());
    let mut seen = vec![generation(&path)];
    g.arm(Slot::B, 2).unwrap();
    seen.push(generation(&path));
    g.commit(Slot::B).unwrap();
    seen.push(generation(&path));
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(
        boots(&path),
        (Source::Checked(1), "b".into(), String::new())
    );
}

#[test]
fn a_one_copy_disk_is_written_in_place_without_a_second_copy() {
    // An older build's block, its try counted down by its GRUB (no generation, no check).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let mut old = b"# GRUB Environment Block\ncairn_slot=a\ncairn_try=b\ncairn_tries=1\n".to_vec();
    old.resize(1024, b'#');
    std::fs::write(&path, &old).unwrap();
    let g = grub(&path, None);
    assert_eq!(g.rolled_back(), None);
    g.commit(Slot::B).unwrap();
    assert_eq!(g.files.ops(), ["write grubenv", "sync grubenv"]);
    assert!(!path.with_file_name("grubenv.2").exists());
    let vars = grubenv::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        (vars["cairn_slot"].as_str(), vars["cairn_try"].as_str()),
        ("b", "")
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
}

#[test]
fn unreadable_copies_refuse_the_upgrade_and_say_what_to_do() {
    let (_dir, path) = esp(true);
    std::fs::write(&path, vec![0u8; 1024]).unwrap();
    std::fs::write(
        path.with_file_name("grubenv.2"),
        b"# GRUB Environment Block\nx=1\n",
    )
    .unwrap();
    let g = grub(&path, None);
    let err = g.check().unwrap_err();
    assert!(
        err.contains("no GRUB environment copy names a committed slot"),
        "{err}"
    );
    assert!(err.contains("docs/images.md"), "{err}");
    assert!(g.arm(Slot::B, 2).is_err());
    assert!(g.files.ops().is_empty(), "nothing written");
    let (_dir, path) = esp(false);
    std::fs::remove_file(&path).unwrap();
    let err = Grub::new(path).check().unwrap_err();
    assert!(err.contains("is the ESP mounted"), "{err}");
}

#[test]
fn a_rollback_recorded_in_copy_2_is_seen_when_copy_1_is_torn() {
    let (_dir, path) = esp(true);
    Grub::new(path.clone()).arm(Slot::B, 2).unwrap();
    let mut one = std::fs::read(&path).unwrap();
    one[512..].fill(0);
    std::fs::write(&path, &one).unwrap();
    // GRUB's rollback, written into copy 2 only (copy 1 was torn, its save_env failed).
    let two = path.with_file_name("grubenv.2");
    let s = grubenv::select(&std::fs::read(&two).unwrap(), None).unwrap();
    let block = grubenv::next_block(
        &s,
        &[("cairn_try", ""), ("cairn_rolled_back", "b")],
        &[],
        1024,
    )
    .unwrap();
    std::fs::write(&two, block).unwrap();
    assert_eq!(Grub::new(path).rolled_back(), Some(Slot::B));
}
