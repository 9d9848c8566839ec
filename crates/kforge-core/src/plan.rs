//! Stage 4 of the pipeline: the plan — per node, per phase, what must be true.
//!
//! Files (path, mode, owner, content), artifacts (binaries with their digest and
//! source), units (enable/start, what restarts them) and guarded commands. Executors
//! deliver a plan (directory tree, cloud-init, SSH); they never decide what is in it.
//! Content is kept out of serialized output: `plan -o json` shows size and hash only.

use std::sync::Arc;

use serde::Serialize;

use crate::hashing::sha256_hex;
use crate::spec::Roles;

/// Ordered phases with a barrier between them (k0sctl's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Artifacts,
    Mesh,
    Firewall,
    Datastore,
    ControlPlane,
    /// What acts through the API server (the hard way's controller-manager and
    /// scheduler): after every API server, since in an upgrade these may move only
    /// once every API server runs the new release.
    Controllers,
    /// What pods run on (containerd, runc, CNI) and the workers' API load balancer:
    /// running before the kubelets start, so images can be imported into containerd.
    Runtime,
    Workers,
    Addons,
    /// The GitOps engine and what it follows, once the cluster runs (`spec.gitops`).
    GitOps,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Artifacts,
        Phase::Mesh,
        Phase::Firewall,
        Phase::Datastore,
        Phase::ControlPlane,
        Phase::Controllers,
        Phase::Runtime,
        Phase::Workers,
        Phase::Addons,
        Phase::GitOps,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Artifacts => "artifacts",
            Phase::Mesh => "mesh",
            Phase::Firewall => "firewall",
            Phase::Datastore => "datastore",
            Phase::ControlPlane => "control-plane",
            Phase::Controllers => "controllers",
            Phase::Runtime => "runtime",
            Phase::Workers => "workers",
            Phase::Addons => "addons",
            Phase::GitOps => "gitops",
        }
    }
}

/// How hosts take turns through a stage of phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Turns {
    /// Every host at once (up to `--parallel`): nothing here interrupts a workload.
    Together,
    /// On a running cluster, a host that would restart something goes alone and waits
    /// for its gate before the next one; hosts coming up for the first time go together
    /// (an etcd cluster forms only with its members starting at once), the initialising
    /// server first.
    OneAtATime,
    /// Like `OneAtATime`, `spec.rollout.workersAtOnce` at a time, and a host whose
    /// kubelet or container runtime would restart is cordoned and drained first and
    /// uncordoned once its gate passes.
    Drained,
}

/// A run of phases a host goes through in one turn, and how hosts take turns.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub phases: Vec<Phase>,
    pub turns: Turns,
}

/// Apply's order: the phases as stages. Controllers move one at a time (etcd, then
/// every API server, then controller-manager and scheduler, each behind a barrier);
/// each worker's runtime and kubelet move together, drained.
pub fn stages() -> Vec<Stage> {
    use Phase::*;
    let stage = |phases: &[Phase], turns| Stage { phases: phases.to_vec(), turns };
    vec![
        stage(&[Artifacts], Turns::Together),
        stage(&[Mesh], Turns::Together),
        stage(&[Firewall], Turns::Together),
        stage(&[Datastore], Turns::OneAtATime),
        stage(&[ControlPlane], Turns::OneAtATime),
        stage(&[Controllers], Turns::OneAtATime),
        stage(&[Runtime, Workers], Turns::Drained),
        stage(&[Addons], Turns::Together),
        stage(&[GitOps], Turns::Together),
    ]
}

/// A health check a phase waits on after it changed a host, before apply goes on (to
/// the next host of a stage taken in turns, or to the next stage): a restarted etcd
/// member healthy with a leader, an API server's /readyz, a node Ready at the release.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    /// What passing means, for progress lines and the report.
    pub description: String,
    /// Read-only shell test, passing when it exits 0; retried every 2 s.
    pub test: String,
    /// Runs on a control-plane host with the admin kubeconfig (`Plan::kubectl`), not on
    /// the host itself (a worker has no admin credentials).
    pub on_api_host: bool,
    pub timeout_secs: u64,
}

