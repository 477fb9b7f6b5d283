//! The GRUB environment blocks (`grubenv`, `grubenv.2`) on the ESP that hold the A/B boot
//! selection: written whole by the image build, read and rewritten by the node during A/B
//! upgrades and by GRUB's boot counter. Which variables cairn keeps there and what GRUB does
//! with them: image-build's `grub` module and `docs/images.md`.
//!
//! Two copies, each checked: every copy repeats its selection in `cairn_check`
//! (`<slot>:<try>:<tries>:<gen>`), and the check line sits in the block's second sector
//! while the selection sits in its first, so a write torn at any sector boundary leaves a
//! copy whose check does not match. Writers update copy 1, then copy 2 (the node with an
//! fsync between them), so whenever copy 1 is checked it is the newer one; readers (GRUB's
//! `grub.cfg` and [`select`]) take copy 1 if it is checked, else copy 2, else the committed
//! slot either one still names, without its try.

use std::collections::BTreeMap;

/// The size of a block as `grub-editenv create` makes it.
const BLOCK_SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

/// The committed slot, `a` or `b`.
pub const SLOT: &str = "cairn_slot";
/// The slot being tried, or empty.
pub const TRY: &str = "cairn_try";
/// Boots left for the tried slot.
pub const TRIES: &str = "cairn_tries";
/// The generation: one more than the highest of both copies at each node write.
pub const GEN: &str = "cairn_gen";
/// `<slot>:<try>:<tries>:<gen>` of the same copy.
pub const CHECK: &str = "cairn_check";

/// Why a GRUB environment block cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubenvError {
    /// The block lacks GRUB's header line or has the wrong size.
    #[error("not a GRUB environment block ({0})")]
    Format(String),
    /// The variables do not fit in the block's size.
    #[error("the GRUB environment does not fit in {0} bytes")]
    Full(usize),
    /// No copy passes its check or names a committed slot.
    #[error(
        "no GRUB environment copy names a committed slot ({0}); GRUB boots slot a: rewrite \
         both copies with a fresh block (docs/images.md, \"A/B slot selection\")"
    )]
    Unreadable(String),
}

/// A new, checked GRUB environment block (1024 bytes) holding `vars`, generation 1.
pub fn new_block(vars: &BTreeMap<&str, &str>) -> Result<Vec<u8>, GrubenvError> {
    let vars = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    render(vars, 1, BLOCK_SIZE)
}

/// The variables of a GRUB environment block (as `grub-editenv list` shows them). Like
/// GRUB's reader, bytes after the header are taken as they come: a torn second sector of
/// garbage does not hide the variables of the first.
pub fn parse(block: &[u8]) -> Result<BTreeMap<String, String>, GrubenvError> {
    let body = block
        .strip_prefix(HEADER.as_bytes())
        .ok_or_else(|| GrubenvError::Format("missing header line".into()))?;
    Ok(String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// What `vars`' check must say.
fn check_value(vars: &BTreeMap<String, String>) -> String {
    let get = |k| vars.get(k).map_or("", String::as_str);
    format!("{}:{}:{}:{}", get(SLOT), get(TRY), get(TRIES), get(GEN))
}

/// Names a slot GRUB can boot.
fn names_slot(vars: &BTreeMap<String, String>) -> bool {
    matches!(vars.get(SLOT).map(String::as_str), Some("a" | "b"))
}

/// Which copy a reader took, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Copy 1 or 2, its check matching (or, on a one-copy disk, copy 1 as it parsed).
    Checked(u8),
    /// No copy passed its check; the committed slot of this copy, its try dropped (GRUB
    /// boots that slot and tries nothing).
    Committed(u8),
}

/// The boot selection the readers agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The variables (of the copy, or only `cairn_slot` for [`Source::Committed`]).
    pub vars: BTreeMap<String, String>,
    /// Where they came from.
    pub source: Source,
}

/// The selection GRUB boots from `copy1` and, on a two-copy disk, `copy2` (`None`: an older
/// disk with one `grubenv`, whose `grub.cfg` knows no check, so copy 1 counts as it parses).
/// A missing file is an empty slice.
pub fn select(copy1: &[u8], copy2: Option<&[u8]>) -> Result<Selection, GrubenvError> {
    let Some(copy2) = copy2 else {
        let vars = parse(copy1).map_err(|e| GrubenvError::Unreadable(format!("grubenv: {e}")))?;
        return Ok(Selection {
            vars,
            source: Source::Checked(1),
        });
    };
    let parsed = [parse(copy1), parse(copy2)];
    let is_checked =
        |v: &BTreeMap<String, String>| names_slot(v) && v.get(CHECK) == Some(&check_value(v));
    for (n, p) in (1..).zip(&parsed) {
        if let Ok(vars) = p
            && is_checked(vars)
        {
            return Ok(Selection {
                vars: vars.clone(),
                source: Source::Checked(n),
            });
        }
    }
    for (n, p) in (1..).zip(&parsed) {
        if let Ok(vars) = p
            && names_slot(vars)
        {
            return Ok(Selection {
                vars: BTreeMap::from([(SLOT.to_owned(), vars[SLOT].clone())]),
                source: Source::Committed(n),
            });
        }
    }
    let why = |p: &Result<BTreeMap<String, String>, GrubenvError>| match p {
        Ok(_) => "no slot".to_owned(),
        Err(e) => e.to_string(),
    };
    Err(GrubenvError::Unreadable(format!(
        "grubenv: {}; grubenv.2: {}",
        why(&parsed[0]),
        why(&parsed[1])
    )))
}

