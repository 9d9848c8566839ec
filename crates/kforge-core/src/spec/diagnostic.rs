//! Problems found in a cluster file, pointing at file:line:column with a fix hint.
//!
//! Rendered like a compiler diagnostic so an operator sees the offending line:
//!
//! ```text
//! error: `203.0.113.300` is not a valid IP address (e.g. `203.0.113.10` or `2001:db8::1`)
//!   --> kforge.yaml:14:15
//!    |
//! 14 |     endpoint: 203.0.113.300
//!    |               ^
//!    = at: spec.nodes[1].endpoint
//!    = help: …
//! ```

use std::fmt;

/// A 1-based line and column in the cluster file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// The YAML path the problem is about, e.g. `spec.nodes[1].endpoint`.
    pub path: String,
    pub pos: Option<Pos>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, message: message.into(), path: path.into(), pos: None, help: None }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(path, message) }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Render with the source line and a caret under the column.
    pub fn render(&self, file: &str, source: &str) -> String {
        use fmt::Write;
        let mut out = String::new();
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{label}: {}", capped(&self.message));
        // rustc's layout: the gutter is as wide as the line number.
        let num = self.pos.map(|p| p.line.to_string()).unwrap_or_default();
        let pad = " ".repeat(num.len().max(1));
        match self.pos {
            Some(pos) => {
                let _ = writeln!(out, "{pad}--> {file}:{}:{}", pos.line, pos.column);
                if let Some(text) = source.lines().nth(pos.line.saturating_sub(1)) {
                    let (text, column) = excerpt(text, pos.column);
                    let caret_pad = " ".repeat(column.saturating_sub(1));
                    let _ = writeln!(out, "{pad} |");
                    let _ = writeln!(out, "{num} | {text}");
                    let _ = writeln!(out, "{pad} | {caret_pad}^");
                }
            }
            None => {
                let _ = writeln!(out, "{pad}--> {file}");
            }
        }
        if !self.path.is_empty() {
            let _ = writeln!(out, "{pad} = at: {}", self.path);
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{pad} = help: {help}");
        }
        out
    }
}

/// At most this many characters of a source line are echoed with an error.
pub const ECHO_CHARS: usize = 200;

/// A window of `line` around `column` (1-based) of at most [`ECHO_CHARS`], with `…`
/// where it was cut, and the column within the window: a 5 MB line stays readable.
pub fn excerpt(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= ECHO_CHARS {
        return (line.to_string(), column);
    }
    let start = column.saturating_sub(1).saturating_sub(ECHO_CHARS / 4).min(chars.len() - ECHO_CHARS);
    let end = start + ECHO_CHARS;
    let mut text = String::new();
    if start > 0 {
        text.push('…');
    }
    text.extend(&chars[start..end]);
    if end < chars.len() {
        text.push('…');
    }
    (text, column - start + usize::from(start > 0))
}

/// A message that quotes a pasted value stays a few lines long.
fn capped(message: &str) -> String {
    const MAX: usize = ECHO_CHARS + 40;
    let n = message.chars().count();
    if n <= MAX {
        return message.to_string();
    }
    let kept: String = message.chars().take(MAX).collect();
    format!("{kept}… ({} more characters)", n - MAX)
}

/// A cluster file that cannot be used, with everything wrong in it.
#[derive(Debug, Clone)]
pub struct SpecError {
    pub file: String,
    pub source_text: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            f.write_str(&d.render(&self.file, &self.source_text))?;
        }
        let errors = self.diagnostics.iter().filter(|d| d.is_error()).count();
        write!(
            f,
            "{}: {errors} error{} in the cluster file; nothing was changed",
            self.file,
            if errors == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for SpecError {}
