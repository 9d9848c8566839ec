//! A writer for INI-shaped files kforge generates — systemd units (`Key=value`) and
//! wg-quick configs (`Key = value`): comment lines, sections in the order they are
//! opened, keys in the order they are set (repeated keys allowed, as both formats use).

#[derive(Debug, Clone)]
pub struct IniFile {
    separator: &'static str,
    comment: String,
    sections: Vec<Section>,
}

#[derive(Debug, Clone)]
struct Section {
    name: &'static str,
    lines: Vec<Line>,
}

#[derive(Debug, Clone)]
pub(crate) enum Line {
    Set { key: String, value: String },
    Comment(String),
}

impl IniFile {
    /// `separator` goes between key and value (`=` for systemd, ` = ` for wg-quick);
    /// `comment` becomes the leading `# …` lines.
    pub fn new(separator: &'static str, comment: impl Into<String>) -> IniFile {
        IniFile { separator, comment: comment.into(), sections: Vec::new() }
    }

    pub fn section(&mut self, name: &'static str) -> &mut IniFile {
        self.sections.push(Section { name, lines: Vec::new() });
        self
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut IniFile {
        self.push(Line::Set { key: key.into(), value: value.into() })
    }

    /// A `# comment` line in the current section.
    pub fn note(&mut self, text: impl Into<String>) -> &mut IniFile {
        self.push(Line::Comment(text.into()))
    }

    fn push(&mut self, line: Line) -> &mut IniFile {
        self.sections.last_mut().expect("a section is opened before its lines").lines.push(line);
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.comment.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        for (i, s) in self.sections.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("[{}]\n", s.name));
            for line in &s.lines {
                match line {
                    Line::Set { key, value } => out.push_str(&format!("{key}{}{value}\n", self.separator)),
                    Line::Comment(text) => out.push_str(&format!("# {text}\n")),
                }
            }
        }
        out
    }
}