/// The block every copy gets next (each at its own `size`): the selection with `set` applied
/// (an empty value keeps the variable, empty, as GRUB's `set x=` + `save_env` does), a
/// generation above both copies' and the check. `copies` are the blocks as read (garbage
/// included: a torn copy's generation may be the newest one written).
pub fn next_block(
    selection: &Selection,
    set: &[(&str, &str)],
    copies: &[&[u8]],
    size: usize,
) -> Result<Vec<u8>, GrubenvError> {
    let mut vars = selection.vars.clone();
    for (k, v) in set {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    let generation = copies
        .iter()
        .filter_map(|c| parse(c).ok()?.get(GEN)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    render(vars, generation, size)
}

/// The header and one `key=value` line per variable in the first half of `size` bytes, then
/// `#` up to a newline that ends the first half, the check line, `#` up to `size` bytes
/// (GRUB's `save_env` finds its free space in that trailing `#`).
fn render(
    mut vars: BTreeMap<String, String>,
    generation: u64,
    size: usize,
) -> Result<Vec<u8>, GrubenvError> {
    vars.insert(GEN.to_owned(), generation.to_string());
    let check = check_value(&vars);
    vars.remove(CHECK);
    let mut text = String::from(HEADER);
    for (k, v) in &vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    let half = size / 2;
    // At least one `#` before the newline: GRUB reads an empty line as a variable's name.
    if text.len() + 2 > half {
        return Err(GrubenvError::Full(size));
    }
    let mut bytes = text.into_bytes();
    bytes.resize(half - 1, b'#');
    bytes.push(b'\n');
    bytes.extend_from_slice(format!("{CHECK}={check}\n").as_bytes());
    if bytes.len() >= size {
        return Err(GrubenvError::Full(size));
    }
    bytes.resize(size, b'#');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(pairs: &[(&str, &str)]) -> Vec<u8> {
        new_block(&pairs.iter().copied().collect()).unwrap()
    }

    fn tear(mut block: Vec<u8>) -> Vec<u8> {
        for (i, b) in block[512..].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        block
    }

    #[test]
    fn a_new_block_is_a_checked_kilobyte_with_the_check_in_its_second_sector() {
        let env = block(&[(SLOT, "a")]);
        assert_eq!(env.len(), 1024);
        assert!(env.starts_with(b"# GRUB Environment Block\ncairn_gen=1\ncairn_slot=a\n#"));
        assert_eq!(env[511], b'\n');
        assert!(env[512..].starts_with(b"cairn_check=a:::1\n#"));
        assert!(env.ends_with(b"#"));
        let vars = parse(&env).unwrap();
        assert_eq!(vars[CHECK], "a:::1");
        assert_eq!(select(&env, Some(&env)).unwrap().source, Source::Checked(1));
    }

    #[test]
    fn the_reader_takes_copy_1_then_copy_2_then_a_committed_slot() {
        let armed = block(&[(SLOT, "a"), (TRY, "b"), (TRIES, "2")]);
        let committed_b = block(&[(SLOT, "b")]);
        let torn = tear(armed.clone());
        /// Copy 1, copy 2, the expected source, slot and try.
        type Case<'a> = (&'a [u8], &'a [u8], Source, &'a str, Option<&'a str>);
        let cases: [Case; 5] = [
            (&armed, &committed_b, Source::Checked(1), "a", Some("b")),
            (&torn, &committed_b, Source::Checked(2), "b", None),
            (b"", &armed, Source::Checked(2), "a", Some("b")),
            // Copy 1's second sector lost: its selection still names slot a, but its try
            // is not trusted.
            (
                &torn,
                &tear(committed_b.clone()),
                Source::Committed(1),
                "a",
                None,
            ),
            (
                b"garbage",
                &tear(committed_b.clone()),
                Source::Committed(2),
                "b",
                None,
            ),
        ];
        for (i, (one, two, source, slot, try_)) in cases.into_iter().enumerate() {
            let s = select(one, Some(two)).unwrap();
            assert_eq!(s.source, source, "case {i}");
            assert_eq!(s.vars[SLOT], slot, "case {i}");
            assert_eq!(s.vars.get(TRY).map(String::as_str), try_, "case {i}");
        }
        let err = select(b"", Some(&vec![0xff; 1024])).unwrap_err();
        assert!(matches!(err, GrubenvError::Unreadable(_)), "{err}");
    }

    #[test]
    fn a_one_copy_disk_reads_its_grubenv_without_a_check() {
        // What the previous image build wrote and its GRUB decremented: no gen, no check.
        let mut old =
            b"# GRUB Environment Block\ncairn_slot=a\ncairn_try=b\ncairn_tries=1\n".to_vec();
        old.resize(1024, b'#');
        let s = select(&old, None).unwrap();
        assert_eq!((s.source, s.vars[TRY].as_str()), (Source::Checked(1), "b"));
        assert!(select(b"junk", None).is_err());
    }

    #[test]
    fn the_next_block_has_a_higher_generation_and_a_matching_check() {
        let one = block(&[(SLOT, "a")]);
        let mut two = block(&[(SLOT, "a")]);
        // A copy 2 from a later write than copy 1's (copy 1 since torn).
        two = next_block(&select(&two, None).unwrap(), &[], &[&two], 1024).unwrap();
        let torn = tear(one);
        let s = select(&torn, Some(&two)).unwrap();
        let next = next_block(&s, &[(TRY, "b"), (TRIES, "2")], &[&torn, &two], 1024).unwrap();
        assert_eq!(next.len(), 1024);
        let vars = parse(&next).unwrap();
        assert_eq!(vars[GEN], "3");
        assert_eq!(vars[CHECK], "a:b:2:3");
        assert_eq!(
            select(&next, Some(&torn)).unwrap().source,
            Source::Checked(1)
        );
        let big = "x".repeat(600);
        assert_eq!(
            next_block(&s, &[("v", &big)], &[], 1024),
            Err(GrubenvError::Full(1024))
        );
    }
}
