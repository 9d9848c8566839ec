//! Stage 5: executors that deliver a plan without SSH.
//!
//! * [`script`]: the node's bootstrap script, derived step by step from its plan.
//! * [`cloud_init`]: `#cloud-config` user-data (write_files + the script).
//!
//! Writing them to disk (`render --out DIR`) is kforge-files' job: this crate does no I/O.

pub mod cloud_init;
pub mod phase;
pub mod script;
pub mod steps;

/// Quote a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:@=+,".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}
