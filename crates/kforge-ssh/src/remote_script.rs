//! What one host runs for one phase of an apply, decided by the engine and rendered
//! by kforge-core's one step renderer. Restarts are marked pending before the writes
//! and the marks cleared only after the restart succeeded, so a crash in between
//! restarts the unit on the next apply; the manifest is recorded right after the
//! writes, before any unit starts.

use kforge_core::paths::MANIFEST;
use kforge_core::plan::{PlannedCommand, PlannedFile};
use kforge_core::render::steps::{Step, to_shell};

/// A unit this phase restarts (or reloads, when `reload` is given and it runs).
pub struct Restart {
    pub unit: String,
    /// The digest of its inputs (`NodePlan::unit_inputs`), recorded on the host.
    pub inputs: String,
    pub reload: Option<String>,
}

#[derive(Default)]
pub struct PhaseScript {
    pub clean_temp_files: Vec<String>,
    pub writes: Vec<PlannedFile>,
    /// (path, the unit it installs when it is a unit file).
    pub removes: Vec<(String, Option<String>)>,
    pub daemon_reload: bool,
    pub commands: Vec<PlannedCommand>,
    pub restarts: Vec<Restart>,
    pub enables: Vec<String>,
    pub manifest_json: Option<String>,
    /// (path, sha256) of every file the host now holds as planned: the digest cache.
    pub digests: Vec<(String, String)>,
}

impl PhaseScript {
    pub fn steps(&self) -> Vec<Step> {
        let mut steps: Vec<Step> = self.clean_temp_files.iter().cloned().map(Step::CleanTemp).collect();
        steps.extend(self.restarts.iter().map(|r| Step::MarkPending(r.unit.clone())));
        steps.extend(self.writes.iter().cloned().map(|f| match f.handed_over {
            Some(_) => Step::WriteOnce(f),
            None => Step::Write(f),
        }));
        steps.extend(self.removes.iter().map(|(path, unit)| Step::Remove { path: path.clone(), unit: unit.clone() }));
        if self.daemon_reload {
            steps.push(Step::DaemonReload);
        }
        // Recorded as soon as the files are written, before anything starts: a host
        // whose apply died after a unit came up (and took its port) is still known as
        // kforge's, so the next apply does not refuse it as "port taken by another
        // program". What is left to do is in the pending marks.
        if let Some(json) = &self.manifest_json {
            steps.push(Step::RecordManifest { path: MANIFEST.into(), json: json.clone() });
        }
        steps.extend(self.commands.iter().cloned().map(Step::Run));
        steps.extend(self.enables.iter().cloned().map(Step::Enable));
        for r in &self.restarts {
            steps.push(Step::Restart {
                unit: r.unit.clone(),
                inputs: r.inputs.clone(),
                reload: r.reload.clone(),
                when_changed: false,
                // Apply starts joiners after their servers and waits: a join that
                // fails is the apply's failure to report.
                no_block: false,
                joins: None,
            });
            steps.push(Step::ClearPending(r.unit.clone()));
        }
        if !self.digests.is_empty() {
            steps.push(Step::RecordDigests(self.digests.clone()));
        }
        steps
    }

    pub fn render(&self) -> String {
        to_shell(&["kforge apply: one phase on one host. Generated.".into()], &self.steps())
    }
}
