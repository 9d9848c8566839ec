//! The bootstrap script: the node's plan as steps, safe to re-run.
//!
//! It expects the plan's files to be in place already (cloud-init `write_files`, the
//! rendered tree copied to `/`, or an apply), then records the host's manifest (so a
//! later `kforge apply` takes the host over instead of refusing it) and runs each
//! phase as [`PhaseWork`] — the same order an apply uses: put the files handed over to
//! a program after its first start (K3s's CA files) in place from where they were
//! staged, only where absent, install artifacts (verified by sha256), reload systemd
//! if the plan has unit files, run the phase's guarded commands, enable its units and
//! (re)start each one that is down or whose inputs changed since it last started. On a
//! converged host it changes nothing.
//!
//! What apply learns from a host's facts, the bootstrap decides on the host: a kernel
//! without a WireGuard module runs the plan kforge makes for such a host (userspace
//! boringtun-cli, `NodePlan::without_wireguard_module`). How the script ended (done, or
//! the step that failed and why) is recorded for `kforge status` and `kforge doctor`.

use super::phase::{PhaseWork, Restart};
use super::steps::{Step, render_steps, to_shell};
use crate::manifest::{Delivery, Manifest};
use crate::paths::{BOOTSTRAP_OUTCOME, BOOTSTRAP_SCRIPT, MANIFEST};
use crate::pipeline::BORINGTUN_DEST;
use crate::plan::{ArtifactSource, FileKind, NodePlan, Phase, PhasePlan, Plan};

pub const PATH: &str = BOOTSTRAP_SCRIPT;

/// The node's bootstrap as steps.
pub fn bootstrap_steps(plan: &Plan, node: &NodePlan) -> Vec<Step> {
    let mut steps = vec![
        Step::RecordOutcome(BOOTSTRAP_OUTCOME.into()),
        // The plan's package list, before anything needs it (apply installs the same).
        Step::Install(node.packages.clone()),
    ];
    // The record first: every file is in place (write_files, the tree) before the
    // script runs, and a unit that takes its port marks the host as kforge's.
    let record = |n: &NodePlan| Step::RecordManifest {
        path: MANIFEST.into(),
        json: Manifest::planned(plan, n, Delivery::Bootstrap).to_json(),
        unless_same: true,
    };
    steps.push(match node.without_wireguard_module.as_deref() {
        Some(userspace) => {
            Step::Branch { test: "kf_wg_kernel".into(), then: vec![record(node)], otherwise: vec![record(userspace)] }
        }
        None => record(node),
    });
    let kernel = phases_of(node, node);
    match node.without_wireguard_module.as_deref() {
        None => steps.extend(kernel.into_iter().flat_map(|(_, s)| s)),
        Some(userspace) => {
            let mut otherwise = phases_of(userspace, node);
            if kernel.iter().map(|(p, _)| p).ne(otherwise.iter().map(|(p, _)| p)) {
                // Not expected (the variant changes the mesh phase only): branch once.
                let all = |v: Vec<(Phase, Vec<Step>)>| v.into_iter().flat_map(|(_, s)| s).collect();
                steps.push(Step::Branch { test: "kf_wg_kernel".into(), then: all(kernel), otherwise: all(otherwise) });
            } else {
                // Phases that read the same either way are written once.
                for ((_, then), (_, other)) in kernel.into_iter().zip(otherwise.drain(..)) {
                    if render_steps(&then) == render_steps(&other) {
                        steps.extend(then);
                    } else {
                        steps.push(Step::Branch { test: "kf_wg_kernel".into(), then, otherwise: other });
                    }
                }
            }
        }
    }
    steps.push(Step::Log(format!("{}: bootstrap finished", node.node)));
    steps
}

/// Each phase of `variant` as the bootstrap runs it. `boot` is the plan the delivery
/// placed the files of: a file only `variant` has is written by the script itself.
fn phases_of(variant: &NodePlan, boot: &NodePlan) -> Vec<(Phase, Vec<Step>)> {
    let has_units = variant.files().any(|f| f.kind == FileKind::SystemdUnit);
    let mut reloaded = false;
    variant
        .phases
        .iter()
        .map(|phase| {
            let mut work = bootstrap_work(variant, phase, boot);
            work.daemon_reload = (!phase.units.is_empty() || !work.ensures.is_empty()) && !reloaded && has_units;
            reloaded |= work.daemon_reload;
            let mut steps = vec![
                Step::Comment(format!("--- phase: {} ---", phase.phase.name())),
                Step::Log(format!("{}: phase {}", variant.node, phase.phase.name())),
            ];
            steps.extend(work.steps());
            (phase.phase, steps)
        })
        .collect()
}

