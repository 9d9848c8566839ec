//! Facts: what a host is and has, gathered in one SSH round trip, read-only.

use std::collections::{BTreeMap, BTreeSet};

use kforge_core::component::Component;
use kforge_core::packages::Package;
use kforge_core::plan::NodePlan;
use kforge_core::upgrade::Running;

use crate::ssh::{Host, SshError, sh_array};

#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub os: String,
    pub arch: String,
    pub init: String,
    pub hostname: String,
    pub machine_id: String,
    /// Host clock, seconds since the epoch.
    pub clock: i64,
    /// Swap devices active (/proc/swaps).
    pub swap_devices: u32,
    /// 2 on a unified (cgroup v2) host, 1 on cgroup v1, 0 when unknown.
    pub cgroup_version: u8,
    /// The kernel's memory cgroup controller is on (None: not reported).
    pub memory_cgroup: Option<bool>,
    pub wireguard_kernel: bool,
    pub boringtun: bool,
    /// Path → sha256 of the planned files and artifacts that exist on the host.
    pub hashes: BTreeMap<String, String>,
    /// Unit → (active, enabled).
    pub units: BTreeMap<String, (bool, bool)>,
    /// Unit → what `systemctl is-active` said (`active`, `failed`, `activating`…).
    pub unit_states: BTreeMap<String, String>,
    /// `table inet kforge` is loaded.
    pub firewall_table: bool,
    /// This host holds a K3s server's datastore (it founded or joined a cluster).
    pub k3s_datastore: bool,
    /// This host holds etcd member data (`/var/lib/etcd/member`): its etcd ran here.
    pub etcd_data: bool,
    /// Peer mesh address → reached over the mesh (asked only with peers: status).
    pub reach: BTreeMap<String, bool>,
    /// Units whose inputs kforge changed but did not get to restart.
    pub pending: BTreeSet<String>,
    /// Of those, the units a reload finishes (the run that died would have reloaded them).
    pub pending_reload: BTreeSet<String>,
    /// What kforge wrote before: path → sha256.
    pub manifest: BTreeMap<String, String>,
    /// Who recorded that manifest (None: the host has none).
    pub manifest_by: Option<kforge_core::manifest::Delivery>,
    /// The cluster and node that manifest belongs to (the node empty in records from
    /// before it was written).
    pub manifest_owner: Option<(String, String)>,
    /// How the node's bootstrap script last ended, when it ran here.
    pub bootstrap: Option<BootstrapOutcome>,
    /// What cloud-init reported as errors of its last boot (`result.json`).
    pub cloud_init_errors: Vec<String>,
    /// Who holds each listening socket (`tcp/6443` → holders): program and unit.
    pub holders: BTreeMap<String, Vec<Holder>>,
    /// Listening sockets as `tcp/6443`, `udp/51820`.
    pub listening: BTreeSet<String>,
    /// Leftover temp files of an interrupted apply.
    pub stale_temp_files: Vec<String>,
    /// Of every package kforge installs, those the host lacks (`Package::proof` not
    /// found): asked of all, since the plan a host gets depends on its facts.
    pub absent_packages: Vec<kforge_core::packages::Package>,
    /// The host has apt-get, to install them with.
    pub apt: bool,
    /// The plan's recheck tests (`PlannedCommand::recheck`) that failed here: state
    /// outside kforge's files that was undone since the last apply.
    pub failed_rechecks: BTreeSet<String>,
    /// What each running program says it is: component → its `--version` line.
    pub running: BTreeMap<Component, String>,
    /// Every running program's answer by process (boot, pid, start time): id →
    /// `--version` line, for the workstation to remember.
    pub learned_versions: BTreeMap<String, String>,
}

impl NodeFacts {
    /// The packages `plan` needs that this host lacks.
    pub fn missing_packages(&self, plan: &NodePlan) -> Vec<Package> {
        plan.packages.iter().copied().filter(|p| self.absent_packages.contains(p)).collect()
    }

