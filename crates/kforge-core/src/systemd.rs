//! A small writer for systemd unit files, where each setting and each command-line
//! flag can carry the reason it has its value. One list renders both the unit on the
//! host and what `kforge explain` says about it, so the two cannot drift apart.

/// A command-line flag (`--name=value`, or `--name` when the value is empty).
#[derive(Debug, Clone)]
pub struct Flag {
    pub name: &'static str,
    pub value: String,
    /// Why it has this value (shown by `kforge explain`), for the flags worth reading.
    pub why: Option<String>,
}

pub fn flag(name: &'static str, value: impl Into<String>) -> Flag {
    Flag { name, value: value.into(), why: None }
}

impl Flag {
    pub fn because(mut self, why: impl Into<String>) -> Flag {
        self.why = Some(why.into());
        self
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    value: String,
    /// What `kforge explain` lists: (name, why).
    explained: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Section {
    name: &'static str,
    entries: Vec<Entry>,
}

/// A unit file under construction: a header comment, then sections in the order
/// they are opened, each with its `Key=value` lines in the order they are set.
#[derive(Debug, Clone)]
pub struct UnitFile {
    comment: String,
    sections: Vec<Section>,
}

impl UnitFile {
    /// `comment` becomes the first line (`# comment`): who manages the file and why.
    pub fn new(comment: impl Into<String>) -> UnitFile {
        UnitFile { comment: comment.into(), sections: Vec::new() }
    }

    /// Open a section (`Unit`, `Service`, `Install`); later `set`s go into it.
    pub fn section(mut self, name: &'static str) -> UnitFile {
        self.sections.push(Section { name, entries: Vec::new() });
        self
    }

    pub fn set(self, key: &str, value: impl Into<String>) -> UnitFile {
        self.entry(key, value.into(), Vec::new())
    }

    /// A setting worth explaining: `Key=value` and why.
    pub fn set_because(self, key: &str, value: impl Into<String>, why: impl Into<String>) -> UnitFile {
        let value = value.into();
        let explained = vec![(format!("{key}={value}"), why.into())];
        self.entry(key, value, explained)
    }

    /// A `# comment` line in the current section, for what a reader of the file needs.
    pub fn note(self, text: &str) -> UnitFile {
        self.entry("#", format!(" {text}"), Vec::new())
    }

    /// `ExecStart=` with one flag per continuation line; flags with a reason are explained.
    pub fn exec_start(self, binary: &str, flags: &[Flag]) -> UnitFile {
        let mut value = binary.to_string();
        for f in flags {
            if f.value.is_empty() {
                value.push_str(&format!(" \\\n  --{}", f.name));
            } else {
                value.push_str(&format!(" \\\n  --{}={}", f.name, f.value));
            }
        }
        let explained = flags.iter().filter_map(|f| Some((format!("--{}", f.name), f.why.clone()?))).collect();
        self.entry("ExecStart", value, explained)
    }

    /// The usual `[Install]` for a service started at boot.
    pub fn wanted_by_multi_user(self) -> UnitFile {
        self.section("Install").set("WantedBy", "multi-user.target")
    }

    fn entry(mut self, key: &str, value: String, explained: Vec<(String, String)>) -> UnitFile {
        let section = self.sections.last_mut().expect("a section is opened before its settings");
        section.entries.push(Entry { key: key.into(), value, explained });
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
            for e in &s.entries {
                match e.key.as_str() {
                    "#" => out.push_str(&format!("#{}\n", e.value)),
                    _ => out.push_str(&format!("{}={}\n", e.key, e.value)),
                }
            }
        }
        out
    }

    /// (setting or flag, why) for every explained entry, in file order.
    pub fn explained(&self) -> Vec<(String, String)> {
        self.sections.iter().flat_map(|s| s.entries.iter().flat_map(|e| e.explained.iter().cloned())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_renders_its_settings_and_explains_what_has_a_reason() {
        let unit = UnitFile::new("Managed by kforge.")
            .section("Unit")
            .set("Description", "etcd (kforge)")
            .section("Service")
            .set_because("Type", "notify", "started once it serves")
            .exec_start(
                "/usr/local/bin/etcd",
                &[flag("name", "cp-1"), flag("client-cert-auth", "").because("certificates only")],
            )
            .wanted_by_multi_user();
        assert_eq!(
            unit.render(),
            "# Managed by kforge.\n[Unit]\nDescription=etcd (kforge)\n\n[Service]\nType=notify\nExecStart=/usr/local/bin/etcd \\\n  --name=cp-1 \\\n  --client-cert-auth\n\n[Install]\nWantedBy=multi-user.target\n"
        );
        assert_eq!(
            unit.explained(),
            [
                ("Type=notify".to_string(), "started once it serves".to_string()),
                ("--client-cert-auth".to_string(), "certificates only".to_string())
            ]
        );
    }
}
