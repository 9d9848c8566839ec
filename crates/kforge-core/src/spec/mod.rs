//! Stage 1 of the pipeline: the cluster file (`kforge.yaml`) → a validated [`Cluster`].
//!
//! Parsing and checking never touch a host. Everything wrong is reported at once,
//! each problem at file:line:column with a hint; warnings do not stop the pipeline.

mod diagnostic;
pub mod examples;
pub mod names;
mod source_map;
mod types;
mod validate;

pub use diagnostic::{Diagnostic, Pos, Severity, SpecError, excerpt};
pub use source_map::SourceMap;
pub use types::*;
pub use validate::dns_label;

/// A cluster file that passed validation, with the warnings it raised.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub cluster: Cluster,
    pub file: String,
    pub warnings: Vec<Diagnostic>,
    pub source_text: String,
}

impl LoadedSpec {
    /// Problems found later (against a host's facts) shown like the file's own: each at
    /// its line and column, with the source line and a caret.
    pub fn render_diagnostics(&self, mut diagnostics: Vec<Diagnostic>) -> String {
        let map = SourceMap::build(&self.source_text);
        diagnostics.iter_mut().for_each(|d| d.pos = map.locate(&d.path));
        diagnostics.iter().map(|d| d.render(&self.file, &self.source_text)).collect()
    }

    /// Warnings rendered like errors (source line and caret). A warning raised for
    /// many nodes is shown three times, then counted, so a large fleet stays readable.
    pub fn render_warnings(&self) -> String {
        const SHOWN_PER_KIND: usize = 3;
        let mut out = String::new();
        let mut seen: Vec<(&str, usize)> = Vec::new();
        for w in &self.warnings {
            let kind = w.help.as_deref().unwrap_or(&w.message);
            let n = match seen.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((kind, 1));
                    1
                }
            };
            if n <= SHOWN_PER_KIND {
                out.push_str(&w.render(&self.file, &self.source_text));
            }
        }
        for (kind, n) in seen.into_iter().filter(|(_, n)| *n > SHOWN_PER_KIND) {
            out.push_str(&format!("warning: {} more like the above ({kind})\n", n - SHOWN_PER_KIND));
        }
        out
    }
}

/// Parse and validate cluster-file text; `file` is only used in messages.
pub fn parse(file: &str, text: &str) -> Result<LoadedSpec, SpecError> {
    let fail = |diagnostics| SpecError { file: file.to_string(), source_text: text.to_string(), diagnostics };
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    if text.trim().lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        return Err(fail(vec![
            Diagnostic { pos: Some(Pos { line: 1, column: 1 }), ..Diagnostic::error("", "the cluster file is empty") }
                .help("`kforge init --example NAME DIR` writes a complete example to start from"),
        ]));
    }
    let cluster: Cluster = match serde_saphyr::from_str_with_options(text, options) {
        Ok(c) => c,
        Err(e) => return Err(fail(vec![yaml_diagnostic(&e, text)])),
    };
    let map = SourceMap::build(text);
    let mut diagnostics = validate::validate(&cluster);
    for d in &mut diagnostics {
        d.pos = map.locate(&d.path);
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        // Errors first, in file order: that is the order an operator fixes them.
        diagnostics.sort_by_key(|d| (!d.is_error(), d.pos.map(|p| (p.line, p.column))));
        return Err(fail(diagnostics));
    }
    Ok(LoadedSpec { cluster, file: file.to_string(), warnings: diagnostics, source_text: text.to_string() })
}

/// Turn a YAML/serde error into a located diagnostic with a hint for common cases.
fn yaml_diagnostic(e: &serde_saphyr::Error, text: &str) -> Diagnostic {
    use serde_saphyr::MessageFormatter;
    let inner = e.without_snippet();
    let message = serde_saphyr::UserMessageFormatter.format_message(inner).into_owned();
    let pos =
        e.location().filter(|l| l.line() > 0).map(|l| Pos { line: l.line() as usize, column: l.column() as usize });
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        return Diagnostic {
            pos,
            ..Diagnostic::error("", format!("the document is too large for kforge's YAML parser ({breach:?})")).help(
                "a cluster file is small: this much YAML is a generated or pasted mistake (the parser stops at 250,000 values, depth 64, 50,000 aliases)",
            )
        };
    }
    let key = pos.and_then(|p| key_at(text, p)).unwrap_or_default();
    let help = if message.contains("unknown field") {
        "remove or rename this key; `kforge schema` lists every key the file may have"
    } else if message.contains("missing field") {
        "add the missing key; `kforge init` writes a complete example"
    } else if message.contains("unknown variant") {
        "use one of the values listed"
    } else if message.contains("duplicate") {
        "each key may appear once in a mapping"
    } else if (message.contains("invalid u16") || message.contains("invalid u32")) && key == "keepalive" {
        "write the keepalive in seconds, 0 (off) to 65535; 25 keeps a NAT mapping open"
    } else if (message.contains("invalid u16") || message.contains("invalid u32")) && key.ends_with("ort") {
        "write a port number, 1 to 65535"
    } else if message.contains("invalid u16") || message.contains("invalid u32") {
        "write a whole number in range (see `kforge schema` for this key)"
    } else if message.contains("invalid boolean") {
        "write true or false"
    } else if message.contains("expected sequence") {
        "this key takes a list: `[a, b]` or one `- item` per line"
    } else if message.contains("expected mapping") || message.contains("expected struct") {
        "this key takes a mapping: `{key: value}` or indented `key: value` lines"
    } else if message.contains("CIDR") || message.contains("IP address") || message.contains("host bits") {
        "addresses are written like 203.0.113.10, networks like 10.42.0.0/16"
    } else if message.contains("invalid type") {
        "check the value's type against `kforge schema`"
    } else if message.contains("role") {
        "k3s: `role: server` or `role: agent`; hardway: `controller`, `worker` or `[controller, worker]`"
    } else {
        "YAML syntax: check indentation, brackets and quotes at this position"
    };
    Diagnostic { pos, ..Diagnostic::error("", message).help(help) }
}

/// The key whose value starts at `pos` (`port` in `{port: 70000}`), if any.
fn key_at(text: &str, pos: Pos) -> Option<String> {
    let line = text.lines().nth(pos.line.checked_sub(1)?)?;
    let before: String = line.chars().take(pos.column.saturating_sub(1)).collect();
    let before = before.trim_end().strip_suffix(':')?;
    let key = before.rsplit(|c: char| c.is_whitespace() || c == '{' || c == ',' || c == '-').next()?;
    Some(key.trim_matches(|c| c == '"' || c == '\'').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_example_is_valid() {
        for (name, text) in examples::ALL {
            let loaded = parse(name, text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(loaded.warnings.is_empty(), "{name}: {}", loaded.render_warnings());
        }
    }

    #[test]
    fn unknown_key_points_at_its_line() {
        let text = examples::HOMELAB.replacen("  mesh:\n", "  mesh:\n    colour: blue\n", 1);
        let err = parse("kforge.yaml", &text).unwrap_err();
        let d = &err.diagnostics[0];
        assert!(d.message.contains("colour"), "{}", d.message);
        let line = text.lines().position(|l| l.contains("colour")).unwrap() + 1;
        assert_eq!(d.pos.unwrap().line, line);
    }
}