    /// The node's bootstrap failed here (or cloud-init failed before it could run it)
    /// and no apply has finished the host since: the step that failed, its error and
    /// cloud-init's own.
    pub fn bootstrap_failure(&self) -> Option<String> {
        let mut what = match &self.bootstrap {
            Some(BootstrapOutcome::Failed { step, error }) => format!("bootstrap failed at `{step}`: {error}"),
            None if !self.cloud_init_errors.is_empty() && self.manifest.is_empty() => {
                "cloud-init failed before the bootstrap ran".to_string()
            }
            _ => return None,
        };
        if !self.cloud_init_errors.is_empty() {
            what.push_str(&format!(" (cloud-init: {})", self.cloud_init_errors.join("; ")));
        }
        Some(what)
    }

    pub fn swap_on(&self) -> bool {
        self.swap_devices > 0
    }

    /// The releases running on this host, as the upgrade rules read them.
    pub fn running_versions(&self, node: &str) -> Running {
        let versions = self
            .running
            .iter()
            .filter_map(|(c, line)| Some((*c, kforge_core::upgrade::version_in(*c, line)?)))
            .collect();
        Running { node: node.into(), versions }
    }
}

/// `COMPONENT UNIT` for each planned unit that runs a component (and `runc PATH` where
/// containerd runs, since runc is a binary no unit runs): what the facts ask each
/// running program's version of.
fn running(plan: &NodePlan) -> Vec<String> {
    let mut v = Vec::new();
    for u in plan.units().filter(|u| u.start) {
        let c = Component::ALL.into_iter().find(|c| c.service() == Some(u.name.as_str()));
        let c = c.or_else(|| kforge_core::k3s::is_k3s_unit(&u.name).then_some(Component::K3s));
        if let Some(c) = c {
            v.push(format!("{} {}", c.key(), u.name));
        }
        if c == Some(Component::Containerd) {
            v.push(format!("{} {}", Component::Runc.key(), Component::Runc.install().dest));
        }
    }
    v
}

/// Every path whose hash the engine needs: planned files, artifacts, old manifest.
pub(crate) fn watched_paths(plan: &NodePlan) -> Vec<String> {
    let mut v: Vec<String> = plan.files().map(|f| f.path.clone()).collect();
    v.extend(plan.phases.iter().flat_map(|p| p.artifacts.iter().map(|a| a.dest.clone())));
    // Added after facts when the host turns out to need userspace WireGuard.
    v.push(kforge_core::pipeline::BORINGTUN_DEST.into());
    v.push(kforge_core::pipeline::WG_USERSPACE_DROPIN.into());
    // Added when the K3s server that would found the cluster joins the running one.
    v.push(kforge_core::k3s::REGISTRATION_CONF.into());
    v.push(kforge_core::paths::unit_file(kforge_core::k3s::REGISTRATION_UNIT));
    // The host's own bootstrap script, left by every apply.
    v.push(kforge_core::paths::BOOTSTRAP_SCRIPT.into());
    v
}

/// Every recheck test of the plan, commands' and units', deduplicated and sorted (the
/// facts report failures by index into this list).
fn rechecks(plan: &NodePlan) -> Vec<String> {
    let commands = plan.phases.iter().flat_map(|p| p.commands.iter().filter_map(|c| c.recheck.clone()));
    let units =
        plan.phases.iter().flat_map(|p| p.units.iter().filter_map(|u| u.recheck.as_ref().map(|r| r.test.clone())));
    commands.chain(units).collect::<BTreeSet<_>>().into_iter().collect()
}

/// The plan's units, and those a plan for this host's facts may add (the registration
/// balancer of a K3s server that joins instead of founding).
fn units(plan: &NodePlan) -> Vec<String> {
    let mut v: Vec<String> = plan.phases.iter().flat_map(|p| p.units.iter().map(|u| u.name.clone())).collect();
    if !v.iter().any(|u| u == kforge_core::k3s::REGISTRATION_UNIT) {
        v.push(kforge_core::k3s::REGISTRATION_UNIT.into());
    }
    v
}

const FACTS_SH: &str = include_str!("sh/facts.sh");

/// The one reader of a host's state, for apply, status, doctor and the upgrade rules;
/// `peers`: mesh addresses to reach over the mesh (status), none for apply.
pub fn gather(
    host: &Host,
    plan: &NodePlan,
    known: &BTreeMap<String, String>,
    cache: Cache,
) -> Result<NodeFacts, SshError> {
    gather_with(host, plan, &[], known, cache, "").map(|(f, _)| f)
}