/// What reads a planned file, as far as executors care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    /// Read by a program kforge starts (restarted through `restart_on`).
    Config,
    /// A systemd unit or drop-in: systemd needs a daemon-reload after it changes.
    SystemdUnit,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    pub path: String,
    pub kind: FileKind,
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
    /// The learner's view (`kforge explain`): what the file is, who reads it, and why
    /// its important fields have their values.
    #[serde(skip)]
    pub about: Option<Arc<About>>,
    /// Written only where it is absent: after its first start the program named here
    /// owns the file, and kforge never rewrites (or removes) it.
    #[serde(rename = "handedOver", skip_serializing_if = "Option::is_none")]
    pub handed_over: Option<Handover>,
}

/// Where rendered trees and user-data stage handed-over files for the bootstrap.
pub const HANDOVER_DIR: &str = "/var/lib/kforge/handover";

/// A file a program takes over after its first start. K3s reconciles its CA files,
/// service-account key and encryption config with its datastore and exits when a file
/// on disk differs and is newer, which is what a rewrite after `k3s certificate
/// rotate-ca` would be. A rendered tree and user-data stage such a file under
/// [`HANDOVER_DIR`] (copying it to its path would overwrite), and the bootstrap puts it
/// in place only where it is absent; apply writes it only where it is absent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    /// Who owns the file after its first start (`K3s`).
    pub to: String,
    /// The command that changes it from then on (`k3s certificate rotate-ca`).
    pub change_with: String,
}

/// What `kforge explain NODE PATH` prints about a file.
#[derive(Debug, Clone, Default)]
pub struct About {
    pub what: String,
    pub read_by: String,
    /// (field, why it has its value), in the order worth reading.
    pub fields: Vec<(String, String)>,
}

impl PlannedFile {
    pub fn new(path: impl Into<String>, mode: u32, content: impl Into<Vec<u8>>) -> PlannedFile {
        let content: Vec<u8> = content.into();
        PlannedFile {
            path: path.into(),
            kind: FileKind::Config,
            mode,
            owner: "root:root".into(),
            size: content.len(),
            sha256: sha256_hex(&content),
            secret: false,
            content: content.into(),
            about: None,
            handed_over: None,
        }
    }

    /// Where a rendered tree or cloud-init's `write_files` puts this file: its own path,
    /// or for a handed-over file a staging path the bootstrap installs it from only
    /// where the file itself is absent.
    pub fn placed_path(&self) -> String {
        match &self.handed_over {
            Some(_) => format!("{HANDOVER_DIR}{}", self.path),
            None => self.path.clone(),
        }
    }

    /// Written once, where absent; from then on `to` owns it (see [`Handover`]).
    pub fn handed_over(mut self, to: &str, change_with: &str) -> Self {
        self.handed_over = Some(Handover { to: to.into(), change_with: change_with.into() });
        self
    }

    /// Attach the explanation `kforge explain` prints for this file.
    pub fn about(mut self, what: impl Into<String>, read_by: impl Into<String>, fields: Vec<(String, String)>) -> Self {
        self.about = Some(Arc::new(About { what: what.into(), read_by: read_by.into(), fields }));
        self
    }

    /// A systemd unit or drop-in (mode 0644): changing it needs a daemon-reload.
    pub fn systemd(path: impl Into<String>, content: impl Into<Vec<u8>>) -> PlannedFile {
        PlannedFile { kind: FileKind::SystemdUnit, ..PlannedFile::new(path, 0o644, content) }
    }

    /// The unit file of `unit` under /etc/systemd/system.
    pub fn unit(unit: &str, content: impl Into<Vec<u8>>) -> PlannedFile {
        PlannedFile::systemd(crate::paths::unit_file(unit), content)
    }

