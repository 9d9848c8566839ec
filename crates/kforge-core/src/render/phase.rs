//! What one phase does on one host, in the one order every delivery uses.
//!
//! The bootstrap script (user-data, a rendered tree) and an apply over SSH both run a
//! node's phases as [`PhaseWork`]: the bootstrap with everything in it, guarded so a
//! re-run changes nothing; an apply with only what the host's facts say is missing.
//! Either way the order is the same: leftovers cleaned, restarts marked pending,
//! files and artifacts put in place, systemd reloaded, the manifest recorded (before
//! any unit starts, so a host whose unit took its port is still known as kforge's),
//! guarded commands, units enabled, units (re)started, digests recorded.

use super::steps::Step;
use crate::paths::MANIFEST;
use crate::plan::{PlannedCommand, PlannedFile};

/// A unit the phase (re)starts.
#[derive(Debug, Clone)]
pub struct Restart {
    pub unit: String,
    /// The digest of its inputs (`NodePlan::unit_inputs`), recorded on the host.
    pub inputs: String,
    /// Try this first while the unit runs (reload instead of restart).
    pub reload: Option<String>,
    /// Only when the unit is down or ran with other inputs (the bootstrap's re-runs).
    pub when_changed: bool,
    /// Queue the restart without waiting (an etcd member needs its peers).
    pub no_block: bool,
    /// Ready once it has joined this server (`Step::Restart::joins`).
    pub joins: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct PhaseWork {
    pub clean_temp_files: Vec<String>,
    /// Each restart is marked pending before the files change and cleared once it
    /// succeeded, so a crash in between restarts the unit on the next apply.
    pub pending_marks: bool,
    /// Handed-over files staged by the delivery, put in place where absent.
    pub place_once: Vec<PlannedFile>,
    /// Artifact checks and downloads (`Fetch`, `Require`, `ArchCheck`, `OnArch`).
    pub artifacts: Vec<Step>,
    pub writes: Vec<PlannedFile>,
    /// Files written unless they hold exactly the plan already (the bootstrap's).
    pub ensures: Vec<PlannedFile>,
    /// (path, the unit it installs when it is a unit file).
    pub removes: Vec<(String, Option<String>)>,
    pub daemon_reload: bool,
    pub manifest_json: Option<String>,
    pub commands: Vec<PlannedCommand>,
    pub enables: Vec<String>,
    pub restarts: Vec<Restart>,
    /// (path, sha256) of every file the host now holds as planned: the digest cache.
    pub digests: Vec<(String, String)>,
}

impl PhaseWork {
    pub fn is_empty(&self) -> bool {
        self.clean_temp_files.is_empty()
            && self.place_once.is_empty()
            && self.artifacts.is_empty()
            && self.writes.is_empty()
            && self.ensures.is_empty()
            && self.removes.is_empty()
            && !self.daemon_reload
            && self.manifest_json.is_none()
            && self.commands.is_empty()
            && self.enables.is_empty()
            && self.restarts.is_empty()
            && self.digests.is_empty()
    }

    pub fn steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self.clean_temp_files.iter().cloned().map(Step::CleanTemp).collect();
        if self.pending_marks {
            steps.extend(self.restarts.iter().map(|r| match r.reload {
                Some(_) => Step::MarkPendingReload(r.unit.clone()),
                None => Step::MarkPending(r.unit.clone()),
            }));
        }
        steps.extend(self.place_once.iter().map(|f| Step::PlaceOnce {
            staged: f.placed_path(),
            dest: f.path.clone(),
            mode: f.mode,
            owner: f.owner.clone(),
        }));
        steps.extend(self.artifacts.iter().cloned());
        steps.extend(self.writes.iter().cloned().map(|f| match f.handed_over {
            Some(_) => Step::WriteOnce(f),
            None => Step::Write(f),
        }));
        steps.extend(self.ensures.iter().cloned().map(Step::Ensure));
        steps.extend(self.removes.iter().map(|(path, unit)| Step::Remove { path: path.clone(), unit: unit.clone() }));
        if self.daemon_reload {
            steps.push(Step::DaemonReload);
        }
        if let Some(json) = &self.manifest_json {
            steps.push(Step::RecordManifest { path: MANIFEST.into(), json: json.clone(), unless_same: false });
        }
        steps.extend(self.commands.iter().cloned().map(Step::Run));
        steps.extend(self.enables.iter().cloned().map(Step::Enable));
        for r in &self.restarts {
            steps.push(Step::Restart {
                unit: r.unit.clone(),
                inputs: r.inputs.clone(),
                reload: r.reload.clone(),
                when_changed: r.when_changed,
                no_block: r.no_block,
                joins: r.joins.clone(),
            });
            if self.pending_marks {
                steps.push(Step::ClearPending(r.unit.clone()));
            }
        }
        if !self.digests.is_empty() {
            steps.push(Step::RecordDigests(self.digests.clone()));
        }
        steps
    }
}