/// Whether the facts may refresh the host's caches (digests, running releases): apply
/// does; the read-only commands (status, doctor) leave the host exactly as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    Update,
    Leave,
}

/// The facts and, in the same round trip, `then` (a command's own probes): their
/// output comes back apart.
/// `known`: what this host's running processes already answered (by process id), so
/// they are not asked again.
pub fn gather_with(
    host: &Host,
    plan: &NodePlan,
    peers: &[&str],
    known: &BTreeMap<String, String>,
    cache: Cache,
    then: &str,
) -> Result<(NodeFacts, String), SshError> {
    let paths = watched_paths(plan);
    let dirs: Vec<String> = paths
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d.to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rechecks = rechecks(plan);
    let script = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\nKF_READ_ONLY={}\n{FACTS_SH}\necho {FACTS_END}\n{then}",
        sh_array("KF_PATHS", &paths),
        sh_array("KF_UNITS", &units(plan)),
        sh_array("KF_PACKAGES", &Package::ALL.map(|p| p.install_arg())),
        sh_array("KF_DIRS", &dirs),
        sh_array("KF_RECHECKS", &rechecks),
        sh_array("KF_RUNNING", &running(plan)),
        sh_array("KF_PEERS", &peers.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
        sh_array("KF_KNOWN_VERSIONS", &known.iter().map(|(id, line)| format!("{id} {line}")).collect::<Vec<_>>()),
        u8::from(cache == Cache::Leave),
    );
    let out = host.run_script("gather facts", &script)?;
    let (facts, rest) = out.split_once(&format!("{FACTS_END}\n")).unwrap_or((&out, ""));
    Ok((parse(facts, &rechecks), rest.to_string()))
}

/// Ends the facts' output when a command's own probes follow.
const FACTS_END: &str = "KF-FACTS-END";

fn parse(out: &str, rechecks: &[String]) -> NodeFacts {
    let mut f = NodeFacts::default();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=').filter(|(k, _)| !k.contains(' ')) {
            match k {
                "os" => f.os = v.trim().into(),
                "arch" => f.arch = v.into(),
                "init" => f.init = v.into(),
                "hostname" => f.hostname = v.into(),
                "machine_id" => f.machine_id = v.into(),
                "clock" => f.clock = v.parse().unwrap_or(0),
                "swap" => f.swap_devices = v.trim().parse::<u32>().unwrap_or(0),
                // cgroup2fs: the unified hierarchy; tmpfs holding v1 controllers otherwise.
                "cgroup_fs" => {
                    f.cgroup_version = match v.trim() {
                        "cgroup2fs" => 2,
                        "tmpfs" => 1,
                        _ => 0,
                    }
                }
                "memory_cgroup" => f.memory_cgroup = Some(v == "yes"),
                "wg_kernel" => f.wireguard_kernel = v == "yes",
                "boringtun" => f.boringtun = v == "yes",
                "firewall" => f.firewall_table = v == "yes",
                "apt" => f.apt = v == "yes",
                "k3s_datastore" => f.k3s_datastore = v == "yes",
                "etcd_data" => f.etcd_data = v == "yes",
                _ => {}
            }
            continue;
        }
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("file"), Some(sum), Some(path)) => {
                f.hashes.insert(path.into(), sum.into());
            }
            (Some("unit"), Some(name), rest) => {
                let rest = rest.unwrap_or("");
                let mut s = rest.split_whitespace();
                let state = s.next().unwrap_or("unknown");
                let enabled = s.next() == Some("enabled");
                f.units.insert(name.into(), (state == "active", enabled));
                f.unit_states.insert(name.into(), state.into());
            }
            (Some("pending"), Some(name), kind) => {
                f.pending.insert(name.into());
                // An empty mark (a kforge before marks said which) is a restart.
                if kind.map(str::trim) == Some("reload") {
                    f.pending_reload.insert(name.into());
                }
            }
            (Some("missing-package"), Some(name), None) => {
                if let Some(p) = kforge_core::packages::Package::ALL.into_iter().find(|p| p.name() == name) {
                    f.absent_packages.push(p);
                }
            }
            (Some("manifest"), Some(b64), None) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                    f.manifest = m.files;
                    f.manifest_by = Some(m.by);
                    f.manifest_owner = Some((m.cluster, m.node));
                }
            }
            (Some("running"), Some(key), Some(line)) => {
                if let Some(c) = Component::ALL.into_iter().find(|c| c.key() == key) {
                    f.running.insert(c, line.into());
                }
            }
            (Some("version-id"), Some(id), Some(line)) => {
                f.learned_versions.insert(id.into(), line.into());
            }
            (Some("reach"), Some(ip), Some(ok)) => {
                f.reach.insert(ip.into(), ok == "yes");
            }
            (Some("listen"), Some(sock), rest) => {
                f.listening.insert(sock.into());
                // `listen SOCK PROGRAM UNIT` when the holder is known (`-`: no unit).
                let mut w = rest.unwrap_or("").split_whitespace();
                if let Some(program) = w.next() {
                    let unit = w.next().filter(|u| *u != "-").map(String::from);
                    let holder = Holder { program: program.into(), unit };
                    let list = f.holders.entry(sock.into()).or_default();
                    if !list.contains(&holder) {
                        list.push(holder);
                    }
                }
            }
            (Some("bootstrap"), Some(b64), None) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                f.bootstrap = BootstrapOutcome::parse(&String::from_utf8_lossy(&bytes));
            }
            (Some("cloud-init"), Some(b64), None) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default();
                f.cloud_init_errors = cloud_init_errors(&bytes);
            }
            (Some("tmp"), Some(path), None) => f.stale_temp_files.push(path.into()),
            (Some("recheck-failed"), Some(i), None) => {
                if let Some(test) = i.parse::<usize>().ok().and_then(|i| rechecks.get(i)) {
                    f.failed_rechecks.insert(test.clone());
                }
            }
            _ => {}
        }
    }
    f
}

