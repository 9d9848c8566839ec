//! The bootstrap script: the node's plan as steps, safe to re-run.
//!
//! It expects the plan's files to be in place already (cloud-init `write_files`, the
//! rendered tree copied to `/`, or an apply), then per phase: put the files handed over
//! to a program after its first start (K3s's CA files) in place from where they were
//! staged, only where absent, install artifacts
//! (verified by sha256), reload systemd if the plan has unit files, run the phase's
//! guarded commands, enable its units and (re)start each one that is down or whose
//! inputs changed since it last started. On a converged host it changes nothing.

use super::steps::{Step, to_shell};
use crate::paths::BOOTSTRAP_SCRIPT;
use crate::plan::{ArtifactSource, FileKind, NodePlan, Phase};

pub const PATH: &str = BOOTSTRAP_SCRIPT;

/// The node's bootstrap as steps.
pub fn bootstrap_steps(node: &NodePlan) -> Vec<Step> {
    let mut steps = vec![
        Step::Need { command: "wg".into(), package: "wireguard-tools".into() },
        Step::Need { command: "nft".into(), package: "nftables".into() },
    ];
    // The commands kforge requires are named like their Debian/Ubuntu packages.
    steps.extend(node.required_commands.iter().map(|c| Step::Need { command: c.clone(), package: c.clone() }));
    let mut reloaded = false;
    for phase in &node.phases {
        steps.push(Step::Comment(format!("--- phase: {} ---", phase.phase.name())));
        steps.push(Step::Log(format!("{}: phase {}", node.node, phase.phase.name())));
        // Files a program owns after its first start: staged by write_files or the
        // rendered tree, put in place here only where absent.
        steps.extend(phase.files.iter().filter(|f| f.handed_over.is_some()).map(|f| Step::PlaceOnce {
            staged: f.placed_path(),
            dest: f.path.clone(),
            mode: f.mode,
            owner: f.owner.clone(),
        }));
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
        if !phase.units.is_empty() && !reloaded && node.files().any(|f| f.kind == FileKind::SystemdUnit) {
            steps.push(Step::DaemonReload);
            reloaded = true;
        }
        steps.extend(phase.commands.iter().cloned().map(Step::Run));
        for u in phase.units.iter().filter(|u| u.start) {
            if u.enable {
                steps.push(Step::Enable(u.name.clone()));
            }
            steps.push(Step::Restart {
                unit: u.name.clone(),
                inputs: node.unit_inputs(u),
                reload: u.reload_command.clone(),
                when_changed: true,
                no_block: phase.phase == Phase::Datastore,
                joins: u.joins.clone(),
            });
        }
    }
    steps.push(Step::Log(format!("{}: bootstrap finished", node.node)));
    steps
}

/// Render the bootstrap script for one node.
pub fn render_bootstrap(cluster: &str, node: &NodePlan) -> String {
    let header = [
        format!("kforge bootstrap of node {} (cluster {}). Generated; safe to re-run.", node.node, cluster),
        "The files of the plan must already be in place (cloud-init write_files or the rendered tree).".into(),
    ];
    to_shell(&header, &bootstrap_steps(node))
}
