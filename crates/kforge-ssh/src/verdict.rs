//! The one verdict `kforge status` and `kforge doctor` give a check, and the one rule
//! their exit codes follow.
//!
//! A check is `unknown` when a host it needs did not answer: never `ok` without the
//! evidence. Exit 0 when every check is ok, 1 when the worst is a warning, 2 when any
//! check failed or is unknown.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    /// A host the check needs did not answer: neither ok nor failed, and not good news.
    Unknown,
    Fail,
}

impl Verdict {
    /// The exit code of a report whose worst verdict this is.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::Warn => 1,
            Verdict::Unknown | Verdict::Fail => 2,
        }
    }

    /// As the text reports print it (one column, 7 wide).
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Unknown => "unknown",
            Verdict::Fail => "FAIL",
        }
    }
}

/// What an ok check says when some hosts did not answer: it holds only for the others.
pub fn unknown_for(silent: &[String]) -> String {
    format!("unknown for {} (did not answer)", silent.join(", "))
}