pub use kforge_core::manifest::Manifest;

/// A process listening on a socket kforge needs, and the systemd unit it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The program (`boringtun-cli`, `kubelet`), or `wireguard:IFACE` for a kernel
    /// WireGuard interface (no process holds its socket).
    pub program: String,
    pub unit: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.program.strip_prefix("wireguard:"), &self.unit) {
            (Some(iface), Some(u)) => write!(f, "WireGuard interface {iface} of {u}"),
            (Some(iface), None) => write!(f, "WireGuard interface {iface}"),
            (None, Some(u)) => write!(f, "{} of {u}", self.program),
            (None, None) => write!(f, "{} (no systemd unit)", self.program),
        }
    }
}

/// How the node's bootstrap script last ended (`paths::BOOTSTRAP_OUTCOME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapOutcome {
    Done,
    Failed {
        step: String,
        error: String,
    },
    /// It had failed, and an apply finished the host since.
    Superseded,
}

impl BootstrapOutcome {
    fn parse(text: &str) -> Option<BootstrapOutcome> {
        let line = text.lines().next()?;
        let mut w = line.splitn(3, '\t');
        match (w.next(), w.next(), w.next()) {
            (Some("ok"), _, _) => Some(BootstrapOutcome::Done),
            (Some("superseded"), _, _) => Some(BootstrapOutcome::Superseded),
            (Some("failed"), Some(step), error) => {
                Some(BootstrapOutcome::Failed { step: step.to_string(), error: error.unwrap_or("").trim().to_string() })
            }
            _ => None,
        }
    }
}

