//! Label selectors with Kubernetes semantics (`kubectl -l`): the one selector language of
//! the hub, for appliance lists, counts, watches and campaigns.
//!
//! Grammar (Kubernetes' `labels.Parse`, without the `<`/`>` numeric forms):
//!
//! ```text
//! selector    := "" | requirement ("," requirement)*
//! requirement := KEY ( ("=" | "==" | "!=") VALUE | ("in" | "notin") "(" VALUE ("," VALUE)* ")" )?
//!              | "!" KEY
//! ```
//!
//! Requirements are ANDed. `a!=b` and `a notin (..)` also match an appliance without `a`, as
//! in Kubernetes. Keys are label keys (`[prefix/]name`), values label values (possibly empty).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The key that names an appliance's site rather than one of its labels: `site=dc1` selects
/// the appliances of site `dc1` (a label called `site` is not seen by selectors).
pub const SITE_KEY: &str = "site";

/// Longest selector accepted: a bound on the work one request can ask for.
pub const MAX_SELECTOR_LEN: usize = 4096;

/// A parsed selector: requirements that must all hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// One requirement on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// What its value must be.
    pub op: Operator,
}

/// What a requirement asks of a key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` or `key==value`: present with this value.
    Equals(String),
    /// `key!=value`: absent, or another value.
    NotEquals(String),
    /// `key in (a,b)`: present with one of these values.
    In(BTreeSet<String>),
    /// `key notin (a,b)`: absent, or none of these values.
    NotIn(BTreeSet<String>),
    /// `key`: present.
    Exists,
    /// `!key`: absent.
    DoesNotExist,
}

impl Requirement {
    /// Whether the requirement holds for a key whose value is `value` (`None`: absent).
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Operator::Equals(want), Some(v)) => v == want,
            (Operator::Equals(_), None) => false,
            (Operator::NotEquals(no), v) => v != Some(no.as_str()),
            (Operator::In(set), Some(v)) => set.contains(v),
            (Operator::In(_), None) => false,
            (Operator::NotIn(set), v) => v.is_none_or(|v| !set.contains(v)),
            (Operator::Exists, v) => v.is_some(),
            (Operator::DoesNotExist, v) => v.is_none(),
        }
    }
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector of these requirements.
    pub fn from_requirements(requirements: Vec<Requirement>) -> Self {
        Self { requirements }
    }

    /// Whether it has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Its requirements, in the order given.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether every requirement holds, `lookup` giving a key's value.
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(lookup(&r.key)))
    }

    /// This selector with `other`'s requirements added (AND).
    pub fn and(mut self, other: &LabelSelector) -> Self {
        self.requirements.extend(other.requirements.iter().cloned());
        self
    }
}

