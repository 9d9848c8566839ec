//! The pure pipeline end to end: spec + secrets → reconciled secrets → model → plan.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::firewall::{loaded_as_planned, render_firewall_unit, render_nftables};
use crate::hardway;
use crate::k3s;
use crate::mesh::render_wg_quick;
use crate::model::Model;
use crate::pki::PkiError;
use crate::plan::{NodePlan, PeerPlan, Phase, Plan, PlannedCommand, PlannedFile, PlannedUnit, UnitRecheck};
use crate::secrets::{ReconcileReport, SecretsBundle};
use crate::spec::{Cluster, DistributionKind};
use crate::wireguard::PrivateKey;

pub const FIREWALL_FILE: &str = "/etc/kforge/firewall.nft";
pub const FIREWALL_UNIT: &str = "kforge-firewall.service";
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-kforge.conf";
/// True when the kernel forwards IPv4, which pods and NAT relaying need.
const FORWARDING_ON: &str = "[ \"$(sysctl -n net.ipv4.ip_forward)\" = 1 ]";

/// Bring a bundle (or a new one) up to date with the spec: identity material
/// first, then the leaves whose requests depend on the model.
pub fn reconcile_secrets(
    spec: &Cluster,
    bundle: Option<SecretsBundle>,
    now: OffsetDateTime,
) -> Result<(SecretsBundle, ReconcileReport), PkiError> {
    let mut bundle = bundle.unwrap_or_else(|| SecretsBundle::empty(&spec.metadata.name));
    let mut report = bundle.reconcile_identity(spec, now)?;
    let model = Model::build(spec, &bundle);
    let requests = match spec.spec.distribution.kind {
        DistributionKind::K3s => k3s::cert_requests(&model),
        DistributionKind::Hardway => hardway::cert_requests(&model),
    };
    let certs = bundle.reconcile_certificates(spec, &requests, now)?;
    report.created.extend(certs.created);
    report.reissued.extend(certs.reissued);
    report.removed.extend(certs.removed);
    report.created.extend(bundle.revoke_departed(spec, now).created);
    Ok((bundle, report))
}

/// What planning needs to know about a host that the cluster file does not say.
/// `render` and cloud-init plan with the defaults; `apply` learns each host's from
/// its facts and plans that host again (executors never edit a plan).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCaps {
    /// No WireGuard kernel module: wg-quick runs the userspace boringtun-cli.
    pub userspace_wireguard: bool,
    /// boringtun-cli to upload (a workstation path) when the host lacks it.
    pub boringtun_upload: Option<String>,
    /// The host's CPU architecture (from `uname -m`): picks each artifact's source.
    pub arch: Option<crate::spec::Arch>,
    /// K3s: the server that would found the cluster joins the one that runs instead (its
    /// own datastore is gone — a reinstalled host — while another server's runs): a
    /// second `cluster-init` would found a second, empty etcd with the same CAs and
    /// token, which agents accept (split brain). Decided by apply from what the hosts
    /// run; a plan made without hosts founds.
    pub k3s_join_running: bool,
}

/// Why the cluster file cannot serve node `name` on a host whose `uname -m` is
/// `machine`: the node's `arch` says otherwise, or an artifact the node runs has no
/// source for the host's architecture. Each names the setting to fix.
pub fn host_arch_problems(spec: &Cluster, name: &str, machine: &str) -> Vec<crate::spec::Diagnostic> {
    use crate::spec::{Arch, Diagnostic};
    let Some((i, node)) = spec.spec.nodes.iter().enumerate().find(|(_, n)| n.name == name) else {
        return Vec::new();
    };
    let arch = Arch::from_uname(machine);
    let mut out = Vec::new();
    if let Some(declared) = node.arch.filter(|d| Some(*d) != arch) {
        out.push(
            Diagnostic::error(
                format!("spec.nodes[{i}].arch"),
                format!("node {name} is declared {declared}, but its host is {machine} (uname -m)"),
            )
            .help("correct the node's `arch` (or remove it: apply learns it from the host)"),
        );
    }
    for (setting, what, a, runs_on) in sourced(spec) {
        if !runs_on(node) || a.is_universal() {
            continue;
        }
        if arch.is_none_or(|arch| !a.serves(arch)) {
            let named = arch.map(|a| a.name()).unwrap_or(machine);
            out.push(
                Diagnostic::error(
                    format!("spec.{setting}"),
                    format!("no {named} source for {what}, but the host of {name} is {machine} (uname -m)"),
                )
                .help(format!("add `{named}: {{url: …, sha256: …}}` (or `path: …`) under spec.{setting}")),
            );
        }
    }
    out
}