/// The errors cloud-init's `result.json` lists (`{"v1": {"errors": [...]}}`).
fn cloud_init_errors(json: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else { return Vec::new() };
    v.pointer("/v1/errors")
        .and_then(|e| e.as_array())
        .map(|a| a.iter().map(|e| e.as_str().map(String::from).unwrap_or_else(|| e.to_string())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_facts_transcript() {
        let out = "os=debian 12\narch=x86_64\ninit=systemd\nhostname=lab-1\nmachine_id=abc\nclock=1700000000\nswap=0\ncgroup_fs=tmpfs\nmemory_cgroup=no\nwg_kernel=no\nboringtun=yes\n\
            file 0123 /etc/wireguard/kforge0.conf\nunit k3s.service active enabled\nunit wg-quick@kforge0.service inactive disabled\n\
            pending k3s.service\npending wg-quick@kforge0.service reload\nmissing-package libnginx-mod-stream\napt=yes\nrunning kubelet Kubernetes v1.36.3\nrunning etcd etcd Version: 3.6.16\nlisten tcp/22\nlisten udp/51820\ntmp /etc/.x.kforge-tmp-12\nrecheck-failed 1\nrecheck-failed 7\n";
        let f = parse(out, &["test a".into(), "test b".into()]);
        assert_eq!(f.hostname, "lab-1");
        assert!(!f.wireguard_kernel && f.boringtun && !f.swap_on());
        assert_eq!(f.cgroup_version, 1);
        assert_eq!(f.memory_cgroup, Some(false));
        assert_eq!(f.hashes["/etc/wireguard/kforge0.conf"], "0123");
        assert_eq!(f.units["k3s.service"], (true, true));
        assert_eq!(f.units["wg-quick@kforge0.service"], (false, false));
        assert!(f.pending.contains("k3s.service"));
        assert!(!f.pending_reload.contains("k3s.service"), "an empty mark is a restart");
        assert!(
            f.pending.contains("wg-quick@kforge0.service") && f.pending_reload.contains("wg-quick@kforge0.service")
        );
        assert!(f.listening.contains("udp/51820"));
        assert_eq!(f.stale_temp_files, ["/etc/.x.kforge-tmp-12"]);
        assert_eq!(f.absent_packages, [kforge_core::packages::Package::NginxStream]);
        assert!(f.apt);
        let r = f.running_versions("lab-1");
        assert_eq!(r.versions[&Component::Kubelet].to_string(), "1.36.3");
        assert_eq!(r.versions[&Component::Etcd].to_string(), "3.6.16");
        // Index 7 names no test this plan has: ignored, never a wrong repair.
        assert_eq!(f.failed_rechecks.iter().collect::<Vec<_>>(), ["test b"]);
    }

    #[test]
    fn reads_who_holds_each_socket_and_how_the_bootstrap_ended() {
        use base64::Engine;
        let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        let out = format!(
            "listen udp/51820 boringtun-cli wg-quick@wg0.service\nlisten udp/51820 wireguard:wg0 wg-quick@wg0.service\n\
             listen tcp/10250 kubelet -\nlisten tcp/22\nbootstrap {}\ncloud-init {}\nmanifest {}\n",
            b64(
                "failed\tcheck kubelet at /usr/local/bin/kubelet\t/usr/local/bin/kubelet (kubelet) does not match its sha256 00\n"
            ),
            b64(
                r#"{"v1": {"datasource": "DataSourceNoCloud", "errors": ["('scripts_user', RuntimeError('Runparts: 1 failures'))"]}}"#
            ),
            b64(r#"{"cluster":"c","node":"n","files":{"/etc/a":"1"},"by":"bootstrap"}"#),
        );
        let f = parse(&out, &[]);
        assert_eq!(f.holders["udp/51820"].len(), 2);
        assert_eq!(f.holders["udp/51820"][0].to_string(), "boringtun-cli of wg-quick@wg0.service");
        assert_eq!(f.holders["udp/51820"][1].to_string(), "WireGuard interface wg0 of wg-quick@wg0.service");
        assert_eq!(f.holders["tcp/10250"][0].to_string(), "kubelet (no systemd unit)");
        assert!(f.listening.contains("tcp/22") && !f.holders.contains_key("tcp/22"));
        assert_eq!(f.manifest_by, Some(kforge_core::manifest::Delivery::Bootstrap));
        assert_eq!(
            f.bootstrap_failure().unwrap(),
            "bootstrap failed at `check kubelet at /usr/local/bin/kubelet`: /usr/local/bin/kubelet (kubelet) does not match its sha256 00 (cloud-init: ('scripts_user', RuntimeError('Runparts: 1 failures')))"
        );
        // Once an apply finished the host, the failure is history.
        let done = parse(&format!("bootstrap {}\n", b64("superseded\tkforge apply finished the host\n")), &[]);
        assert_eq!(done.bootstrap, Some(BootstrapOutcome::Superseded));
        assert_eq!(done.bootstrap_failure(), None);
    }
}
