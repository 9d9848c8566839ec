//! Failpoints at apply's step boundaries, for the fault matrix (tests/it/lab/faults.rs,
//! scripts/faults). Only a build with the `failpoints` feature has them; in any other
//! build [`at`] is empty and [`is_cut`] is `false`, so a released kforge carries none.
//!
//! A point is armed by name through the `FAILPOINTS` environment variable, in the `fail`
//! crate's syntax (`name=[N*]return(ACTION)`, several joined by `;`, `->` for "then"):
//! - `return(kill)`: kforge ends there as `kill -9` would: no cleanup, no unlock, its
//!   SSH children orphaned. `removal-drained=return(kill)`.
//! - `return(cut:NODE)`: from there on, NODE's SSH fails as a lost host's does (no new
//!   connection, not even over a shared one). `turn-drained=return(cut:lab-2)`.
//!
//! `2*off->1*return(kill)` lets a point pass twice and fires on the third hit (the third
//! stage, the third host's turn).

/// One boundary: its name and what has happened when it is hit.
pub struct Point {
    pub name: &'static str,
    pub after: &'static str,
}

/// Every boundary kforge can be stopped at, in the order an apply meets them.
pub const POINTS: &[Point] = &[
    Point { name: "bundle-read", after: "the secrets bundle was read and reconciled, before it is saved" },
    Point { name: "bundle-saved", after: "the reconciled bundle was saved, before any host is contacted" },
    Point { name: "removal-drained", after: "a departing node was cordoned and drained" },
    Point { name: "removal-member-removed", after: "a departing controller's etcd member was removed" },
    Point { name: "removal-revoked", after: "a departing node's kubelet certificate was revoked in the API" },
    Point { name: "removal-reset", after: "a departing node's host was reset" },
    Point { name: "removal-node-deleted", after: "a departing node's Node was deleted" },
    Point { name: "hand-over", after: "the removals went through and foreign units were handed over (stopped)" },
    Point { name: "stage-start", after: "a stage is about to start (each stage is a hit)" },
    Point { name: "turn-drained", after: "a node was cordoned and drained for its turn, before its phases" },
    Point { name: "turn-restarted", after: "a phase of a host changed files and restarted units, before its gate" },
    Point { name: "turn-gated", after: "a phase's gate passed on a host" },
    Point { name: "turn-uncordoned", after: "a node was uncordoned at the end of its turn" },
    Point { name: "etcd-member-added", after: "a joining controller was added to etcd as a learner" },
    Point { name: "etcd-joiner-started", after: "a joining controller's etcd started, before its promotion" },
    Point { name: "etcd-promoted", after: "a joining controller's member was promoted to voter, before its gate" },
    Point { name: "finish", after: "every stage ran, before the hosts' records are finished" },
];

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    static CUT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

    pub fn at(point: &str) {
        debug_assert!(super::POINTS.iter().any(|p| p.name == point), "{point} is not in POINTS");
        let Some(action) = fail::eval(point, |arg| arg.unwrap_or_default()) else {
            // Every pass in the log, so a matrix entry's hit count can be read off a run.
            eprintln!("(failpoint {point} passed)");
            return;
        };
        match action.split_once(':') {
            None if action == "kill" => {
                eprintln!("failpoint {point}: kill -9");
                let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
                std::process::abort();
            }
            Some(("cut", node)) => {
                eprintln!("failpoint {point}: {node}'s SSH cut from here on");
                CUT.lock().unwrap().insert(node.to_string());
            }
            _ => panic!("failpoint {point}: unknown action `{action}` (kill, cut:NODE)"),
        }
    }

    pub fn is_cut(node: &str) -> bool {
        CUT.lock().unwrap().contains(node)
    }

    /// Arm the points `FAILPOINTS` names; kept for the life of the process.
    pub fn setup() -> Box<dyn std::any::Any> {
        Box::new(fail::FailScenario::setup())
    }
}

#[cfg(feature = "failpoints")]
pub use armed::{at, is_cut, setup};

/// A boundary: nothing in a build without failpoints.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn at(_point: &str) {}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn is_cut(_node: &str) -> bool {
    false
}

/// Nothing to arm in a build without failpoints.
#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Box<dyn std::any::Any> {
    Box::new(())
}