/// A node runs it (or receives it).
pub type RunsOn<'c> = Box<dyn Fn(&crate::spec::Node) -> bool + 'c>;

/// Everything the file names a source for, with its setting (`artifacts.k3s`,
/// `images[0]`), how messages name it, and which nodes get it: the artifacts of the
/// components a node runs, and the image archives (every K3s node; hard-way workers).
pub fn sourced(spec: &Cluster) -> Vec<(String, String, crate::spec::Artifact, RunsOn<'_>)> {
    let kind = spec.spec.distribution.kind;
    let mut v: Vec<(String, String, crate::spec::Artifact, RunsOn<'_>)> = Vec::new();
    for (component, a) in spec.spec.artifacts.entries() {
        let key = component.key();
        v.push((
            format!("artifacts.{key}"),
            format!("`{key}`"),
            a.clone(),
            Box::new(move |n| component.runs_on(kind, &n.role)),
        ));
    }
    for (i, img) in spec.spec.images.iter().enumerate() {
        let receives: RunsOn<'_> = match kind {
            DistributionKind::K3s => Box::new(|_| true),
            DistributionKind::Hardway => Box::new(|n| n.role.has(crate::spec::Role::Worker)),
        };
        v.push((format!("images[{i}]"), format!("image `{}`", img.name), img.artifact(), receives));
    }
    v
}

/// Every node's plan (hosts with default capabilities), plus access peers' mesh
/// configs and notes for the operator.
pub fn build_plan(model: &Model<'_>, secrets: &SecretsBundle) -> Plan {
    let spec = &model.spec.spec;
    let iface = &spec.mesh.interface;
    let nodes = model.nodes().map(|(me, node)| plan_member(model, secrets, me, node, &HostCaps::default())).collect();

    let peers = model
        .peers()
        .map(|p| {
            let key = secrets.wireguard.get(&p.name).and_then(|k| PrivateKey::parse(k));
            PeerPlan {
                peer: p.name.clone(),
                mesh_ip: p.mesh_ip.to_string(),
                config: PlannedFile::secret(format!("{iface}.conf"), render_wg_quick(model, p, key.as_ref())),
            }
        })
        .collect();

    Plan {
        cluster: model.spec.metadata.name.clone(),
        distribution: format!("{} {}", spec.distribution.kind.name(), spec.distribution.version),
        releases: std::iter::once((spec.distribution.kind.name().to_string(), spec.distribution.version.clone()))
            .chain(
                crate::upgrade::etcd_release(model.spec)
                    .filter(|_| spec.distribution.kind == DistributionKind::Hardway)
                    .map(|v| ("etcd".to_string(), v.to_string())),
            )
            .collect(),
        api: model.api_url(),
        init_server: model.first_server().name.clone(),
        mesh_port: spec.mesh.port,
        mesh_interface: spec.mesh.interface.clone(),
        nodes,
        peers,
        notes: notes(model),
        kubectl: admin_kubectl(model),
        workers_at_once: spec
            .rollout
            .workers_at_once
            .of(model.nodes().filter(|(_, n)| n.role.runs_workloads()).count())
            .unwrap_or(1),
        drain_timeout_secs: u64::from(spec.rollout.drain_timeout_seconds),
        removals: removals(model, secrets),
        etcd: (spec.distribution.kind == DistributionKind::Hardway
            && !crate::hardway::is_stand_in(model, crate::component::Component::Etcd))
        .then(|| {
            let cluster = crate::hardway::EtcdCluster::of(model);
            crate::plan::EtcdMembership {
                members: cluster.members.iter().map(|m| (m.name.clone(), m.peer_url())).collect(),
                env_file: cluster.env_file.to_string(),
                join_env: crate::hardway::ETCD_JOIN_ENV.to_string(),
            }
        }),
    }
}

