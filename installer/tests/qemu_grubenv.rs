//! GRUB's boot selection from the two checked environment copies, in QEMU (TCG, BIOS): the
//! minimal image's real disk with its copies torn or stale as a power cut leaves them, booted
//! until the kernel prints the command line GRUB gave it (`cairn.slot=`), then the copies
//! are read back from the ESP.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_formats::grubenv::{self, Source};
use cairn_vm_harness::qemu::VmBuilder;
use common::*;

/// From power-on to the kernel's command line under TCG: seconds; generous for a shared box.
const LIMIT: Duration = Duration::from_secs(240);

/// A checked block committing `slot`, generation 1.
fn committed(slot: &str) -> Vec<u8> {
    grubenv::new_block(&BTreeMap::from([(grubenv::SLOT, slot)])).unwrap()
}

/// `block`'s second sector replaced by garbage, as a write torn after its first sector.
fn torn(mut block: Vec<u8>) -> Vec<u8> {
    for (i, b) in block[512..].iter_mut().enumerate() {
        *b = (i * 131 % 256) as u8;
    }
    block
}

/// The firmware GRUB runs on: both read the same `grub.cfg` and copies, GRUB's disk
/// drivers (BIOS int 13h, UEFI block I/O) differ, and `save_env` writes through them.
#[derive(Clone, Copy)]
enum Firmware {
    Bios,
    Uefi,
}

/// Boots a copy of the minimal image's disk with these copies until the kernel shows its
/// command line; returns the serial console and the disk (for reading the copies back).
fn boot(dir: &Path, firmware: Firmware, copy1: &[u8], copy2: &[u8]) -> (String, PathBuf) {
    let disk = dir.join("disk.raw");
    std::fs::copy(minimal_image().join("disk.raw"), &disk).unwrap();
    copy_slot_a_to_b(&disk);
    put(&disk, "grubenv", copy1);
    put(&disk, "grubenv.2", copy2);
    let started = Instant::now();
    let mut vm = VmBuilder::new()
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()));
    if let Firmware::Uefi = firmware {
        let vars = dir.join("OVMF_VARS_4M.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .expect("OVMF is needed: apt-get install ovmf");
        vm = vm
            .arg("-machine")
            .arg("q35")
            .arg("-drive")
            .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut vm = vm.spawn().unwrap();
    vm.wait_for_serial("Command line:", LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // The rest of the kernel's line.
    cairn_test_support::poll("the kernel command line", Duration::from_secs(10), || {
        let serial = vm.serial();
        let line = serial.split("Command line:").nth(1)?;
        line.contains('\n').then_some(())
    });
    let serial = vm.serial();
    drop(vm);
    eprintln!(
        "boot to GRUB's kernel command line: {:?}",
        started.elapsed()
    );
    (serial, disk)
}

fn booted_slot(serial: &str) -> &str {
    let line = serial
        .split("Command line:")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.slot="))
        .unwrap_or_else(|| panic!("no cairn.slot= in {line:?}"))
}

#[test]
fn the_built_esp_carries_two_identical_checked_copies_committing_slot_a() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::copy(minimal_image().join("disk.raw"), &disk).unwrap();
    let (one, two) = (get(&disk, "grubenv"), get(&disk, "grubenv.2"));
    assert_eq!(one, two);
    assert_eq!(one, committed("a"));
    assert_eq!(
        grubenv::select(&one, Some(&two)).unwrap().source,
        Source::Checked(1)
    );
}

#[test]
fn a_torn_copy_1_boots_the_slot_copy_2_commits() {
    let dir = tempfile::tempdir().unwrap();
    // Copy 1 was being rewritten (to commit a) when the power went.
    let (serial, disk) = boot(
        dir.path(),
        Firmware::Bios,
        &torn(committed("a")),
        &committed("b"),
    );
    assert_eq!(booted_slot(&serial), "b", "{serial}");
    assert!(
        serial.contains("cairn: boot selection grubenv is torn or unreadable"),
        "{serial}"
    );
    assert!(
        serial.contains("cairn: booting slot b (selection from grubenv.2)"),
        "{serial}"
    );
    // Nothing to count: GRUB leaves both copies as they were.
    assert_eq!(get(&disk, "grubenv.2"), committed("b"));
}

fn armed_copy_1_stale_copy_2(firmware: Firmware) {
    let dir = tempfile::tempdir().unwrap();
    let stale = committed("a");
    let armed = grubenv::next_block(
        &grubenv::select(&stale, None).unwrap(),
        &[(grubenv::TRY, "b"), (grubenv::TRIES, "2")],
        &[&stale],
        1024,
    )
    .unwrap();
    let (serial, disk) = boot(dir.path(), firmware, &armed, &stale);
    assert_eq!(booted_slot(&serial), "b", "{serial}");
    let (one, two) = (get(&disk, "grubenv"), get(&disk, "grubenv.2"));
    for (name, copy) in [("grubenv", &one), ("grubenv.2", &two)] {
        let vars = grubenv::parse(copy).unwrap();
        assert_eq!(vars[grubenv::TRIES], "1", "{name} counted down");
        assert_eq!(vars[grubenv::CHECK], "a:b:1:2", "{name} checked");
    }
    let s = grubenv::select(&one, Some(&two)).unwrap();
    assert_eq!(s.source, Source::Checked(1));
    assert_eq!(
        grubenv::select(&[], Some(&two)).unwrap().source,
        Source::Checked(2)
    );
}

#[test]
fn an_armed_copy_1_with_a_stale_copy_2_tries_and_counts_down_in_both() {
    armed_copy_1_stale_copy_2(Firmware::Bios);
}

#[test]
fn under_uefi_an_armed_copy_1_with_a_stale_copy_2_tries_and_counts_down_in_both() {
    armed_copy_1_stale_copy_2(Firmware::Uefi);
}

#[test]
fn with_no_copy_checked_the_committed_slot_boots_without_its_try() {
    let dir = tempfile::tempdir().unwrap();
    let armed = grubenv::new_block(&BTreeMap::from([
        (grubenv::SLOT, "b"),
        (grubenv::TRY, "a"),
        (grubenv::TRIES, "2"),
    ]))
    .unwrap();
    let garbage = torn(vec![0; 1024]);
    let (serial, disk) = boot(dir.path(), Firmware::Bios, &torn(armed.clone()), &garbage);
    assert_eq!(booted_slot(&serial), "b", "{serial}");
    assert!(
        serial.contains("cairn: no boot selection checks out; booting committed slot b, no try"),
        "{serial}"
    );
    assert_eq!(get(&disk, "grubenv"), torn(armed), "GRUB wrote nothing");
}

#[test]
fn both_copies_garbage_boot_slot_a_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let garbage: Vec<u8> = (0..1024u32).map(|i| (i * 131 % 256) as u8).collect();
    let (serial, _) = boot(dir.path(), Firmware::Bios, &garbage, &garbage);
    assert_eq!(booted_slot(&serial), "a", "{serial}");
    assert!(
        serial.contains("cairn: boot selection unreadable; booting slot a"),
        "{serial}"
    );
}