/// Why a selector does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at character {}: {message}", position + 1)]
pub struct SelectorError {
    /// Byte offset of the fault (0-based; the message counts from 1).
    pub position: usize,
    /// What was expected or wrong.
    pub message: String,
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl<'a> Parser<'a> {
    fn fail<T>(&self, position: usize, message: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            position,
            message: message.into(),
        })
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn skip_spaces(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches(' ').len();
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// A run of characters allowed by `allowed` (possibly empty).
    fn word(&mut self, allowed: fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !allowed(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let start = self.pos;
        let key = self.word(is_key_char);
        if key.is_empty() {
            return self.fail(start, "expected a label key");
        }
        validate_key(key).or_else(|m| self.fail(start, m))?;
        Ok(key.to_owned())
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let start = self.pos;
        let value = self.word(is_value_char);
        validate_value(value).or_else(|m| self.fail(start, m))?;
        Ok(value.to_owned())
    }

    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.skip_spaces();
        if !self.eat("(") {
            return self.fail(self.pos, "expected '(' opening a set of values");
        }
        let mut values = BTreeSet::new();
        loop {
            let start = self.pos;
            let value = self.value()?;
            if value.is_empty() {
                return self.fail(start, "a value in a set must be 1 to 63 characters");
            }
            values.insert(value);
            self.skip_spaces();
            if self.eat(",") {
                continue;
            }
            if self.eat(")") {
                return Ok(values);
            }
            return self.fail(self.pos, "expected ',' or ')' in a set of values");
        }
    }

    /// An `in`/`notin` keyword followed by a set, when the input has one here.
    fn set_operator(&mut self) -> Option<bool> {
        let rest = self.rest();
        for (word, negated) in [("notin", true), ("in", false)] {
            if let Some(after) = rest.strip_prefix(word)
                && after.starts_with([' ', '('])
            {
                self.pos += word.len();
                return Some(negated);
            }
        }
        None
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_spaces();
        if self.eat("!") {
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Operator::DoesNotExist,
            });
        }
        let key = self.key()?;
        self.skip_spaces();
        let op = if self.eat("==") || self.eat("=") {
            Operator::Equals(self.value()?)
        } else if self.eat("!=") {
            Operator::NotEquals(self.value()?)
        } else if let Some(negated) = self.set_operator() {
            let set = self.value_set()?;
            if negated {
                Operator::NotIn(set)
            } else {
                Operator::In(set)
            }
        } else if self.peek().is_none_or(|c| c == ',') {
            Operator::Exists
        } else {
            return self.fail(
                self.pos,
                "expected '=', '==', '!=', 'in', 'notin', ',' or the end after a key",
            );
        };
        Ok(Requirement { key, op })
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters that starts and ends alphanumeric.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "key {key:?}: the prefix before '/' must be a lowercase DNS name"
            ));
        }
    }
    validate_name(name).map_err(|why| format!("key {key:?}: {why}"))
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("a name must be 1 to 63 characters".into());
    }
    if name.contains('/') {
        return Err("at most one '/'".into());
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err("a name must start and end with a letter or digit".into());
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    validate_name(value).map_err(|why| format!("value {value:?}: {why}"))
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, SelectorError> {
        if input.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError {
                position: MAX_SELECTOR_LEN,
                message: format!("longer than {MAX_SELECTOR_LEN} characters"),
            });
        }
        let mut p = Parser { input, pos: 0 };
        let mut requirements = Vec::new();
        p.skip_spaces();
        if p.peek().is_none() {
            return Ok(Self::everything());
        }
        loop {
            requirements.push(p.requirement()?);
            p.skip_spaces();
            match p.peek() {
                None => return Ok(Self { requirements }),
                Some(',') => p.pos += 1,
                Some(_) => return p.fail(p.pos, "expected ',' or the end"),
            }
        }
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, set: &BTreeSet<String>) -> fmt::Result {
    f.write_str("(")?;
    for (i, v) in set.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        f.write_str(v)?;
    }
    f.write_str(")")
}