/// The nodes apply deployed that the file no longer names, and how each is removed.
fn removals(model: &Model<'_>, secrets: &SecretsBundle) -> Vec<crate::plan::RemovalPlan> {
    let hardway = model.spec.spec.distribution.kind == DistributionKind::Hardway;
    secrets
        .departed(model.spec)
        .map(|(name, deployed)| {
            let roles = &deployed.role;
            // K3s's embedded etcd is K3s's: kforge does not remove its members.
            let refused = (roles.is_control_plane() && !hardway).then(|| {
                format!(
                    "{name} is a K3s server: kforge does not remove a member of K3s's embedded etcd (docs/nodes.md); put {name} back in the file to apply anything else"
                )
            });
            let etcd_peer_url = (hardway && roles.is_control_plane())
                .then(|| secrets.mesh_ips.get(name.as_str()).map(|ip| format!("https://{ip}:2380")))
                .flatten();
            let revoked: Vec<&str> = secrets
                .revoked
                .iter()
                .filter(|(_, r)| &r.node == name)
                .map(|(id, _)| id.as_str())
                .collect();
            use crate::plan::RemovalStep as Step;
            // The order apply goes in (docs/nodes.md): drained while its kubelet still
            // runs, its member out while quorum is checked, its certificate revoked before
            // the reset, its Node deleted last so no kubelet registers it again.
            let mut steps = Vec::new();
            if roles.runs_workloads() {
                steps.push(Step::Drain);
            }
            if let Some(peer) = &etcd_peer_url {
                steps.push(Step::RemoveMember { peer_url: peer.clone() });
            }
            if hardway && !revoked.is_empty() {
                steps.push(Step::Revoke { ids: revoked.iter().map(|id| id.to_string()).collect() });
            } else if roles.runs_workloads() {
                steps.push(Step::CannotRevoke);
            }
            steps.push(Step::Reset {
                user: deployed.ssh.user.clone(),
                host: deployed.ssh.host.clone().unwrap_or_default(),
            });
            if roles.runs_workloads() {
                steps.push(Step::DeleteNode { node: name.clone() });
            }
            steps.push(Step::OthersDropIt { control_plane: roles.is_control_plane() });
            steps.push(Step::BundleForgets);
            crate::plan::RemovalPlan {
                node: name.clone(),
                roles: roles.clone(),
                ssh: deployed.ssh.clone(),
                refused,
                steps,
                revocation: (hardway && !revoked.is_empty())
                    .then(|| crate::hardway::addons::revoked_credentials(secrets)),
                etcd_peer_url,
            }
        })
        .collect()
}

/// kubectl as the cluster admin on a control-plane host, where a real API server runs.
fn admin_kubectl(model: &Model<'_>) -> Option<String> {
    match model.spec.spec.distribution.kind {
        DistributionKind::Hardway => {
            crate::hardway::addons_blocked_by(model).is_none().then(crate::hardway::admin_kubectl)
        }
        DistributionKind::K3s => {
            let stand_in =
                model.spec.spec.artifacts.get(crate::component::Component::K3s).is_some_and(|a| a.stand_in.is_some());
            (!stand_in).then(|| format!("{} kubectl", crate::k3s::BINARY))
        }
    }
}

/// One node's plan for a host with `caps` (`None` for a name that is not a node).
pub fn plan_node(model: &Model<'_>, secrets: &SecretsBundle, name: &str, caps: &HostCaps) -> Option<NodePlan> {
    let (me, node) = model.nodes().find(|(_, n)| n.name == name)?;
    Some(plan_member(model, secrets, me, node, caps))
}

