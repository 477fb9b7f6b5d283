//! Compatibility corpus: every example Debian's `netplan.io` ships either parses, or is
//! refused with an error naming the unsupported key and its position. The counts are
//! recorded in docs/netplan.md; this test fails when they change, so the document stays true.

use std::path::PathBuf;

use cairn_netplan::schema::{LoadError, load_files};

/// Debian 12 installs them here; the path is that of newer packages.
const DIRS: [&str; 2] = [
    "/usr/share/doc/netplan/examples",
    "/usr/share/doc/netplan.io/examples",
];

/// (parsed, refused) as documented in docs/netplan.md (netplan.io 0.106, Debian 12).
const EXPECTED: (usize, usize) = (12, 17);

#[test]
fn netplan_examples_parse_or_are_refused_precisely() {
    let dir = DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .expect("netplan examples missing: install netplan.io (scripts/setup)");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() > 20,
        "only {} examples in {}",
        files.len(),
        dir.display()
    );
    let (mut parsed, mut refused) = (0, 0);
    for f in &files {
        match load_files(std::slice::from_ref(f)) {
            Ok(_) => {
                parsed += 1;
                println!("PARSED  {}", f.file_name().unwrap().to_string_lossy());
            }
            Err(LoadError::Invalid(e)) => {
                refused += 1;
                println!("REFUSED {}", e);
                assert!(
                    e.mark
                        .file
                        .ends_with(&*f.file_name().unwrap().to_string_lossy())
                        && e.mark.line > 0
                        && !e.path.is_empty(),
                    "imprecise error for {}: {e}",
                    f.display()
                );
                assert!(
                    e.message.contains("not supported")
                        || e.message.contains("is not defined")
                        || e.message.contains("requires"),
                    "refusal that does not say what is unsupported: {e}"
                );
            }
            Err(e) => panic!("{}: {e}", f.display()),
        }
    }
    println!(
        "corpus: {parsed} parsed, {refused} refused of {}",
        files.len()
    );
    assert_eq!(
        (parsed, refused),
        EXPECTED,
        "update docs/netplan.md and EXPECTED"
    );
}
