//! `kforge apply`: deliver a plan to hosts over SSH — phased, parallel, idempotent,
//! crash-safe, with a diff before it acts.
//!
//! ```text
//! facts (1 round trip/host) → preflight → lock → for each phase, hosts in parallel:
//!     upload changed artifacts → one script: mark pending restarts, write changed
//!     files (temp, fsync, rename), daemon-reload if units changed, run commands,
//!     restart/reload what changed, clear marks, record the manifest
//! → remove files kforge wrote before that the plan no longer has → unlock
//! ```
//!
//! A file is written only when its hash differs; a unit restarts only when one of its
//! inputs changed (or a previous apply died before restarting it: the pending mark).
//! Killing kforge at any point leaves old-or-new files and a mark; the next apply
//! finishes the job. A host that fails drops out; the others go on; exit is non-zero.

mod apply;
mod artifacts;
pub mod doctor;
pub use artifacts::find_boringtun;
pub mod etcd;
pub mod facts;
pub mod faults;
pub mod gitops;
mod lock;
pub mod membership;
mod preflight;
mod remote_script;
pub mod removal;
pub mod reset;
pub mod rollout;
pub mod ssh;
pub mod status;
pub mod verdict;

use std::path::PathBuf;

use serde::Serialize;

pub use apply::apply;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("preflight refused to continue; nothing was changed:\n{0}")]
    Preflight(String),
    #[error("{0}")]
    Setup(String),
}

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: String,
    pub host: String,
    pub user: String,
    pub port: u16,
}

/// Plans one node again for a host's capabilities (found by its facts; the second
/// argument is its `uname -m`), or says why the cluster file cannot serve that host.
pub type Replan<'a> =
    dyn Fn(&str, &str, &kforge_core::pipeline::HostCaps) -> Result<kforge_core::plan::NodePlan, String> + Sync + 'a;

pub struct ApplyOptions<'a> {
    pub targets: Vec<Target>,
    pub parallel: usize,
    pub dry_run: bool,
    pub ssh_config: Option<PathBuf>,
    /// Relative artifact paths are resolved against this (the cluster file's directory).
    pub base_dir: PathBuf,
    /// Where downloaded artifacts are cached by sha256.
    pub cache_dir: PathBuf,
    pub replan: &'a Replan<'a>,
    /// The upgrade rules over what every host runs now (each host's running releases):
    /// `Err` is the refusal, rendered at the cluster file's lines; nothing is touched.
    pub check_versions: &'a CheckVersions<'a>,
    /// Takes an etcd snapshot to the workstation before a control plane that runs is
    /// restarted (an upgrade), returning where it is; `None` where kforge cannot.
    pub snapshot: Option<&'a Snapshot<'a>>,
    /// Remove a departed controller's etcd member even when the members left would not
    /// keep quorum (refused otherwise, before anything is touched).
    pub force_quorum_loss: bool,
    /// Foreign units that hold what kforge needs (a port, the mesh port's WireGuard
    /// interface) and that the operator hands over: stopped and disabled, each said.
    pub hand_over: Vec<String>,
    /// A host carrying another cluster's record becomes this node: the record is
    /// replaced, the files it lists left alone (refused without it).
    pub replace_foreign_record: bool,
    /// What a drain may lose, as the operator accepted it (refused before any cordon
    /// otherwise): emptyDir data, pods no controller runs.
    pub drain: rollout::DrainLosses,
}

/// See [`ApplyOptions::check_versions`].
#[cfg(test)]
impl<'a> ApplyOptions<'a> {
    /// A real apply's options with nothing asked for: no hosts, no flags, no snapshot.
    pub(crate) fn for_tests(replan: &'a Replan<'a>, check_versions: &'a CheckVersions<'a>) -> ApplyOptions<'a> {
        ApplyOptions {
            targets: Vec::new(),
            parallel: 1,
            dry_run: false,
            ssh_config: None,
            base_dir: ".".into(),
            cache_dir: "/nonexistent".into(),
            replan,
            check_versions,
            snapshot: None,
            force_quorum_loss: false,
            hand_over: Vec::new(),
            replace_foreign_record: false,
            drain: rollout::DrainLosses::default(),
        }
    }
}

pub type CheckVersions<'a> = dyn Fn(&[kforge_core::upgrade::Running]) -> Result<(), String> + Sync + 'a;

/// See [`ApplyOptions::snapshot`].
pub type Snapshot<'a> = dyn Fn() -> Result<String, String> + Sync + 'a;

/// One step of a host's apply and how long it took (phases that changed something,
/// gates, drains).
#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub step: String,
    pub seconds: f64,
}

/// What happened (or, with `--dry-run`, would happen) on one host.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostReport {
    pub node: String,
    pub converged: bool,
    pub error: Option<String>,
    /// The host's CPU architecture as its facts found it (`uname -m`).
    pub arch: String,
    pub userspace_wireguard: bool,
    pub files_added: Vec<String>,
    pub files_changed: Vec<String>,
    pub files_removed: Vec<String>,
    pub artifacts_uploaded: Vec<String>,
    /// OS packages installed here (with `--dry-run`: to install), as the facts found
    /// them missing (`packages::for_node`).
    pub packages_installed: Vec<String>,
    pub units_restarted: Vec<String>,
    pub units_reloaded: Vec<String>,
    pub temp_files_cleaned: usize,
    /// Steps run again, though no file changed, because what they set up was undone
    /// outside kforge (`PlannedCommand::recheck`).
    pub repaired: Vec<String>,
    /// Files a program owns since its first start (K3s's CA files) that differ from
    /// the plan on the host: left as they are, each with the command that changes it.
    pub kept: Vec<String>,
    /// What ran on the host before this apply: component → the release it reported.
    pub versions_before: std::collections::BTreeMap<String, String>,
    /// Each step that did something here, in order, with its duration.
    pub steps: Vec<StepTime>,
    /// How apply came to manage a host it did not converge itself (None: it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeover: Option<Takeover>,
    /// Foreign units stopped and disabled because they held what kforge needs
    /// (`--hand-over`), each with what it held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub handed_over: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Takeover {
    /// Its bootstrap (user-data, a rendered tree) converged it and recorded it.
    FromBootstrap,
    /// Another tool (or a person) set it up exactly as planned; kforge recorded it.
    Adopted,
}

impl HostReport {
    pub fn files_written(&self) -> usize {
        self.files_added.len() + self.files_changed.len()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    pub cluster: String,
    pub dry_run: bool,
    pub hosts: Vec<HostReport>,
    /// Where the etcd snapshot taken before the control plane moved was saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Nodes removed from the cluster (the file no longer names them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<removal::RemovalReport>,
    /// What preflight found that would refuse a real apply (a dry run never refuses:
    /// it shows these and the rest of its diff, and exits non-zero).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<String>,
}

impl ApplyReport {
    pub fn all_converged(&self) -> bool {
        self.hosts.iter().all(|h| h.converged)
            && self.removals.iter().all(|r| r.error.is_none())
            && self.refusals.is_empty()
    }
}