fn plan_member(
    model: &Model<'_>,
    secrets: &SecretsBundle,
    me: &crate::model::Member,
    node: &crate::spec::Node,
    caps: &HostCaps,
) -> NodePlan {
    let spec = &model.spec.spec;
    let iface = &spec.mesh.interface;
    let wg_path = format!("/etc/wireguard/{iface}.conf");
    let mut np =
        NodePlan::new(&node.name, node.role.clone(), me.mesh_ip.to_string(), node.endpoint.map(|e| e.to_string()));
    np.arch = caps.arch.or(node.arch);

    let key = PrivateKey::parse(&secrets.wireguard[&node.name]).expect("bundle holds valid keys");
    let mesh = np.phase(Phase::Mesh);
    let peers = model.mesh_peers(me);
    let mut mesh_why = vec![
        ("Address".to_string(), format!("{}: this node's mesh address, allocated once and kept in the secrets bundle", me.mesh_ip)),
        ("[Peer] per member".to_string(), format!("{} peers: a full mesh, so every node-to-node byte is encrypted", peers.len())),
        (
            "AllowedIPs".to_string(),
            "each peer's /32 (plus its pod network with hardway, and the members it relays for): wg-quick turns them into routes".into(),
        ),
    ];
    if me.endpoint.is_none() {
        mesh_why.push((
            "PersistentKeepalive".into(),
            format!("{} s: this node is behind NAT, keepalives hold the mapping open", spec.mesh.keepalive),
        ));
    }
    mesh.files.push(PlannedFile::secret(&wg_path, render_wg_quick(model, me, Some(&key))).about(
        "The WireGuard mesh interface (wg-quick format), with this node's private key.",
        format!("wg-quick@{iface}.service; changes are applied with `wg syncconf` (setconf on userspace WireGuard), tunnels stay up, and a new peer's networks get their routes"),
        mesh_why,
    ));
    mesh.files.push(
        PlannedFile::new(
            SYSCTL_FILE,
            0o644,
            "# Managed by kforge: pods need forwarding, and so does relaying for NAT'd mesh members.\nnet.ipv4.ip_forward = 1\n",
        )
        .about("Kernel setting: IP forwarding on.", "systemd-sysctl at boot; kforge applies it at once", vec![]),
    );
    mesh.commands.push(PlannedCommand {
        description: "apply kernel settings (skipped when forwarding is already on)".into(),
        run: format!("sysctl -q -p {SYSCTL_FILE}"),
        unless: Some(FORWARDING_ON.into()),
        // Forwarding switched off by hand (or by another tool) stops pod traffic and
        // NAT relaying while every file is still as kforge wrote it.
        recheck: Some(FORWARDING_ON.into()),
    });
    let mut wg_inputs = vec![wg_path.clone()];
    if let Some(dropin) = nat_priming_dropin(model, me, iface) {
        wg_inputs.push(dropin.path.clone());
        mesh.files.push(dropin);
    }
    mesh.units.push(PlannedUnit {
        name: format!("wg-quick@{iface}.service"),
        enable: true,
        start: true,
        restart_on: wg_inputs,
        // syncconf sets peers, not the interface: a changed spec.mesh.mtu is applied
        // too, and so are routes. wg-quick routes each peer's AllowedIPs only when it
        // brings the interface up, so a worker joining a running cluster got a peer
        // but no route to its pod network on the hosts already there: their pods and
        // the hosts themselves could not reach the new worker's pods (and on a host
        // with a default route, those packets would leave by it). The loop adds what
        // wg-quick would, skipping what a route on the interface already covers.
        reload_command: Some(format!(
            "wg syncconf {iface} <(wg-quick strip {iface}) && ip link set dev {iface} mtu {} && {}",
            spec.mesh.mtu,
            each_unrouted_peer_network(iface, &format!("ip route add \"$n\" dev {iface}"))
        )),
        // A host left without such a route (by a kforge before this reload did it, or
        // by hand) is repaired by the next apply: the reload adds it.
        recheck: Some(UnitRecheck {
            test: each_unrouted_peer_network(iface, "false"),
            drift: format!("a peer's network has no route through {iface} (wg-quick adds them only at start)"),
        }),
        joins: None,
    });

    if spec.firewall.enabled {
        let unit_file = PlannedFile::unit(FIREWALL_UNIT, render_firewall_unit(FIREWALL_FILE));
        let unit_path = unit_file.path.clone();
        let ruleset = render_nftables(model, me, node);
        let recheck = UnitRecheck {
            test: loaded_as_planned(&ruleset),
            drift: "table inet kforge differs from the plan (a rule added or removed by hand)".into(),
        };
        let fw = np.phase(Phase::Firewall);
        fw.files.push(PlannedFile::new(FIREWALL_FILE, 0o600, ruleset).about(
            "The node's firewall: nftables table `inet kforge`, replaced atomically; other tables are left alone.",
            "nft, loaded by kforge-firewall.service before the network comes up",
            vec![
                ("input policy drop".into(), "public side default-deny: only SSH (allow-list, rate limit), the mesh UDP port, ICMP essentials and published ports".into()),
                ("iifname mesh/cni accept".into(), "traffic on the mesh is already authenticated and encrypted by WireGuard".into()),
                ("forward".into(), "public traffic is forwarded only when DNAT'd to a published port, so NodePorts do not leak".into()),
            ],
        ));
        fw.files.push(unit_file);
        fw.units.push(PlannedUnit {
            name: FIREWALL_UNIT.into(),
            enable: true,
            start: true,
            restart_on: vec![FIREWALL_FILE.into(), unit_path],
            reload_command: Some(format!("nft -f {FIREWALL_FILE}")),
            // The seed's "my IP only" rule: inserted by hand into the loaded table, it
            // hides a worker while /etc/kforge/firewall.nft is unchanged.
            recheck: Some(recheck),
            joins: None,
        });
    }
    match spec.distribution.kind {
        DistributionKind::K3s => k3s::plan_node(model, secrets, me, node, caps.k3s_join_running, &mut np),
        DistributionKind::Hardway => hardway::plan_node(model, secrets, me, node, &mut np),
    }
    if let Some(gitops) = &spec.gitops
        && me.name == model.first_server().name
    {
        let keys = secrets.gitops.as_ref().expect("reconciled: the bundle holds the gitops keys");
        let kubectl = match spec.distribution.kind {
            DistributionKind::K3s => format!("{} kubectl --kubeconfig {}", k3s::BINARY, k3s::KUBECONFIG),
            DistributionKind::Hardway => hardway::admin_kubectl(),
        };
        crate::gitops::plan(gitops, keys, &kubectl, &mut np);
    }
    if let Some(hello) = nat_hello(model, me) {
        // After the barrier every peer's mesh is up; tell them where we are before
        // K3s needs the mesh (the start-time hello may have come too early).
        let phase = if node.role.is_control_plane() { Phase::ControlPlane } else { Phase::Workers };
        np.phase(phase).commands.push(PlannedCommand {
            description: "behind NAT: send every public peer a packet so it learns this node's address".into(),
            run: format!("bash -c '{hello}'"),
            unless: None,
            recheck: None,
        });
    }
    np.packages = packages_of(model, node, &np);
    if caps.userspace_wireguard {
        use_userspace_wireguard(&mut np, iface, caps.boringtun_upload.as_deref());
    } else {
        // The bootstrap cannot ask kforge: it carries both and picks on the host.
        let mut userspace = np.clone();
        use_userspace_wireguard(&mut userspace, iface, None);
        np.without_wireguard_module = Some(Box::new(userspace));
    }
    np
}

