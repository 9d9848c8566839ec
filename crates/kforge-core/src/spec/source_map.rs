//! Where each value of the cluster file sits in the text.
//!
//! The typed `Cluster` carries no positions (keeping it clean for schemars and the
//! rest of the pipeline); semantic checks look up `spec.nodes[2].endpoint` here to
//! point the operator at the right line and column. Built from the YAML parser's
//! event stream, so it sees exactly what the deserializer saw.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

use super::diagnostic::Pos;

#[derive(Debug, Default)]
pub struct SourceMap {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

enum Frame {
    Map { path: String, pending_key: Option<String> },
    Seq { path: String, next: usize },
}

impl SourceMap {
    /// Index a YAML text. Parse errors are ignored here: the deserializer reports them.
    pub fn build(text: &str) -> SourceMap {
        let mut map = SourceMap::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let pos = Pos { line: span.start.line(), column: span.start.col() + 1 };
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, pending_key }) = stack.last_mut()
                        && pending_key.is_none()
                    {
                        let key_path = join(path, &value);
                        map.keys.insert(key_path, pos);
                        *pending_key = Some(value.into_owned());
                        continue;
                    }
                    let path = child_path(&mut stack);
                    map.values.entry(path).or_insert(pos);
                }
                Event::Alias(_) => {
                    let path = child_path(&mut stack);
                    map.values.entry(path).or_insert(pos);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    // A collection used as a mapping key: give it a placeholder name.
                    if let Some(Frame::Map { pending_key: pending @ None, .. }) = stack.last_mut() {
                        *pending = Some("?".into());
                    }
                    let path = child_path(&mut stack);
                    map.values.entry(path.clone()).or_insert(pos);
                    stack.push(if is_map {
                        Frame::Map { path, pending_key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        map
    }

    /// Position of the value at `path`, else of its key, else of the nearest ancestor.
    pub fn locate(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p).or_else(|| self.keys.get(p)) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// Position of the key at `path` (for "this key is wrong" messages).
    pub fn locate_key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.locate(path))
    }
}

/// The path of the node about to start under the top frame; advances that frame.
fn child_path(stack: &mut [Frame]) -> String {
    match stack.last_mut() {
        None => String::new(),
        Some(Frame::Map { path, pending_key }) => {
            let key = pending_key.take().unwrap_or_default();
            join(path, &key)
        }
        Some(Frame::Seq { path, next }) => {
            let p = format!("{path}[{next}]");
            *next += 1;
            p
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

fn parent(path: &str) -> &str {
    let dot = path.rfind('.');
    let bracket = path.rfind('[');
    match dot.max(bracket) {
        Some(i) => &path[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_values_and_sequence_items() {
        let text = "spec:\n  nodes:\n    - name: a\n      endpoint: 1.2.3.4\n    - {name: b}\n";
        let map = SourceMap::build(text);
        assert_eq!(map.locate("spec.nodes[0].endpoint"), Some(Pos { line: 4, column: 17 }));
        assert_eq!(map.locate("spec.nodes[1].name"), Some(Pos { line: 5, column: 14 }));
        assert_eq!(map.locate_key("spec.nodes[0].endpoint"), Some(Pos { line: 4, column: 7 }));
        // Missing values fall back to their nearest ancestor.
        assert_eq!(map.locate("spec.nodes[1].role"), Some(Pos { line: 5, column: 7 }));
    }
}
