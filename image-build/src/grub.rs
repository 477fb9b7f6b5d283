//! GRUB for the A/B disk: one `grub.cfg` and two environment copies (`grubenv`,
//! `grubenv.2`) on the ESP, read by both a UEFI GRUB (`EFI/BOOT/BOOTX64.EFI`) and a BIOS
//! GRUB (boot.img in the MBR, core.img in the gap before the first partition).
//!
//! The slot is chosen by GRUB environment variables (see `docs/images.md`):
//! - `cairn_slot` (`a`|`b`): the committed slot;
//! - `cairn_try` (`a`|`b`|empty): a slot being tried after an upgrade;
//! - `cairn_tries`: boots left for the tried slot. GRUB decrements it before each boot of the
//!   tried slot; when it reaches 0 without the node committing (setting `cairn_slot` to the
//!   tried slot and clearing `cairn_try`), GRUB clears `cairn_try`, sets
//!   `cairn_rolled_back` to the failed slot and boots the committed one again;
//! - `cairn_gen`, `cairn_check`: each copy's generation and check, so a copy torn by a power
//!   cut is not used (`cairn_formats::grubenv`).
//!
//! BIOS installation is done here rather than by `grub-install` because that tool needs a
//! block device; writing the image into a file needs the two patches `grub-bios-setup`
//! makes (GRUB's `util/setup.c`): the core.img sector in boot.img, and the blocklist of the
//! rest of core.img in its first sector.

use cairn_formats::gpt::MBR_CODE_LEN;

/// Label of the ESP's FAT filesystem; GRUB finds its config by it.
pub const ESP_LABEL: &str = "CAIRN-ESP";

/// Modules built into both GRUB images (no module loading from disk: one file to trust).
pub const MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "squash4",
    "ext2",
    "iso9660",
    "search",
    "search_label",
    "search_fs_file",
    "normal",
    "configfile",
    "linux",
    "loadenv",
    "test",
    "regexp",
    "echo",
    "serial",
    "terminal",
    "sleep",
    "true",
    "halt",
    "reboot",
];

/// Extra modules of the BIOS image.
pub const BIOS_MODULES: &[&str] = &["biosdisk"];

/// The config embedded in both images: find the ESP, then `normal` reads its grub.cfg.
pub fn embedded_config() -> String {
    format!("search --no-floppy --label {ESP_LABEL} --set=root\nset prefix=($root)/grub\n")
}

/// The environment files on the ESP's `grub/`: copy 1, then copy 2, the order every writer
/// follows (see `cairn_formats::grubenv`).
pub const GRUBENV_COPIES: [&str; 2] = ["grubenv", "grubenv.2"];

/// The variables `grub.cfg` loads from (and saves to) each copy; only these, so garbage in a
/// torn copy cannot set any other.
const ENV_VARS: &str = "cairn_slot cairn_try cairn_tries cairn_gen cairn_rolled_back cairn_check";

/// The ESP's `grub/grub.cfg`: pick the slot from the two checked environment copies, count
/// tries, boot the kernel and initrd stored inside the slot.
pub fn grub_cfg(kernel_args: &str) -> String {
    let [one, two] = GRUBENV_COPIES;
    let clear = ENV_VARS
        .split(' ')
        .map(|v| format!("  set {v}=\n"))
        .collect::<String>();
    format!(
        r#"# cairn A/B boot. Variables live in {one} and {two} next to this file; see docs/images.md.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
# A copy counts when its cairn_check repeats its slot:try:tries:gen (a write torn by a
# power cut leaves them apart); copy 1 first: every writer finishes it before copy 2.
# Console messages stay under 80 columns: GRUB's serial terminal wraps them.
set cairn_from=
set committed=
for copy in {one} {two}; do
  if [ -z "${{cairn_from}}" ]; then
{clear}    load_env -f ${{prefix}}/${{copy}} {ENV_VARS}
    if regexp '^[ab]$' "${{cairn_slot}}"; then
      if [ "${{cairn_check}}" = "${{cairn_slot}}:${{cairn_try}}:${{cairn_tries}}:${{cairn_gen}}" ]; then
        set cairn_from="${{copy}}"
      elif [ -z "${{committed}}" ]; then
        set committed="${{cairn_slot}}"
      fi
    fi
    if [ -z "${{cairn_from}}" ]; then echo "cairn: boot selection ${{copy}} is torn or unreadable"; fi
  fi
done
if [ -z "${{cairn_from}}" ]; then
  set cairn_try=
  if [ -n "${{committed}}" ]; then
    set cairn_slot="${{committed}}"
    echo "cairn: no boot selection checks out; booting committed slot ${{cairn_slot}}, no try"
  else
    set cairn_slot=a
    echo "cairn: boot selection unreadable; booting slot a"
  fi
fi
set boot_slot="${{cairn_slot}}"
if [ -n "${{cairn_try}}" ]; then
  if [ "${{cairn_tries}}" -gt 0 ]; then
    set boot_slot="${{cairn_try}}"
    if [ "${{cairn_tries}}" -gt 2 ]; then set cairn_tries=2
    elif [ "${{cairn_tries}}" -gt 1 ]; then set cairn_tries=1
    else set cairn_tries=0; fi
  else
    set cairn_rolled_back="${{cairn_try}}"
    set cairn_try=
  fi
  # Both copies get the whole selection, copy 1 first (a torn or stale copy is repaired;
  # GRUB cannot fsync, its writes go out in order).
  set cairn_check="${{cairn_slot}}:${{cairn_try}}:${{cairn_tries}}:${{cairn_gen}}"
  save_env -f ${{prefix}}/{one} {ENV_VARS}
  save_env -f ${{prefix}}/{two} {ENV_VARS}
fi
if [ -n "${{cairn_from}}" ]; then echo "cairn: booting slot ${{boot_slot}} (selection from ${{cairn_from}})"; fi
regexp --set=1:disk '^([^,]+),' "${{root}}"
if [ "${{boot_slot}}" = b ]; then set slot_part=gpt3; else set slot_part=gpt2; fi
# A slot whose kernel GRUB cannot load restarts the machine, so the boot counter above runs
# out and the committed slot boots; a kernel that panics does the same through panic=.
menuentry "cairn (slot ${{boot_slot}})" {{
  if linux (${{disk}},${{slot_part}})/boot/vmlinuz root=PARTLABEL=root-${{boot_slot}} cairn.slot=${{boot_slot}} ro panic=10 {kernel_args}; then
    initrd (${{disk}},${{slot_part}})/boot/initrd.img
  else
    echo "cairn: slot ${{boot_slot}} has no loadable kernel; restarting"
    sleep 2
    reboot
  fi
}}
"#
    )
}