/// The OS packages this node's plan needs (`packages::for_node`), from what the plan
/// runs: a local API balancer (nginx's stream module), and artifacts its bootstrap
/// downloads by URL (curl).
fn packages_of(model: &Model<'_>, node: &crate::spec::Node, np: &NodePlan) -> Vec<crate::packages::Package> {
    let balancer = np.units().any(|u| u.name == hardway::API_BALANCER_UNIT || u.name == k3s::REGISTRATION_UNIT);
    let fetches = np
        .phases
        .iter()
        .flat_map(|p| &p.artifacts)
        .any(|a| matches!(a.source, crate::plan::ArtifactSource::Url { .. }) && a.sha256.is_some());
    crate::packages::for_node(model.spec, node, balancer, fetches)
}

fn notes(model: &Model<'_>) -> Vec<String> {
    let spec = &model.spec.spec;
    let mut notes = Vec::new();
    let by_relay: HashMap<&str, Vec<String>> =
        model.relayed_pairs().into_iter().fold(HashMap::new(), |mut m, (a, b, r)| {
            m.entry(r).or_default().push(format!("{a} ↔ {b}"));
            m
        });
    let mut relays: Vec<_> = by_relay.into_iter().collect();
    relays.sort();
    for (relay, pairs) in relays {
        notes.push(format!(
            "{} have no public endpoint on either side: their traffic is relayed (still encrypted end to end) through {relay}",
            pairs.join(", ")
        ));
    }
    match &spec.artifacts.k3s {
        _ if spec.distribution.kind == DistributionKind::Hardway => notes.extend(hardway::notes(model)),
        None => notes.push(format!(
            "no k3s artifact is configured: hosts must already have {} (set spec.artifacts.k3s)",
            k3s::BINARY
        )),
        Some(a) => {
            let local: Vec<String> = a
                .sources()
                .into_iter()
                .filter_map(|(arch, s)| {
                    Some(format!("{}{}", s.path?, arch.map(|a| format!(" ({a})")).unwrap_or_default()))
                })
                .collect();
            if !local.is_empty() {
                notes.push(format!(
                    "k3s comes from {} on this workstation: `apply` uploads it; cloud-init user-data cannot carry a binary, so hosts booted from it need {} in their image (or set url + sha256 under artifacts.k3s)",
                    local.join(", "),
                    k3s::BINARY
                ));
            }
        }
    }
    if !spec.firewall.enabled {
        notes.push("the firewall is disabled: every port the cluster opens is reachable from the internet".into());
    }
    notes
}

