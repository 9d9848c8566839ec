//! A small writer for systemd unit files, where each setting and each command-line
//! flag can carry the reason it has its value. One list renders both the unit on the
//! host and what `kforge explain` says about it, so the two cannot drift apart.

use crate::ini::IniFile;

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

/// A unit file under construction: an INI file (`Key=value`) whose settings and flags
/// may carry the reason they have their value.
#[derive(Debug, Clone)]
pub struct UnitFile {
    ini: IniFile,
    /// (setting or flag, why), in file order.
    explained: Vec<(String, String)>,
}

impl UnitFile {
    /// `comment` becomes the first line (`# comment`): who manages the file and why.
    pub fn new(comment: impl Into<String>) -> UnitFile {
        UnitFile { ini: IniFile::new("=", comment), explained: Vec::new() }
    }

    /// Open a section (`Unit`, `Service`, `Install`); later `set`s go into it.
    pub fn section(mut self, name: &'static str) -> UnitFile {
        self.ini.section(name);
        self
    }

    pub fn set(mut self, key: &str, value: impl Into<String>) -> UnitFile {
        self.ini.set(key, value);
        self
    }

    /// A setting worth explaining: `Key=value` and why.
    pub fn set_because(mut self, key: &str, value: impl Into<String>, why: impl Into<String>) -> UnitFile {
        let value = value.into();
        self.explained.push((format!("{key}={value}"), why.into()));
        self.ini.set(key, value);
        self
    }

    /// A `# comment` line in the current section, for what a reader of the file needs.
    pub fn note(mut self, text: &str) -> UnitFile {
        self.ini.note(text);
        self
    }

    /// `ExecStart=` with one flag per continuation line; flags with a reason are explained.
    pub fn exec_start(mut self, binary: &str, flags: &[Flag]) -> UnitFile {
        let mut value = binary.to_string();
        for f in flags {
            if f.value.is_empty() {
                value.push_str(&format!(" \\\n  --{}", f.name));
            } else {
                value.push_str(&format!(" \\\n  --{}={}", f.name, f.value));
            }
        }
        self.explained.extend(flags.iter().filter_map(|f| Some((format!("--{}", f.name), f.why.clone()?))));
        self.ini.set("ExecStart", value);
        self
    }

    /// The usual `[Install]` for a service started at boot.
    pub fn wanted_by_multi_user(self) -> UnitFile {
        self.section("Install").set("WantedBy", "multi-user.target")
    }

    pub fn render(&self) -> String {
        self.ini.render()
    }

    /// (setting or flag, why) for every explained entry, in file order.
    pub fn explained(&self) -> Vec<(String, String)> {
        self.explained.clone()
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
