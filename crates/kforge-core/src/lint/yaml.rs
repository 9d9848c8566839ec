//! A YAML tree that remembers where each node sits, for manifests.
//!
//! Kubernetes manifests come as multi-document streams of arbitrary shape; lint needs
//! both the values and their file:line:column. Built from the same parser events as
//! [`crate::spec::SourceMap`], so positions agree with `kforge check`'s.

use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle};

use crate::spec::Pos;

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    /// A scalar as written; `plain` is false when it was quoted or a block.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in file order, each with its own position.
    Map(Vec<(String, Pos, Node)>),
}

/// One `---` document of a stream (its root node carries where it starts).
#[derive(Debug, Clone)]
pub struct Document {
    pub root: Node,
}

/// A stream's documents, or the first syntax error (line, column, message).
pub fn parse_stream(text: &str) -> Result<Vec<Document>, (Pos, String)> {
    enum Frame {
        Map { pos: Pos, entries: Vec<(String, Pos, Node)>, key: Option<(String, Pos)> },
        Seq { pos: Pos, items: Vec<Node> },
    }
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // Attach a finished node to its parent, or make it a document root.
    fn attach(stack: &mut [Frame], docs: &mut Vec<Document>, node: Node) {
        match stack.last_mut() {
            None => docs.push(Document { root: node }),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some((k, kpos)) => entries.push((k, kpos, node)),
                // A collection used as a key: keep its place under a placeholder name.
                None => *key = Some(("?".into(), node.pos)),
            },
        }
    }
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| {
            let m = e.marker();
            (Pos { line: m.line(), column: m.col() + 1 }, e.info().to_string())
        })?;
        let pos = Pos { line: span.start.line(), column: span.start.col() + 1 };
        match event {
            Event::Scalar(value, style, ..) => {
                if let Some(Frame::Map { key: key @ None, .. }) = stack.last_mut() {
                    *key = Some((value.into_owned(), pos));
                    continue;
                }
                let plain = matches!(style, ScalarStyle::Plain);
                attach(&mut stack, &mut docs, Node { pos, value: Value::Scalar { text: value.into_owned(), plain } });
            }
            Event::Alias(_) => {
                attach(&mut stack, &mut docs, Node { pos, value: Value::Scalar { text: String::new(), plain: true } })
            }
            Event::MappingStart(..) => stack.push(Frame::Map { pos, entries: Vec::new(), key: None }),
            Event::SequenceStart(..) => stack.push(Frame::Seq { pos, items: Vec::new() }),
            Event::MappingEnd | Event::SequenceEnd => {
                let node = match stack.pop() {
                    Some(Frame::Map { pos, entries, .. }) => Node { pos, value: Value::Map(entries) },
                    Some(Frame::Seq { pos, items }) => Node { pos, value: Value::Seq(items) },
                    None => continue,
                };
                attach(&mut stack, &mut docs, node);
            }
            _ => {}
        }
    }
    Ok(docs)
}

impl Node {
    /// The child at `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, ..)| k == key).map(|(_, _, n)| n),
            _ => None,
        }
    }

    /// The child at a dotted path of mapping keys, e.g. `spec.template.spec`.
    pub fn at(&self, path: &str) -> Option<&Node> {
        path.split('.').try_fold(self, |n, k| n.get(k))
    }

    /// The scalar text, if this is a scalar (null-like plain scalars are None).
    pub fn str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, plain } if !(*plain && matches!(text.as_str(), "" | "~" | "null")) => Some(text),
            _ => None,
        }
    }

    pub fn str_at(&self, path: &str) -> Option<&str> {
        self.at(path).and_then(Node::str)
    }

    /// The items of a sequence (empty for anything else).
    pub fn items(&self) -> &[Node] {
        match &self.value {
            Value::Seq(items) => items,
            _ => &[],
        }
    }

    /// The entries of a mapping (empty for anything else).
    pub fn entries(&self) -> &[(String, Pos, Node)] {
        match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }

    /// A port-like value: an integer, or a name (`targetPort: webhook`).
    pub fn port(&self) -> Option<PortRef> {
        let s = self.str()?;
        Some(match s.parse::<u32>() {
            Ok(n) => PortRef::Number(n),
            Err(_) => PortRef::Name(s.to_string()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u32),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_positions_of_keys_and_values() {
        let text = "apiVersion: v1\nkind: Service\n---\nkind: Pod\nspec:\n  ports:\n    - 80\n    - name: web\n";
        let docs = parse_stream(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].root.str_at("kind"), Some("Service"));
        let ports = docs[1].root.at("spec.ports").unwrap();
        assert_eq!(ports.items()[0].pos, Pos { line: 7, column: 7 });
        assert_eq!(ports.items()[1].str_at("name"), Some("web"));
        assert_eq!(docs[1].root.entries()[1].1, Pos { line: 5, column: 1 });
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let (pos, _) = parse_stream("a: [1, 2\nb: c\n").unwrap_err();
        assert!(pos.line >= 2, "{pos:?}");
    }
}
