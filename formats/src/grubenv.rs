//! The GRUB environment block (`grubenv`) on the ESP: written whole by the image build,
//! read and edited in place by the node during A/B upgrades. Which variables cairn keeps
//! there and what GRUB does with them: image-build's `grub` module and `docs/images.md`.

use std::collections::BTreeMap;

/// The size of a block as `grub-editenv create` makes it.
const BLOCK_SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

/// Why a GRUB environment block cannot be read or edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubenvError {
    /// The block lacks GRUB's header line or has the wrong size.
    #[error("not a GRUB environment block ({0})")]
    Format(String),
    /// The edited variables do not fit in the block's size.
    #[error("the GRUB environment does not fit in {0} bytes")]
    Full(usize),
}

/// A GRUB environment block (1024 bytes, `#`-padded) holding `vars`.
pub fn new_block(vars: &BTreeMap<&str, &str>) -> Result<Vec<u8>, GrubenvError> {
    render(vars.iter().map(|(k, v)| (*k, *v)), BLOCK_SIZE)
}

/// The variables of a GRUB environment block (as `grub-editenv list` shows them).
pub fn parse(block: &[u8]) -> Result<BTreeMap<String, String>, GrubenvError> {
    let text = std::str::from_utf8(block).map_err(|_| GrubenvError::Format("not UTF-8".into()))?;
    let body = text
        .strip_prefix(HEADER)
        .ok_or_else(|| GrubenvError::Format("missing header line".into()))?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// `block` with `set` applied (an empty value keeps the variable, empty, as GRUB's
/// `set x=` + `save_env` does), at exactly the same size: GRUB's `save_env` writes into the
/// file's existing blocks, so the file must never grow, shrink or move.
pub fn edit(block: &[u8], set: &[(&str, &str)]) -> Result<Vec<u8>, GrubenvError> {
    let mut vars = parse(block)?;
    for (k, v) in set {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    render(
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        block.len(),
    )
}

/// The header, one `key=value` line per variable, `#` up to `size` bytes.
fn render<'a>(
    vars: impl Iterator<Item = (&'a str, &'a str)>,
    size: usize,
) -> Result<Vec<u8>, GrubenvError> {
    let mut text = String::from(HEADER);
    for (k, v) in vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    let mut bytes = text.into_bytes();
    if bytes.len() > size {
        return Err(GrubenvError::Full(size));
    }
    bytes.resize(size, b'#');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grubenv_edits_keep_the_size_and_round_trip() {
        let block = new_block(&BTreeMap::from([("cairn_slot", "a")])).unwrap();
        let edited = edit(&block, &[("cairn_try", "b"), ("cairn_tries", "1")]).unwrap();
        assert_eq!(edited.len(), 1024);
        let vars = parse(&edited).unwrap();
        assert_eq!(vars["cairn_slot"], "a");
        assert_eq!(vars["cairn_try"], "b");
        assert_eq!(vars["cairn_tries"], "1");
        assert!(parse(b"garbage").is_err());
        let big = "x".repeat(1100);
        assert_eq!(edit(&block, &[("v", &big)]), Err(GrubenvError::Full(1024)));
    }

    #[test]
    fn grubenv_is_a_padded_kilobyte() {
        let env = new_block(&BTreeMap::from([("cairn_slot", "a")])).unwrap();
        assert_eq!(env.len(), 1024);
        assert!(env.starts_with(b"# GRUB Environment Block\ncairn_slot=a\n#"));
    }
}
