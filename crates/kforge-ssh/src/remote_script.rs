//! What one host runs for one phase of an apply: a [`PhaseWork`] (kforge-core's one
//! phase order, shared with the bootstrap script) holding only what the host's facts
//! say is missing, rendered by kforge-core's one step renderer.

pub use kforge_core::render::phase::{PhaseWork, Restart};
use kforge_core::render::steps::to_shell;

/// The script an apply runs for `work` on one host.
pub fn render(work: &PhaseWork) -> String {
    to_shell(&["kforge apply: one phase on one host. Generated.".into()], &work.steps())
}

/// A restart an apply runs and waits for, marked pending until it succeeded.
pub fn restart(unit: &str, inputs: String, reload: Option<String>) -> Restart {
    // Apply starts joiners after their servers and waits: a join that fails is the
    // apply's failure to report.
    Restart { unit: unit.into(), inputs, reload, when_changed: false, no_block: false, joins: None }
}
