//! A YAML tree that remembers where every key and value came from (file, line, column), and
//! netplan's merge of several files.
//!
//! Why not serde: errors must name file, line, column and key path for *every* problem,
//! including ones found after parsing (a VLAN whose `link` is undefined, a key from a later
//! file overriding an earlier one). serde_yaml-style crates report positions only for
//! deserialization errors and lose them in the merged value. `yaml-rust2`'s event parser
//! gives a marker for every event, and building a small marked tree from the events is about
//! sixty lines; the typed conversion in [`crate::schema`] then walks the tree with its path.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where a node starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The file it was read from.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A mapping, in document order; keys are scalars.
    Map(Vec<(String, Mark, Node)>),
    /// A sequence.
    Seq(Vec<Node>),
    /// A scalar; `plain` is false for quoted scalars (then `"true"` is a string).
    Scalar {
        /// The text.
        text: String,
        /// Unquoted.
        plain: bool,
    },
}

/// A value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub mark: Mark,
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{mark}: {message}")]
pub struct SyntaxError {
    /// Where.
    pub mark: Mark,
    /// What the parser said.
    pub message: String,
}

struct Builder {
    file: Arc<str>,
    stack: Vec<(Node, Option<(String, Mark)>)>,
    /// A mapping key waiting for its value.
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn mark(&self, m: Marker) -> Mark {
        Mark {
            file: self.file.clone(),
            line: m.line(),
            col: m.col() + 1,
        }
    }

    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((parent, pending)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending.take() {
                    Some((key, mark)) => entries.push((key, mark, node)),
                    None => match node.value {
                        Value::Scalar { text, .. } => *pending = Some((text, node.mark)),
                        _ => {
                            self.error.get_or_insert(SyntaxError {
                                mark: node.mark,
                                message: "mapping keys must be scalars".into(),
                            });
                        }
                    },
                },
                Value::Scalar { .. } => {}
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, marker: Marker) {
        let mark = self.mark(marker);
        match ev {
            Event::Scalar(text, style, _, _) => {
                let plain = style == TScalarStyle::Plain;
                self.push_value(Node {
                    value: Value::Scalar { text, plain },
                    mark,
                })
            }
            Event::SequenceStart(..) => self.stack.push((
                Node {
                    value: Value::Seq(Vec::new()),
                    mark,
                },
                None,
            )),
            Event::MappingStart(..) => self.stack.push((
                Node {
                    value: Value::Map(Vec::new()),
                    mark,
                },
                None,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            Event::Alias(_) => {
                self.error.get_or_insert(SyntaxError {
                    mark,
                    message: "YAML aliases are not supported in netplan files".into(),
                });
            }
            _ => {}
        }
    }
}

/// Parses one file's text. An empty document is an empty mapping.
pub fn parse(file: &Path, text: &str) -> Result<Node, SyntaxError> {
    let file: Arc<str> = file.display().to_string().into();
    let mut builder = Builder {
        file: file.clone(),
        stack: Vec::new(),
        root: None,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        mark: Mark {
            file: file.clone(),
            line: e.marker().line(),
            col: e.marker().col() + 1,
        },
        message: e.info().to_string(),
    })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.root.unwrap_or(Node {
        value: Value::Map(Vec::new()),
        mark: Mark {
            file,
            line: 1,
            col: 1,
        },
    }))
}

/// netplan's merge of a later file over an earlier one: mappings merge key by key
/// (recursively), anything else in the later file replaces the earlier value.
pub fn merge(base: Node, over: Node) -> Node {
    match (base.value, over.value) {
        (Value::Map(mut entries), Value::Map(later)) => {
            for (key, kmark, value) in later {
                match entries.iter().position(|(k, _, _)| *k == key) {
                    Some(i) => {
                        let (_, _, old) = entries.remove(i);
                        entries.insert(i, (key, kmark, merge(old, value)));
                    }
                    None => entries.push((key, kmark, value)),
                }
            }
            Node {
                value: Value::Map(entries),
                mark: base.mark,
            }
        }
        (_, value) => Node {
            value,
            mark: over.mark,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_one_based_and_point_at_keys() {
        let n = parse(Path::new("a.yaml"), "network:\n  version: 2\n").unwrap();
        let Value::Map(top) = n.value else { panic!() };
        let (_, _, net) = &top[0];
        let Value::Map(inner) = &net.value else {
            panic!()
        };
        assert_eq!(inner[0].0, "version");
        assert_eq!((inner[0].1.line, inner[0].1.col), (2, 3));
        assert_eq!(inner[0].1.to_string(), "a.yaml:2:3");
    }

    #[test]
    fn later_file_overrides_scalars_and_merges_maps() {
        let a = parse(Path::new("a"), "x: {a: 1, b: [1, 2]}\n").unwrap();
        let b = parse(Path::new("b"), "x: {b: [3], c: 4}\n").unwrap();
        let m = merge(a, b);
        let expect = parse(Path::new("c"), "x: {a: 1, b: [3], c: 4}\n").unwrap();
        fn strip(n: &Node) -> String {
            match &n.value {
                Value::Map(e) => e
                    .iter()
                    .map(|(k, _, v)| format!("{k}={}", strip(v)))
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Seq(s) => s.iter().map(strip).collect::<Vec<_>>().join(";"),
                Value::Scalar { text, .. } => text.clone(),
            }
        }
        assert_eq!(strip(&m), strip(&expect));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse(Path::new("bad.yaml"), "a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(&*e.mark.file, "bad.yaml");
        assert!(e.mark.line >= 1, "{e}");
    }
}
