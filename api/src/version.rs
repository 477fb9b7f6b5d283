//! The one version order of cairn: OS releases (`2026.11.2`, `1.2.0-rc1`) on the node and
//! the hub, BMC and component firmware (`6.10.00.00`, `2.81.81.81`, `1.10a`) in the
//! installer's quirks and firmware plans.
//!
//! On strict semver versions [`compare`] is semver precedence (semver.org, item 11): release
//! parts numerically, a pre-release before its release (`1.2.0-rc1 < 1.2.0`), pre-release
//! identifiers numerically when both are numbers (`rc.2 < rc.10`), numbers before words,
//! build metadata ignored. It extends that order to what is not strict semver, because both
//! kinds occur: any number of release parts (`2026.11.2.1`), missing parts as zero
//! (`1.2 == 1.2.0`), `_` and spaces as part separators (firmware strings), and a part with
//! a suffix (`10a`) compared by its number, then by its suffix as text.
//!
//! Why not the `semver` crate: it parses strict semver only and refuses `2026.11.2.1`,
//! `1.2`, `6.10.00.00` and `1.10a`, so it would need a fallback order for those anyway; two
//! orders side by side are not transitive across the boundary (a strict version could sort
//! before a loose one that sorts before it by the other order). One extended order is.

use std::cmp::Ordering;

/// Compares two versions (see the [module](self) for the order). Total and pure: every pair
/// of strings compares, versions that differ only in trailing zero parts or build metadata
/// are equal.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (Version::parse(a), Version::parse(b));
    let width = a.release.len().max(b.release.len());
    (0..width)
        .map(|i| {
            let (x, y) = (a.release.get(i), b.release.get(i));
            compare_release_part(x.copied().unwrap_or("0"), y.copied().unwrap_or("0"))
        })
        .find(|o| o.is_ne())
        .unwrap_or_else(|| match (a.pre, b.pre) {
            (None, None) => Ordering::Equal,
            // A pre-release comes before its release.
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => compare_pre_release(x, y),
        })
}

/// A version split into release parts and pre-release, build metadata dropped.
struct Version<'a> {
    release: Vec<&'a str>,
    pre: Option<&'a str>,
}

impl<'a> Version<'a> {
    fn parse(text: &'a str) -> Self {
        let text = text.split_once('+').map_or(text, |(v, _build)| v);
        let (release, pre) = match text.split_once('-') {
            Some((r, p)) => (r, Some(p)),
            None => (text, None),
        };
        Version {
            release: release
                .split(['.', '_', ' '])
                .filter(|p| !p.is_empty())
                .collect(),
            pre,
        }
    }
}

/// Compares two digit strings by value, of any length (no overflow).
fn compare_digits(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// `10a` is 10 then `a`; a part without leading digits sorts after every numbered one.
fn compare_release_part(a: &str, b: &str) -> Ordering {
    let lead = |p: &str| p.len() - p.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (na, nb) = (lead(a), lead(b));
    match (na > 0, nb > 0) {
        (true, true) => compare_digits(&a[..na], &b[..nb]).then_with(|| a[na..].cmp(&b[nb..])),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

/// Semver's pre-release order: identifier by identifier, numbers by value and before words,
/// words as ASCII text, and a longer list after its prefix.
fn compare_pre_release(a: &str, b: &str) -> Ordering {
    let numeric = |id: &str| !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit());
    let (mut xs, mut ys) = (a.split('.'), b.split('.'));
    loop {
        let ord = match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match (numeric(x), numeric(y)) {
                (true, true) => compare_digits(x, y),
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => x.cmp(y),
            },
        };
        if ord.is_ne() {
            return ord;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::{Equal, Greater, Less};

    /// Each list is in ascending order; every pair must compare by position.
    fn ascending(list: &[&str]) {
        for (i, a) in list.iter().enumerate() {
            for (j, b) in list.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn semver_precedence_as_in_the_specification() {
        // semver.org, item 11.
        ascending(&[
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "2.0.0",
            "2.1.0",
            "2.1.1",
        ]);
        assert_eq!(compare("1.0.0+build.5", "1.0.0"), Equal);
    }

    #[test]
    fn a_release_candidate_comes_before_its_release() {
        assert_eq!(compare("1.2.0-rc1", "1.2.0"), Less);
        assert_eq!(compare("1.2.0", "1.2.0-rc1"), Greater);
        assert_eq!(compare("1.2.0-rc.2", "1.2.0-rc.10"), Less);
        assert_eq!(compare("1.2.0-rc1", "1.1.9"), Greater);
    }

    #[test]
    fn cairn_releases_compare_numerically_by_part() {
        // From the node's former comparison.
        assert_eq!(compare("2026.11.10", "2026.11.9"), Greater);
        assert_eq!(compare("2026.1", "2026.1.1"), Less);
        assert_eq!(compare("1.2.0", "1.2.0"), Equal);
        assert_eq!(compare("1.2-rc1", "1.2-rc2"), Less);
        // Four parts.
        ascending(&["2026.11.2", "2026.11.2.1", "2026.11.2.10", "2026.11.3"]);
        assert_eq!(compare("1.2", "1.2.0"), Equal);
        assert_eq!(compare("1.2.0.0", "1.2"), Equal);
    }

    #[test]
    fn firmware_versions_compare_numerically_by_part() {
        // From the quirks table's former comparison.
        assert_eq!(compare("6.10.00.00", "6.00.00.00"), Greater);
        assert_eq!(compare("5.10.50.00", "6.00.00.00"), Less);
        assert_eq!(compare("10.0", "9.9"), Greater);
        assert_eq!(compare("1.0", "1.0.0"), Equal);
        // BMC firmware strings seen in the field.
        ascending(&[
            "1.9",
            "1.10",
            "1.10a",
            "1.10b",
            "1.11",
            "2.81.81.81",
            "2.81.82",
        ]);
        assert_eq!(compare("1.00_01", "1.0.1"), Equal);
    }

    #[test]
    fn anything_compares_and_the_order_is_total() {
        let all = [
            "",
            "0",
            "x",
            "1.x",
            "1.2",
            "1.2.0-rc1",
            "1.2.0",
            "1.10a",
            "2026.11.2.1",
            "v1",
        ];
        for a in all {
            assert_eq!(compare(a, a), Equal);
            for b in all {
                assert_eq!(compare(a, b), compare(b, a).reverse(), "{a} vs {b}");
                for c in all {
                    if compare(a, b).is_le() && compare(b, c).is_le() {
                        assert!(compare(a, c).is_le(), "{a} <= {b} <= {c}");
                    }
                }
            }
        }
    }
}