pub const BORINGTUN_DEST: &str = "/usr/local/bin/boringtun-cli";
pub const WG_USERSPACE_DROPIN: &str = "/etc/systemd/system/wg-quick@.service.d/kforge-userspace.conf";

/// For a host whose kernel has no WireGuard module: wg-quick runs the userspace
/// implementation (boringtun-cli), uploaded from `boringtun` when the host lacks it.
fn use_userspace_wireguard(np: &mut NodePlan, iface: &str, boringtun: Option<&str>) {
    let mesh = np.phase(Phase::Mesh);
    if let Some(path) = boringtun {
        mesh.artifacts.push(crate::plan::PlannedArtifact {
            name: "boringtun-cli".into(),
            dest: BORINGTUN_DEST.into(),
            stand_in: false,
            mode: 0o755,
            sha256: None,
            source: crate::plan::ArtifactSource::Path { path: path.into() },
            setting: "boringtun-cli (found on the workstation's PATH by kforge apply)".into(),
            arch: None,
        });
    }
    mesh.files.insert(
        0,
        PlannedFile::systemd(
            WG_USERSPACE_DROPIN,
            "# Managed by kforge: this host's kernel has no WireGuard module, so wg-quick\n\
             # runs the userspace implementation. WG_SUDO=true is what boringtun-cli accepts.\n\
             [Service]\n\
             Environment=WG_QUICK_USERSPACE_IMPLEMENTATION=boringtun-cli\n\
             Environment=WG_SUDO=true\n",
        ),
    );
    let unit = format!("wg-quick@{iface}.service");
    if let Some(u) = mesh.units.iter_mut().find(|u| u.name == unit) {
        u.restart_on.push(WG_USERSPACE_DROPIN.into());
        // boringtun-cli 0.7.1 answers `wg syncconf` (and addconf) with "Protocol error"
        // but takes `wg setconf`: the whole peer set at once, the interface stays up.
        u.reload_command = u.reload_command.as_ref().map(|c| c.replacen("wg syncconf", "wg setconf", 1));
    }
}

/// `action` for each network a mesh peer may send from (its AllowedIPs) that no route
/// through `iface` covers yet (`$n`, as wg-quick checks at start); fails when an action
/// does.
fn each_unrouted_peer_network(iface: &str, action: &str) -> String {
    format!(
        "( for n in $(wg show {iface} allowed-ips | cut -f2); do [ \"$n\" = '(none)' ] || [ -n \"$(ip route show dev {iface} match \"$n\")\" ] || {action} || exit 1; done )"
    )
}

/// A node behind NAT is reachable only once it has sent each peer a packet (WireGuard
/// learns a roaming peer's endpoint from it; keepalives then hold the NAT mapping).
/// Userspace implementations send nothing before a session exists, so every start of
/// the mesh touches each directly dialled peer once.
fn nat_priming_dropin(model: &Model<'_>, me: &crate::model::Member, iface: &str) -> Option<PlannedFile> {
    let hello = nat_hello(model, me)?;
    Some(PlannedFile::systemd(
        format!("{}.d/kforge-nat.conf", crate::paths::unit_file(&format!("wg-quick@{iface}.service"))),
        format!(
            "# Managed by kforge: this node has no public endpoint; say hello to every peer\n\
             # on start so they learn where it is (WireGuard roaming), keepalives do the rest.\n\
             [Service]\n\
             ExecStartPost=/bin/bash -c '{hello}'\n"
        ),
    ))
}

/// The hello itself: one TCP SYN through the mesh to each directly dialled peer.
fn nat_hello(model: &Model<'_>, me: &crate::model::Member) -> Option<String> {
    if me.endpoint.is_some() {
        return None;
    }
    let targets: Vec<String> = model
        .mesh_peers(me)
        .iter()
        .filter(|p| p.member.endpoint.is_some())
        .map(|p| p.member.mesh_ip.to_string())
        .collect();
    if targets.is_empty() {
        return None;
    }
    Some(format!(
        "for ip in {}; do timeout 2 bash -c \"echo > /dev/tcp/$ip/9\" 2>/dev/null & done; wait; true",
        targets.join(" ")
    ))
}