    /// A unit file rendered from `file`, explained by its own flags and settings.
    pub fn from_unit(unit: &str, file: &crate::systemd::UnitFile, what: impl Into<String>) -> PlannedFile {
        PlannedFile::unit(unit, file.render()).about(what, "systemd", file.explained())
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
    /// A named stand-in, not the real program (see `Artifact::stand_in`).
    pub stand_in: bool,
    #[serde(serialize_with = "octal")]
    pub mode: u32,
    pub sha256: Option<String>,
    pub source: ArtifactSource,
    /// Where the cluster file configures it (`artifacts.k3s`, `images[1]`), for hints.
    #[serde(skip)]
    pub setting: String,
    /// The CPU architecture this source is for; `None`: every architecture. A node
    /// planned without knowing its architecture (user-data) gets one entry per
    /// architecture, and its bootstrap picks by `uname -m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<crate::spec::Arch>,
}

impl PlannedArtifact {
    /// The artifact the cluster file configures at `artifacts.NAME`, installed at `dest`,
    /// for a host of `arch`: its one source, or the one for `arch`; with `arch` unknown,
    /// every architecture's (the host picks). Empty when nothing serves `arch` (the
    /// cluster file's check refuses a node declared so; apply refuses such a host).
    pub fn from_spec(
        name: &str,
        dest: &str,
        mode: u32,
        a: &crate::spec::Artifact,
        arch: Option<crate::spec::Arch>,
    ) -> Vec<PlannedArtifact> {
        PlannedArtifact::per_arch(name, &format!("artifacts.{name}"), dest, mode, a, arch)
    }

    /// One artifact per source of `a` a host of `arch` may take (every one when the
    /// architecture is not known: the bootstrap picks on the host).
    fn per_arch(
        name: &str,
        setting: &str,
        dest: &str,
        mode: u32,
        a: &crate::spec::Artifact,
        arch: Option<crate::spec::Arch>,
    ) -> Vec<PlannedArtifact> {
        a.sources()
            .into_iter()
            .filter(|(for_arch, _)| for_arch.is_none() || arch.is_none() || *for_arch == arch)
            .map(|(for_arch, source)| {
                let one = crate::spec::Artifact {
                    url: source.url,
                    path: source.path,
                    sha256: source.sha256,
                    stand_in: a.stand_in.clone(),
                    ..crate::spec::Artifact::default()
                };
                let setting = match for_arch {
                    Some(arch) => format!("{setting}.{arch}"),
                    None => setting.to_string(),
                };
                PlannedArtifact { arch: for_arch, ..PlannedArtifact::configured(name, setting, dest, mode, &one) }
            })
            .collect()
    }

    /// Image archive `images[index]`, uploaded into `dir` (0644) under its host file
    /// name: the archive for the host's architecture, when the image names one per
    /// architecture.
    pub fn image(
        index: usize,
        img: &crate::spec::ImageArchive,
        dir: &str,
        arch: Option<crate::spec::Arch>,
    ) -> Vec<PlannedArtifact> {
        let dest = format!("{dir}/{}", img.host_file());
        let name = format!("image {}", img.name);
        PlannedArtifact::per_arch(&name, &format!("images[{index}]"), &dest, 0o644, &img.artifact(), arch)
    }