/// One phase of the bootstrap: everything the phase has, each step guarded.
fn bootstrap_work(node: &NodePlan, phase: &PhasePlan, boot: &NodePlan) -> PhaseWork {
    let placed = |path: &str| boot.files().any(|f| f.path == path);
    PhaseWork {
        // Files a program owns after its first start: staged by write_files or the
        // rendered tree, put in place here only where absent.
        place_once: phase.files.iter().filter(|f| f.handed_over.is_some()).cloned().collect(),
        artifacts: artifact_steps(phase),
        ensures: phase.files.iter().filter(|f| !placed(&f.path)).cloned().collect(),
        commands: phase.commands.clone(),
        enables: phase.units.iter().filter(|u| u.start && u.enable).map(|u| u.name.clone()).collect(),
        restarts: phase
            .units
            .iter()
            .filter(|u| u.start)
            .map(|u| Restart {
                unit: u.name.clone(),
                inputs: node.unit_inputs(u),
                reload: u.reload_command.clone(),
                when_changed: true,
                no_block: phase.phase == Phase::Datastore,
                joins: u.joins.clone(),
            })
            .collect(),
        ..PhaseWork::default()
    }
}

/// The phase's artifacts: each verified where it is, or fetched by URL.
fn artifact_steps(phase: &PhasePlan) -> Vec<Step> {
    let mut steps = Vec::new();
    // An artifact with one source per architecture, for a host of unknown
    // architecture: the host must be one of them, and takes its own.
    let mut checked: Vec<&str> = Vec::new();
    for a in phase.artifacts.iter().filter(|a| a.arch.is_some()) {
        if checked.contains(&a.dest.as_str()) {
            continue;
        }
        checked.push(&a.dest);
        let archs = phase.artifacts.iter().filter(|b| b.dest == a.dest).filter_map(|b| b.arch);
        let setting = a.setting.rsplit_once('.').map_or(a.setting.as_str(), |(s, _)| s);
        steps.push(Step::ArchCheck {
            name: a.name.clone(),
            setting: setting.to_string(),
            archs: archs.map(|b| b.name().to_string()).collect(),
        });
    }
    for a in &phase.artifacts {
        let step = match (&a.source, &a.sha256) {
            (ArtifactSource::Url { url }, Some(sum)) => Step::Fetch {
                name: a.name.clone(),
                url: url.clone(),
                sha256: sum.clone(),
                dest: a.dest.clone(),
                mode: a.mode,
            },
            (ArtifactSource::Url { url }, None) => Step::Require {
                name: a.name.clone(),
                dest: a.dest.clone(),
                sha256: None,
                hint: format!("{url} has no sha256 in the cluster file, so hosts do not fetch it themselves"),
            },
            (ArtifactSource::Path { path }, sum) => Step::Require {
                name: a.name.clone(),
                dest: a.dest.clone(),
                sha256: sum.clone(),
                hint: format!(
                    "it comes from {path} on the workstation; bake it into the image, run kforge apply, or pin {}.url + sha256",
                    a.setting
                ),
            },
        };
        steps.push(match a.arch {
            Some(arch) => Step::OnArch { arch: arch.name().to_string(), step: Box::new(step) },
            None => step,
        });
    }
    // A host without a WireGuard module runs boringtun-cli, which no package carries.
    if phase.files.iter().any(|f| f.path == crate::pipeline::WG_USERSPACE_DROPIN)
        && !phase.artifacts.iter().any(|a| a.dest == BORINGTUN_DEST)
    {
        steps.push(Step::Require {
            name: "boringtun-cli".into(),
            dest: BORINGTUN_DEST.into(),
            sha256: None,
            hint: "this kernel has no WireGuard module, so the mesh runs the userspace boringtun-cli: bake it into the image (cargo install boringtun-cli --locked), or run kforge apply, which uploads the workstation's".into(),
        });
    }
    steps
}

/// Render the bootstrap script for one node.
pub fn render_bootstrap(plan: &Plan, node: &NodePlan) -> String {
    let header = [
        format!("kforge bootstrap of node {} (cluster {}). Generated; safe to re-run.", node.node, plan.cluster),
        "The files of the plan must already be in place (cloud-init write_files or the rendered tree).".into(),
    ];
    to_shell(&header, &bootstrap_steps(plan, node))
}