/// The canonical text, which parses back to the same selector.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Operator::Equals(v) => write!(f, "{}={v}", r.key)?,
                Operator::NotEquals(v) => write!(f, "{}!={v}", r.key)?,
                Operator::In(set) => {
                    write!(f, "{} in ", r.key)?;
                    write_set(f, set)?;
                }
                Operator::NotIn(set) => {
                    write!(f, "{} notin ", r.key)?;
                    write_set(f, set)?;
                }
                Operator::Exists => f.write_str(&r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

impl Serialize for LabelSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for LabelSelector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LabelSelector".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A label selector as `kubectl -l` takes it: `a=b`, `a==b`, `a!=b`, \
                `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma for AND.",
            "maxLength": MAX_SELECTOR_LEN,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn req(key: &str, op: Operator) -> Requirement {
        Requirement {
            key: key.into(),
            op,
        }
    }

    #[test]
    fn parses_every_kubectl_form() {
        use Operator::*;
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("   ", vec![]),
            ("a=b", vec![req("a", Equals("b".into()))]),
            ("a==b", vec![req("a", Equals("b".into()))]),
            ("a = b", vec![req("a", Equals("b".into()))]),
            ("a=", vec![req("a", Equals("".into()))]),
            ("a!=b", vec![req("a", NotEquals("b".into()))]),
            ("a in (x,y)", vec![req("a", In(set(&["x", "y"])))]),
            ("a in ( x , y )", vec![req("a", In(set(&["x", "y"])))]),
            ("a in(x)", vec![req("a", In(set(&["x"])))]),
            ("a notin (x)", vec![req("a", NotIn(set(&["x"])))]),
            ("a", vec![req("a", Exists)]),
            ("!a", vec![req("a", DoesNotExist)]),
            (" ! a ", vec![req("a", DoesNotExist)]),
            ("in", vec![req("in", Exists)]),
            ("inx=1", vec![req("inx", Equals("1".into()))]),
            (
                "cairn.io/tier=edge,site",
                vec![
                    req("cairn.io/tier", Equals("edge".into())),
                    req("site", Exists),
                ],
            ),
            (
                "a=b,c!=d,e in (f),g notin (h,i),j,!k",
                vec![
                    req("a", Equals("b".into())),
                    req("c", NotEquals("d".into())),
                    req("e", In(set(&["f"]))),
                    req("g", NotIn(set(&["h", "i"]))),
                    req("j", Exists),
                    req("k", DoesNotExist),
                ],
            ),
        ];
        for (text, want) in cases {
            let got: LabelSelector = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(got.requirements(), want.as_slice(), "{text:?}");
            // The canonical text parses back to the same selector.
            let again: LabelSelector = got.to_string().parse().unwrap();
            assert_eq!(again, got, "{text:?} -> {got}");
        }
    }

    #[test]
    fn malformed_selectors_name_the_position() {
        // (input, 1-based character the message names, words the message contains)
        let cases = [
            ("=b", 1, "expected a label key"),
            ("a=b,", 5, "expected a label key"),
            (",a", 1, "expected a label key"),
            ("a b", 3, "expected '='"),
            ("a=b c", 5, "expected ',' or the end"),
            ("a in x", 6, "expected '('"),
            ("a in (x", 8, "expected ',' or ')'"),
            ("a in ()", 7, "1 to 63"),
            ("a in (x,)", 9, "1 to 63"),
            ("a=-b", 3, "start and end"),
            ("a=b/c", 4, "expected ',' or the end"),
            ("-a=b", 1, "start and end"),
            ("A.B/c=d", 1, "lowercase DNS name"),
            ("a/b/c", 1, "at most one '/'"),
            ("a<1", 2, "expected '='"),
            ("!", 2, "expected a label key"),
            ("!a=b", 3, "expected ',' or the end"),
            ("a=é", 3, "expected ',' or the end"),
        ];
        for (text, position, words) in cases {
            let e = text
                .parse::<LabelSelector>()
                .expect_err(&format!("{text:?} parsed"));
            assert_eq!(e.position + 1, position, "{text:?}: {e}");
            assert!(e.to_string().contains(words), "{text:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("invalid selector at character {position}")),
                "{e}"
            );
        }
        let long = "a,".repeat(MAX_SELECTOR_LEN);
        assert!(long.parse::<LabelSelector>().is_err());
        let key = "k".repeat(64);
        assert!(format!("{key}=v").parse::<LabelSelector>().is_err());
    }

    #[test]
    fn matching_follows_kubernetes() {
        let labels: BTreeMap<&str, &str> = [("role", "edge"), ("tier", "")].into();
        let lookup = |k: &str| labels.get(k).copied();
        let cases = [
            ("", true),
            ("role=edge", true),
            ("role==edge", true),
            ("role=core", false),
            ("role!=core", true),
            ("role!=edge", false),
            ("zone!=x", true),
            ("role in (core,edge)", true),
            ("role in (core)", false),
            ("zone in (x)", false),
            ("role notin (core)", true),
            ("role notin (edge)", false),
            ("zone notin (x)", true),
            ("role", true),
            ("zone", false),
            ("!zone", true),
            ("!role", false),
            ("tier=", true),
            ("tier", true),
            ("role=edge,zone", false),
            ("role=edge,!zone,tier", true),
        ];
        for (text, want) in cases {
            let s: LabelSelector = text.parse().unwrap();
            assert_eq!(s.matches(lookup), want, "{text:?}");
        }
    }

    #[test]
    fn serializes_as_its_text() {
        let s: LabelSelector = "a in (y,x),!b".parse().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#""a in (x,y),!b""#);
        assert_eq!(serde_json::from_str::<LabelSelector>(&json).unwrap(), s);
        let bad = serde_json::from_str::<LabelSelector>(r#""a in""#).unwrap_err();
        assert!(
            bad.to_string().contains("invalid selector at character"),
            "{bad}"
        );
    }
}