    fn configured(name: &str, setting: String, dest: &str, mode: u32, a: &crate::spec::Artifact) -> PlannedArtifact {
        let source = match (&a.url, &a.path) {
            (Some(url), _) => ArtifactSource::Url { url: url.clone() },
            (None, Some(path)) => ArtifactSource::Path { path: path.clone() },
            (None, None) => unreachable!("validated: an artifact has a url or a path"),
        };
        PlannedArtifact {
            name: name.into(),
            dest: dest.into(),
            stand_in: a.stand_in.is_some(),
            mode,
            sha256: a.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
            source,
            setting,
            arch: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedUnit {
    pub name: String,
    pub enable: bool,
    /// False for a component whose binary is a named stand-in: its unit is installed
    /// (and can be verified) but never enabled or started.
    pub start: bool,
    /// Files whose change restarts (or reloads) the unit.
    pub restart_on: Vec<String>,
    /// Apply changes without a restart (e.g. `wg syncconf` keeps tunnels up).
    pub reload_command: Option<String>,
    /// State the running unit put in the kernel that something else can change while
    /// every file is still as kforge wrote it (a rule inserted into the loaded firewall
    /// table). Like `PlannedCommand::recheck`, an SSH apply evaluates the test on every
    /// host with the facts and, where it fails, reloads (or restarts) the unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recheck: Option<UnitRecheck>,
    /// The unit is ready only once it has joined this server (a K3s agent or joining
    /// server: Type=notify, ready after registering). A bootstrap on a fresh fleet boots
    /// every machine at once, so the script starts it without blocking, says it is
    /// waiting for the server, and succeeds: the unit keeps retrying on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joins: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitRecheck {
    /// Cheap, read-only shell test; success means the unit's state is as planned.
    pub test: String,
    /// What a failing test means, for the apply report ("its loaded rules differ …").
    pub drift: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedCommand {
    pub description: String,
    /// Shell command line.
    pub run: String,
    /// Skip when this shell test succeeds (makes the command idempotent).
    pub unless: Option<String>,
    /// A cheap, read-only shell test of state that lives outside kforge's files and that
    /// something else can undo (containerd's image store, a kernel setting). An SSH
    /// apply runs only the commands of phases it changed — except that it evaluates
    /// this test on every host at every apply, with the facts, and runs the command
    /// where the test fails: so `kforge apply` repairs the drift. The bootstrap script
    /// runs every guarded command anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recheck: Option<String>,
}

impl PlannedCommand {
    /// The command as one shell line, for every executor (bootstrap script and apply):
    /// `GUARD || { RUN; }`. The braces matter: `GUARD || a && b` would run `b` even when
    /// the guard holds. A compound guard is grouped too (`{ a && b; } || { RUN; }`),
    /// which is what it means and what shellcheck can verify.
    pub fn shell_line(&self) -> String {
        match &self.unless {
            Some(guard) if guard.contains("&&") || guard.contains("||") => {
                format!("{{ {guard}; }} || {{ {}; }}", self.run)
            }
            Some(guard) => format!("{guard} || {{ {}; }}", self.run),
            None => self.run.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PhasePlan {
    pub phase: Phase,
    pub files: Vec<PlannedFile>,
    pub artifacts: Vec<PlannedArtifact>,
    pub units: Vec<PlannedUnit>,
    pub commands: Vec<PlannedCommand>,
    /// Waited on after this phase changed the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

impl PhasePlan {
    fn new(phase: Phase) -> PhasePlan {
        PhasePlan {
            phase,
            files: Vec::new(),
            artifacts: Vec::new(),
            units: Vec::new(),
            commands: Vec::new(),
            gate: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.artifacts.is_empty() && self.units.is_empty() && self.commands.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub node: String,
    #[serde(serialize_with = "roles_text")]
    pub roles: Roles,
    /// Runs the control plane (k3s server, hardway controller).
    pub control_plane: bool,
    pub mesh_ip: String,
    pub endpoint: Option<String>,
    /// OS packages the host needs (Debian/Ubuntu names, `packages::for_node`): apply
    /// installs those its facts find missing, the bootstrap those it finds missing.
    pub packages: Vec<crate::packages::Package>,
    /// The host must have swap off (a kubelet refuses to run with it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub swap_forbidden: bool,
    /// A kubelet runs here that refuses cgroup v1 (Kubernetes 1.35+ unless the cluster
    /// file allows it): preflight refuses a cgroup v1 host.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub requires_cgroup_v2: bool,
    /// A kubelet runs here (K3s's, or the hard way's): it needs the kernel's memory
    /// cgroup, which Raspberry Pi OS boots with switched off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub requires_memory_cgroup: bool,
    /// The host's CPU architecture when known (the node's `arch`, or apply's facts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<crate::spec::Arch>,
    /// Paths another program owns on this host (K3s's CA files, service-account key and
    /// encryption config on every server): kforge never removes them, even where an
    /// older kforge wrote them and the plan no longer has them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
    pub phases: Vec<PhasePlan>,
    /// The same node on a host whose kernel has no WireGuard module (userspace
    /// boringtun-cli), planned alongside a plan made without the host's facts: the
    /// bootstrap script decides between the two on the host at boot.
    #[serde(skip)]
    pub without_wireguard_module: Option<Box<NodePlan>>,
}

impl NodePlan {
    pub fn new(node: &str, roles: Roles, mesh_ip: String, endpoint: Option<String>) -> NodePlan {
        NodePlan {
            node: node.into(),
            control_plane: roles.is_control_plane(),
            roles,
            mesh_ip,
            endpoint,
            packages: Vec::new(),
            swap_forbidden: false,
            requires_cgroup_v2: false,
            requires_memory_cgroup: false,
            arch: None,
            released: Vec::new(),
            phases: Vec::new(),
            without_wireguard_module: None,
        }
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

    pub fn units(&self) -> impl Iterator<Item = &PlannedUnit> {
        self.phases.iter().flat_map(|p| p.units.iter())
    }

    /// A digest of what `unit` runs with: the planned digest of each of its inputs.
    /// Scripts record it when they (re)start the unit, so a re-run restarts only a
    /// unit whose inputs changed (or that is down). Artifacts without a pinned sha256
    /// count by path only: apply restarts those itself when it uploads a new one.
    pub fn unit_inputs(&self, unit: &PlannedUnit) -> String {
        let mut text = String::new();
        for path in &unit.restart_on {
            let file = self.files().find(|f| &f.path == path).map(|f| f.sha256.as_str());
            let artifact =
                || self.phases.iter().flat_map(|p| p.artifacts.iter()).find(|a| &a.dest == path)?.sha256.as_deref();
            text.push_str(&format!("{path} {}\n", file.or_else(artifact).unwrap_or("-")));
        }
        sha256_hex(text.as_bytes())[..16].to_string()
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
    /// The releases this plan deploys (`hardway`/`k3s` → the file's version, `etcd` →
    /// its artifact's release): recorded in each host's manifest beside its files.
    pub releases: std::collections::BTreeMap<String, String>,
    pub api: String,
    /// The server that initialises the cluster; it starts before the other servers.
    pub init_server: String,
    /// UDP port of the mesh on every node (preflight checks nothing else holds it).
    pub mesh_port: u16,
    /// The mesh's WireGuard interface on every node (a removed node's reset takes it).
    pub mesh_interface: String,
    pub nodes: Vec<NodePlan>,
    pub peers: Vec<PeerPlan>,
    /// Facts worth telling the operator (relayed pairs, artifacts that cannot travel).
    pub notes: Vec<String>,
    /// kubectl as the cluster admin on a control-plane host (cordon, drain, gates that
    /// ask the API); `None` where no real API server runs (stand-ins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubectl: Option<String>,
    /// `spec.rollout`, resolved: workers at once and the drain timeout.
    pub workers_at_once: usize,
    pub drain_timeout_secs: u64,
    /// Nodes apply deployed that the file no longer names: each is removed from the
    /// cluster before the stages run (which then drop it from every other host).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<RemovalPlan>,
    /// The hard way's etcd, where a real one runs: apply keeps its membership to the
    /// plan's controllers (a departed controller's member removed before its host is
    /// wiped, a stale one removed), always keeping quorum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdMembership>,
}

/// What apply needs to keep etcd's member list to the plan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMembership {
    /// Each planned member: name and peer URL.
    pub members: Vec<(String, String)>,
    /// etcdctl's environment file on every controller (endpoints, client certificate).
    pub env_file: String,
    /// Where a joining controller's etcd finds the members it joins.
    pub join_env: String,
}

/// How apply removes one node (docs/nodes.md), in the order it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovalPlan {
    pub node: String,
    #[serde(serialize_with = "roles_text")]
    pub roles: Roles,
    /// How apply reaches the host to reset it (recorded when it was deployed).
    pub ssh: crate::spec::NodeSsh,
    /// Why apply refuses this removal, if it does (nothing is touched then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// What apply does, in order: the executor walks these same values.
    #[serde(serialize_with = "removal_steps_text")]
    pub steps: Vec<RemovalStep>,
    /// Applied before the Node is deleted, so a kubelet still running there can never
    /// register it again: the revocation addon (hard way).
    #[serde(skip)]
    pub revocation: Option<String>,
    /// Its etcd member's peer URL (a hard-way controller): removed before the host is
    /// reset, when the members left keep quorum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_peer_url: Option<String>,
}

/// One step of a node's removal. `plan` lists them (`says` and `detail`), the dry run,
/// the progress lines and the report say `says`, and the executor
/// (kforge-ssh's removal.rs) walks them in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovalStep {
    /// A node that runs workloads: cordoned and drained, its budgets respected.
    Drain,
    /// A hard-way controller: its etcd member removed, refused if quorum would be lost.
    RemoveMember { peer_url: String },
    /// Hard way: its kubelet certificates (their ids) revoked in the API.
    Revoke { ids: Vec<String> },
    /// K3s: its kubelet certificate is K3s's own (said; nothing runs).
    CannotRevoke,
    /// Everything kforge installed taken off the host, over SSH (as `kforge reset`).
    Reset { user: String, host: String },
    /// Its Node deleted, after the reset (a kubelet still running could register it again).
    DeleteNode { node: String },
    /// The stages below: every other host drops its mesh peer, firewall entries (and API
    /// server from the balancer).
    OthersDropIt { control_plane: bool },
    /// At the end: the secrets bundle forgets it.
    BundleForgets,
}

impl RemovalStep {
    /// The step in a few words: progress lines, the report, the dry run.
    pub fn says(&self) -> String {
        match self {
            RemovalStep::Drain => "cordon and drain".into(),
            RemovalStep::RemoveMember { .. } => "remove its etcd member".into(),
            RemovalStep::Revoke { .. } => "revoke its kubelet certificate in the API".into(),
            RemovalStep::CannotRevoke => {
                "its kubelet certificate is K3s's own: K3s cannot revoke it (its Node is deleted)".into()
            }
            RemovalStep::Reset { .. } => "reset the host".into(),
            RemovalStep::DeleteNode { node } => format!("delete Node {node}"),
            RemovalStep::OthersDropIt { control_plane: true } => {
                "every other host drops its mesh peer, firewall entries and API server from the balancer (the stages below)".into()
            }
            RemovalStep::OthersDropIt { control_plane: false } => {
                "every other host drops its mesh peer and firewall entries (the stages below)".into()
            }
            RemovalStep::BundleForgets => "the secrets bundle forgets its keys, mesh address and certificates".into(),
        }
    }

    /// What `plan` adds after `says`: which member, which certificates, which host.
    pub fn detail(&self) -> Option<String> {
        match self {
            RemovalStep::Drain => Some("(its PodDisruptionBudgets respected)".into()),
            RemovalStep::RemoveMember { peer_url } => {
                Some(format!("({peer_url}), refused if the members left would lose quorum"))
            }
            RemovalStep::Revoke { ids } => Some(format!(
                "({}: ValidatingAdmissionPolicy kforge-revoked-credentials)",
                ids.iter().map(|id| &id[..id.len().min(23)]).collect::<Vec<_>>().join(", ")
            )),
            RemovalStep::Reset { user, host } => {
                Some(format!("over SSH ({user}@{host}): everything kforge installed goes (as kforge reset)"))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for RemovalStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail() {
            Some(detail) => write!(f, "{} {detail}", self.says()),
            None => f.write_str(&self.says()),
        }
    }
}

fn removal_steps_text<S: serde::Serializer>(steps: &[RemovalStep], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(steps.iter().map(|step| step.to_string()))
}

fn roles_text<S: serde::Serializer>(roles: &Roles, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(roles)
}

fn octal<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{mode:04o}"))
}
