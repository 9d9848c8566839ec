//! Stage 4 of the pipeline: the plan — per node, per phase, what must be true.
//!
//! Files (path, mode, owner, content), artifacts (binaries with their digest and
//! source), units (enable/start, what restarts them) and guarded commands. Executors
//! deliver a plan (directory tree, cloud-init, SSH); they never decide what is in it.
//! Content is kept out of serialized output: `plan -o json` shows size and hash only.

use std::sync::Arc;

use serde::Serialize;

use crate::hashing::sha256_hex;
use crate::spec::Role;

/// Ordered phases with a barrier between them (k0sctl's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Artifacts,
    Mesh,
    Firewall,
    Datastore,
    ControlPlane,
    Workers,
    Addons,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Artifacts,
        Phase::Mesh,
        Phase::Firewall,
        Phase::Datastore,
        Phase::ControlPlane,
        Phase::Workers,
        Phase::Addons,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Artifacts => "artifacts",
            Phase::Mesh => "mesh",
            Phase::Firewall => "firewall",
            Phase::Datastore => "datastore",
            Phase::ControlPlane => "control-plane",
            Phase::Workers => "workers",
            Phase::Addons => "addons",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub path: String,
    /// Octal permission bits, e.g. `0600`.
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub owner: String,
    pub size: usize,
    pub sha256: String,
    /// Holds key material: never shown, always 0600.
    pub secret: bool,
    #[serde(skip)]
    pub content: Arc<[u8]>,
}

impl PlannedFile {
    pub fn new(path: impl Into<String>, mode: u32, content: impl Into<Vec<u8>>) -> PlannedFile {
        let content: Vec<u8> = content.into();
        PlannedFile {
            path: path.into(),
            mode,
            owner: "root:root".into(),
            size: content.len(),
            sha256: sha256_hex(&content),
            secret: false,
            content: content.into(),
        }
    }

    /// A file holding key material: mode 0600 whatever was asked.
    pub fn secret(path: impl Into<String>, content: impl Into<Vec<u8>>) -> PlannedFile {
        PlannedFile { secret: true, ..PlannedFile::new(path, 0o600, content) }
    }

    pub fn short_hash(&self) -> &str {
        &self.sha256[..12]
    }
}

/// Where an artifact's bytes come from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum ArtifactSource {
    Url { url: String },
    Path { path: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedArtifact {
    pub name: String,
    pub dest: String,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub sha256: Option<String>,
    pub source: ArtifactSource,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedUnit {
    pub name: String,
    pub enable: bool,
    /// Files whose change restarts (or reloads) the unit.
    pub restart_on: Vec<String>,
    /// Apply changes without a restart (e.g. `wg syncconf` keeps tunnels up).
    pub reload_command: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedCommand {
    pub description: String,
    /// Shell command line.
    pub run: String,
    /// Skip when this shell test succeeds (makes the command idempotent).
    pub unless: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhasePlan {
    pub phase: Phase,
    pub files: Vec<PlannedFile>,
    pub artifacts: Vec<PlannedArtifact>,
    pub units: Vec<PlannedUnit>,
    pub commands: Vec<PlannedCommand>,
}

impl PhasePlan {
    fn new(phase: Phase) -> PhasePlan {
        PhasePlan { phase, files: Vec::new(), artifacts: Vec::new(), units: Vec::new(), commands: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.artifacts.is_empty() && self.units.is_empty() && self.commands.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub node: String,
    pub role: Role,
    pub mesh_ip: String,
    pub endpoint: Option<String>,
    /// OS packages the host needs (Debian/Ubuntu names).
    pub packages: Vec<String>,
    pub phases: Vec<PhasePlan>,
}

impl NodePlan {
    pub fn new(node: &str, role: Role, mesh_ip: String, endpoint: Option<String>) -> NodePlan {
        NodePlan { node: node.into(), role, mesh_ip, endpoint, packages: Vec::new(), phases: Vec::new() }
    }

    /// The phase's plan, created in phase order on first use.
    pub fn phase(&mut self, phase: Phase) -> &mut PhasePlan {
        let at = match self.phases.binary_search_by_key(&phase, |p| p.phase) {
            Ok(i) => i,
            Err(i) => {
                self.phases.insert(i, PhasePlan::new(phase));
                i
            }
        };
        &mut self.phases[at]
    }

    pub fn files(&self) -> impl Iterator<Item = &PlannedFile> {
        self.phases.iter().flat_map(|p| p.files.iter())
    }
}

/// A mesh config for an access peer (a laptop), delivered to the operator.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPlan {
    pub peer: String,
    pub mesh_ip: String,
    pub config: PlannedFile,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub cluster: String,
    pub distribution: String,
    pub api: String,
    /// The server that initialises the cluster; it starts before the other servers.
    pub init_server: String,
    /// UDP port of the mesh on every node (preflight checks nothing else holds it).
    pub mesh_port: u16,
    pub nodes: Vec<NodePlan>,
    pub peers: Vec<PeerPlan>,
    /// Facts worth telling the operator (relayed pairs, artifacts that cannot travel).
    pub notes: Vec<String>,
}

fn octal<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{mode:04o}"))
}
