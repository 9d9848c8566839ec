//! Each Node's labels and taints as the cluster file gives them, set through the API
//! on the first control-plane node, for both distributions.
//!
//! A kubelet's `--node-labels` and `--register-with-taints` (K3s's `node-label` and
//! `node-taint`) reach a Node only when it registers: a label changed on a running node
//! never arrives, and one dropped from the file is never taken off. K3s's ServiceLB
//! label is the costly case: a node that stops publishing 80/443 would keep it and keep
//! getting LoadBalancer traffic its firewall drops. So the list is a file (a node
//! joining or leaving, or a label changed, changes the phase), applied with
//! `kf_node_labels` (render/sh/steps.sh): each line set with `--overwrite`, and what the
//! list as last applied had and this one lacks taken off.

use crate::plan::{PlannedCommand, PlannedFile};

pub const LIST: &str = "/etc/kforge/node-labels";
/// The list as last applied: what the next change compares with.
pub const APPLIED: &str = "/var/lib/kforge/node-labels.applied";

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// `KEY=VALUE`.
    Label(String),
    /// `KEY=VALUE:EFFECT` (or `KEY:EFFECT`).
    Taint(String),
}

/// The list's file and the command that applies it with `kubectl` (`None` when no node
/// gets anything). `why` says where the lines come from, for `kforge explain`.
pub fn plan(
    marks: &[(String, Mark)],
    kubectl: &str,
    why: Vec<(String, String)>,
) -> Option<(PlannedFile, PlannedCommand)> {
    if marks.is_empty() {
        return None;
    }
    let lines: String = marks
        .iter()
        .map(|(node, m)| match m {
            Mark::Label(l) => format!("{node} label {l}\n"),
            Mark::Taint(t) => format!("{node} taint {t}\n"),
        })
        .collect();
    let file = PlannedFile::new(LIST, 0o644, lines).about(
        "Each node's labels and taints as kforge gives them to its Node (one per line: NODE label|taint VALUE).",
        "kforge's labelling step, through the API (kubectl label / kubectl taint); what the file drops is taken off",
        why,
    );
    let command = PlannedCommand {
        description: "label and taint each Node as the file says (and take off what it dropped)".into(),
        run: format!("kf_node_labels {} {LIST} {APPLIED}", crate::render::shell_quote(kubectl)),
        unless: Some(format!("cmp -s {LIST} {APPLIED}")),
        // A Node that registered after the last run (its lines kept out of APPLIED):
        // every apply asks, so a run with nothing else to do still gives it its marks.
        recheck: Some(format!("cmp -s {LIST} {APPLIED}")),
    };
    Some((file, command))
}
