//! The lab's forge (`lab up --forge`): one more machine on the lab's "internet" serving
//! a bare git repository over SSH with its own host key, as a public forge would. Pods
//! reach it the way they reach any forge: out through their node. The cluster file's
//! `gitops` follows its repository, with the forge's host key pinned from the key the
//! lab generated for it (never scanned).

use std::net::Ipv4Addr;

use kforge_core::spec::{Artifact, Cluster, GitOps, GitOpsEngine, ImageArchive};

use crate::images::FLUX_IMAGES;
use crate::{LabError, LabState, sh};

pub const NAME: &str = "forge";
/// The repository on the forge (a path on the machine).
pub const REPOSITORY: &str = "/srv/git/fleet.git";
/// The directory of the repository the lab cluster applies.
pub const PATH: &str = "./clusters/lab";
/// Short, so a pushed commit reaches the cluster within a test's patience.
pub const INTERVAL: &str = "20s";

const SETUP: &str = include_str!("scripts/forge.sh");

/// The forge machine's address and SSH host key (`ssh-ed25519 AAAA…`).
pub struct Forge {
    pub ip: Ipv4Addr,
    pub host_key: String,
}

impl Forge {
    pub fn url(&self) -> String {
        format!("ssh://git@{}{REPOSITORY}", self.ip)
    }
}

/// Make `cluster` follow the forge's repository with Flux (images and install manifest
/// from the lab's components cache).
pub fn follow(cluster: &mut Cluster, forge: &Forge) {
    cluster.spec.gitops = Some(GitOps {
        engine: GitOpsEngine::Flux,
        repository: forge.url(),
        branch: "main".into(),
        path: PATH.into(),
        interval: INTERVAL.into(),
        known_hosts: vec![format!("{} {}", forge.ip, forge.host_key)],
        install: vec![Artifact { url: None, path: Some("./bin/flux-install.yaml".into()), ..Artifact::default() }],
        controllers: Some(FLUX_IMAGES.iter().map(|i| i.controller.to_string()).collect()),
    });
    for img in FLUX_IMAGES {
        cluster.spec.images.push(ImageArchive {
            name: img.name(),
            url: None,
            path: Some(format!("./images/{}.tar", img.controller)),
            sha256: None,
            amd64: None,
            arm64: None,
        });
    }
}

/// Set the forge up over SSH (git user, repository, deploy-key helper).
pub fn setup(state: &LabState, log: &dyn Fn(&str)) -> Result<(), LabError> {
    let config = state.dir.join("ssh_config").display().to_string();
    let lab_key = std::fs::read_to_string(state.dir.join("id_ed25519.pub"))
        .map_err(|e| LabError::io(&state.dir.join("id_ed25519.pub"), e))?;
    let script = format!("bash -s -- '{}' <<'KFORGE_FORGE'\n{SETUP}\nKFORGE_FORGE", lab_key.trim());
    let out = sh::run("ssh", &["-F", &config, NAME, &script])?;
    log(out.trim());
    Ok(())
}