/// The ISO's `boot/grub/grub.cfg`: boot the install environment from the CD.
pub fn iso_cfg(version: &str, kernel_args: &str) -> String {
    format!(
        r#"serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=2
menuentry "Install cairn {version}" {{
  linux /boot/vmlinuz {kernel_args} cairn.install=cdrom
  initrd /boot/initrd.img
}}
"#
    )
}

// Offsets in GRUB's boot.img and diskboot.img (include/grub/i386/pc/boot.h).
const KERNEL_SECTOR: usize = 0x5c;
const DRIVE_CHECK: usize = 0x66;

/// Patches GRUB's boot.img (first 440 bytes used) and core.img for a core.img stored at
/// `core_lba` in consecutive sectors. Returns (MBR boot code, patched core.img).
pub fn bios_boot_code(
    boot_img: &[u8],
    core_img: &[u8],
    core_lba: u64,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    if boot_img.len() != 512 {
        return Err(format!(
            "boot.img is {} bytes, expected 512",
            boot_img.len()
        ));
    }
    if core_img.len() < 1024 {
        return Err("core.img is too small".into());
    }
    let mut mbr = boot_img[..MBR_CODE_LEN].to_vec();
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    // A hard disk: skip the check for buggy BIOSes passing a floppy drive number
    // (grub-bios-setup does the same for non-floppy targets).
    mbr[DRIVE_CHECK] = 0x90;
    mbr[DRIVE_CHECK + 1] = 0x90;
    let mut core = core_img.to_vec();
    core.resize(core.len().next_multiple_of(512), 0);
    let sectors = core.len() / 512;
    // The blocklist sits at the end of core.img's first sector (diskboot.img): start (u64),
    // length (u16), segment (u16); the entry below it, zeroed, terminates the list.
    let bl = 512 - 12;
    core[bl..bl + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[bl + 8..bl + 10].copy_from_slice(
        &u16::try_from(sectors - 1)
            .map_err(|_| "core.img too big")?
            .to_le_bytes(),
    );
    core[bl + 10..bl + 12].copy_from_slice(&0x0820u16.to_le_bytes());
    core[bl - 12..bl].fill(0);
    Ok((mbr, core))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_reads_copy_1_first_and_counts_down_into_copy_1_then_copy_2() {
        let cfg = grub_cfg("console=ttyS0");
        assert!(cfg.contains("for copy in grubenv grubenv.2; do"), "{cfg}");
        let save1 = cfg
            .find("save_env -f ${prefix}/grubenv cairn_slot")
            .unwrap();
        let save2 = cfg
            .find("save_env -f ${prefix}/grubenv.2 cairn_slot")
            .unwrap();
        assert!(save1 < save2, "copy 1 is written first");
        assert!(cfg.contains(&format!("save_env -f ${{prefix}}/grubenv.2 {ENV_VARS}\n")));
        // Every console message fits GRUB's 80-column serial terminal, each variable
        // counted as long as the longest value it takes (`grubenv.2`).
        for (_, msg) in cfg.lines().filter_map(|l| l.split_once("echo \"")) {
            let (mut len, mut rest) = (0, msg);
            while let Some((before, after)) = rest.split_once("${") {
                len += before.len() + "grubenv.2".len();
                rest = after.split_once('}').unwrap().1;
            }
            assert!(len + rest.len() < 80, "{msg:?}");
        }
    }

    #[test]
    fn bios_patches_point_at_the_core_image() {
        let boot = vec![0u8; 512];
        let core = vec![0u8; 3000];
        let (mbr, core) = bios_boot_code(&boot, &core, 64).unwrap();
        assert_eq!(mbr.len(), 440);
        assert_eq!(u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()), 64);
        assert_eq!(core.len(), 3072);
        assert_eq!(u64::from_le_bytes(core[500..508].try_into().unwrap()), 65);
        assert_eq!(u16::from_le_bytes(core[508..510].try_into().unwrap()), 5);
    }
}
