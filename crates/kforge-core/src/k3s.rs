//! The `k3s` distribution: what each node gets to run K3s inside the mesh.
//!
//! * Servers get kforge's CAs as K3s *custom CAs* under `server/tls/` (placed before
//!   first start, so K3s signs everything with them), the service-account key, an
//!   API serving certificate, and — with `secretsEncryption` — the encryption config.
//! * Every node's `node-ip` is its mesh address and flannel runs over the mesh
//!   interface, so kubelet, etcd, flannel and API traffic all ride WireGuard.
//! * Join tokens pin the CA: `K10<sha256 of server-ca.crt>::server:<secret>`; agents
//!   get a separate agent token (`::node:`) so an agent cannot join as a server.

use serde::Serialize;

use crate::hashing::sha256_hex;
use crate::model::{Member, Model};
use crate::paths::unit_file;
use crate::pki::Ca;
use crate::pki::CertRequest;
use crate::plan::{NodePlan, Phase, PlannedArtifact, PlannedFile, PlannedUnit};
use crate::secrets::SecretsBundle;
use crate::spec::Node;
use crate::systemd::UnitFile;

pub const BINARY: &str = crate::component::Component::K3s.install().dest;
pub const CONFIG: &str = "/etc/rancher/k3s/config.yaml";
/// The admin kubeconfig a K3s server writes (mode 0600, `write-kubeconfig-mode`).
pub const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
pub const TLS_DIR: &str = "/var/lib/rancher/k3s/server/tls";
pub const ENCRYPTION_CONFIG: &str = "/var/lib/rancher/k3s/server/cred/encryption-config.json";
pub const TOKEN_FILE: &str = "/etc/kforge/k3s/token";
pub const AGENT_TOKEN_FILE: &str = "/etc/kforge/k3s/agent-token";
/// K3s imports every image archive in this directory into its containerd: at start,
/// and (since v1.32.0+k3s1) whenever a file there is added or changed while it runs.
pub const IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";

pub const ADMIN_CERT_ID: &str = "admin";

/// Leaves kforge issues for a k3s cluster: the admin client. Every other leaf K3s mints
/// itself from kforge's CAs, the API serving certificate included: K3s re-issues it
/// within its own renewal window, so one kforge wrote would be rewritten by every apply
/// (a K3s restart each time) until both gave up (`SERVING_FILES`).
pub fn cert_requests(_model: &Model<'_>) -> Vec<CertRequest> {
    vec![CertRequest::admin(ADMIN_CERT_ID)]
}

/// The API serving certificate and key a kforge before this one wrote on each server:
/// K3s's own now, never removed from a host.
const SERVING_FILES: [&str; 2] = ["serving-kube-apiserver.crt", "serving-kube-apiserver.key"];

/// `K10<sha256(server-ca.crt)>::server:<secret>`: joiners verify the CA they reach.
pub fn server_token(secrets: &SecretsBundle) -> String {
    format!("K10{}::server:{}", ca_hash(secrets), secrets.k3s_token)
}

/// `K10<sha256(server-ca.crt)>::node:<secret>`: joins agents only.
pub fn agent_token(secrets: &SecretsBundle) -> String {
    format!("K10{}::node:{}", ca_hash(secrets), secrets.k3s_agent_token)
}

fn ca_hash(secrets: &SecretsBundle) -> String {
    sha256_hex(secrets.ca(Ca::Server).cert.as_bytes())
}

/// `/etc/rancher/k3s/config.yaml`: keys are K3s's CLI flag names.
#[derive(Serialize, Default)]
#[serde(rename_all = "kebab-case")]
struct K3sConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_init: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    token_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_token_file: Option<String>,
    node_name: String,
    node_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_external_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_address: Option<String>,
    flannel_iface: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    flannel_backend: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tls_san: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_dns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets_encryption: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_kubeconfig_mode: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    disable: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pause_image: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    node_label: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    node_taint: Vec<String>,
}

/// Where agents and joining servers of a multi-server cluster register: kforge's
/// balancer on the node itself (nginx stream on 127.0.0.1, over every server's
/// supervisor port on the mesh), so a join never depends on one server being up.
/// K3s's docs call this the fixed registration address; K3s puts 127.0.0.1 into every
/// server's certificate, so TLS to it verifies. 6443 and 6444 are K3s's own.
pub const REGISTRATION_PORT: u16 = 6445;
pub const REGISTRATION_CONF: &str = "/etc/kforge/k3s-registration-nginx.conf";
pub const REGISTRATION_UNIT: &str = "kforge-k3s-registration.service";
/// ServiceLB runs its LoadBalancer pods only on nodes with this label once any node has
/// it: kforge sets it on the nodes whose firewall publishes ports.
pub const SERVICELB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";

/// How K3s changes each file it owns after its first start (docs/k3s.md).
const ROTATE_CA: &str = "k3s certificate rotate-ca --path=<dir with the new CA files>";
const ROTATE_ENCRYPTION_KEYS: &str = "k3s secrets-encrypt rotate-keys";

/// The files K3s takes into its datastore on the first server's first start and hands to
/// every server that joins: kforge's CAs (as custom CAs), the service-account key and
/// the encryption config. Written once, on the initialising server, where absent.
fn datastore_files(model: &Model<'_>, secrets: &SecretsBundle) -> Vec<PlannedFile> {
    let mut files = Vec::new();
    for ca in Ca::ALL {
        let pair = secrets.ca(ca);
        files.push(PlannedFile::new(format!("{TLS_DIR}/{ca}.crt"), 0o644, pair.cert.clone()));
        files.push(PlannedFile::secret(format!("{TLS_DIR}/{ca}.key"), pair.key.clone()));
    }
    let service_key = crate::pki::signing_and_verifying_key_pem(&secrets.service_account_key)
        .expect("bundle holds a valid service-account key");
    files.push(PlannedFile::secret(format!("{TLS_DIR}/service.key"), service_key).about(
        "The service-account key: kube-apiserver signs and verifies service-account tokens with it.",
        "K3s's kube-apiserver (--service-account-key-file and --service-account-signing-key-file, the same file)",
        vec![(
                "form".into(),
                "an EC key in SEC1 form (BEGIN EC PRIVATE KEY): the API server reads the public keys out of this \
                 file too, and its key reader takes EC keys only in that form"
                    .into(),
            )],
    ));
    let mut files: Vec<PlannedFile> = files.into_iter().map(|f| f.handed_over("K3s", ROTATE_CA)).collect();
    if model.spec.spec.secrets_encryption {
        files.push(
            PlannedFile::secret(ENCRYPTION_CONFIG, encryption_config(&secrets.encryption_key))
                .handed_over("K3s", ROTATE_ENCRYPTION_KEYS),
        );
    }
    files
}

/// Add the node's k3s files, artifact and unit to its plan. The first server founds the
/// cluster (`cluster-init`) unless `join_running`: then it joins the cluster that runs,
/// as every other server does.
pub fn plan_node(
    model: &Model<'_>,
    secrets: &SecretsBundle,
    me: &Member,
    node: &Node,
    join_running: bool,
    plan: &mut NodePlan,
) {
    let spec = &model.spec.spec;
    let arch = plan.arch;
    if let Some(a) = &spec.artifacts.k3s {
        plan.phase(Phase::Artifacts).artifacts.extend(PlannedArtifact::from_spec("k3s", BINARY, 0o755, a, arch));
    }
    // The binary must be the file's release before K3s starts (a stand-in is no release).
    if spec.artifacts.k3s.as_ref().is_none_or(|a| a.stand_in.is_none())
        && let Some(check) = crate::component::version_check(
            crate::component::Component::K3s,
            &spec.distribution.version,
            spec.artifacts.k3s.is_some(),
        )
    {
        plan.phase(Phase::Artifacts).commands.push(check);
    }
    // Every K3s node runs containerd: each gets the image archives, in place before K3s
    // starts, so pods need no registry.
    for (i, img) in spec.images.iter().enumerate() {
        plan.phase(Phase::Artifacts).artifacts.extend(PlannedArtifact::image(i, img, IMAGES_DIR, arch));
    }

    // Every K3s node runs a kubelet (a stand-in runs none).
    plan.requires_memory_cgroup = spec.artifacts.k3s.as_ref().is_none_or(|a| a.stand_in.is_none());
    let is_server = node.role.is_control_plane();
    let first = model.first_server();
    let initialises = me.name == first.name && !join_running;
    let multi_server = model.servers().count() > 1;
    // At registration (K3s's node-label and node-taint), and through the API on the
    // first server (`node_labels`): K3s never takes a registration label off again.
    let labels: Vec<String> = node_marks(model, node)
        .into_iter()
        .filter_map(|m| match m {
            crate::node_labels::Mark::Label(l) => Some(l),
            crate::node_labels::Mark::Taint(_) => None,
        })
        .collect();

    let mut cfg = K3sConfig {
        token_file: TOKEN_FILE.into(),
        node_name: node.name.clone(),
        node_ip: me.mesh_ip.to_string(),
        node_external_ip: node.endpoint.map(|e| e.to_string()),
        flannel_iface: spec.mesh.interface.clone(),
        pause_image: spec.k3s.pause_image.clone(),
        node_label: labels,
        node_taint: node.taints.clone(),
        ..K3sConfig::default()
    };
    let mut files = Vec::new();
    // Joiners of a multi-server cluster register through their own node's balancer.
    let balancer = if initialises || !multi_server { Vec::new() } else { registration_balancer(model) };
    if !initialises {
        cfg.server = Some(registration_url(model));
    }
    let phase = if is_server { Phase::ControlPlane } else { Phase::Workers };
    if is_server {
        cfg.cluster_init = (multi_server && initialises).then_some(true);
        cfg.agent_token_file = Some(AGENT_TOKEN_FILE.into());
        cfg.advertise_address = Some(me.mesh_ip.to_string());
        cfg.flannel_backend = Some(spec.k3s.flannel_backend.clone());
        let mut sans: Vec<String> = vec![me.mesh_ip.to_string(), node.name.clone()];
        if model.api_address != me.mesh_ip {
            sans.push(model.api_address.to_string());
        }
        if let Some(ep) = node.endpoint {
            sans.push(ep.to_string());
        }
        cfg.tls_san = sans;
        cfg.cluster_cidr = Some(spec.network.pod_cidr.to_string());
        cfg.service_cidr = Some(spec.network.service_cidr.to_string());
        cfg.cluster_dns = Some(model.cluster_dns_ip.to_string());
        cfg.cluster_domain = Some(spec.network.cluster_domain.clone());
        cfg.secrets_encryption = spec.secrets_encryption.then_some(true);
        cfg.write_kubeconfig_mode = Some("0600".into());
        cfg.disable = spec.k3s.disable.clone();

        files.push(PlannedFile::secret(TOKEN_FILE, format!("{}\n", server_token(secrets))));
        files.push(PlannedFile::secret(AGENT_TOKEN_FILE, format!("{}\n", secrets.k3s_agent_token)));
        // The datastore's files: placed once on the initialising server; a joining
        // server gets them from the datastore (K3s writes them when tls/ is empty), and
        // no server ever has them rewritten (K3s stops when a newer file on disk differs).
        let datastore = datastore_files(model, secrets);
        plan.released = datastore.iter().map(|f| f.path.clone()).collect();
        plan.released.extend(SERVING_FILES.map(|f| format!("{TLS_DIR}/{f}")));
        if initialises {
            files.extend(datastore);
        }
    } else {
        files.push(PlannedFile::secret(TOKEN_FILE, format!("{}\n", agent_token(secrets))));
    }
    let joins = cfg.server.clone();
    let config_text = format!(
        "# K3s configuration of node {} (cluster {}). Managed by kforge.\n{}",
        node.name,
        model.spec.metadata.name,
        serde_saphyr::to_string(&cfg).expect("k3s config serializes")
    );
    files.push(PlannedFile::secret(CONFIG, config_text));
    let unit_name = unit_name(is_server);
    let unit_path = unit_file(unit_name);
    files.push(PlannedFile::systemd(&unit_path, render_unit(is_server, &spec.mesh.interface)));

    // A new binary or any file K3s reads at every start restarts K3s (not the files it
    // owns after its first start).
    let mut restart_on: Vec<String> =
        files.iter().filter(|f| f.handed_over.is_none()).map(|f| f.path.clone()).collect();
    if spec.artifacts.k3s.is_some() {
        restart_on.push(BINARY.into());
    }
    let p = plan.phase(phase);
    // The balancer first: K3s dials it as soon as it starts.
    if !balancer.is_empty() {
        p.units.push(crate::balancer::planned_unit(REGISTRATION_UNIT, &balancer));
        p.files.extend(balancer);
    }
    p.files.extend(files);
    // Gates ask K3s's own kubectl: none for a stand-in, which serves no API.
    let stand_in = spec.artifacts.k3s.as_ref().is_some_and(|a| a.stand_in.is_some());
    let kubectl = format!("{BINARY} kubectl");
    p.gate = (!stand_in).then(|| match is_server {
        true => crate::gates::k3s_server(&kubectl),
        false => crate::gates::node_ready(&kubectl, &node.name, &spec.distribution.version),
    });
    p.units.push(PlannedUnit {
        name: unit_name.into(),
        enable: true,
        start: true,
        restart_on,
        reload_command: None,
        recheck: None,
        joins,
    });
    if me.name == first.name
        && !stand_in
        && let Some((file, command)) = node_labels(model, &kubectl)
    {
        let addons = plan.phase(Phase::Addons);
        addons.files.push(file);
        addons.commands.push(command);
    }
}

/// What kforge gives a K3s node's Node: its zone, the ServiceLB label where its
/// firewall publishes ports, the file's labels and taints.
fn node_marks(model: &Model<'_>, node: &Node) -> Vec<crate::node_labels::Mark> {
    use crate::node_labels::Mark;
    let mut marks = Vec::new();
    if let Some(loc) = &node.location {
        marks.push(Mark::Label(format!("topology.kubernetes.io/zone={loc}")));
    }
    if servicelb_nodes(model).is_some_and(|nodes| nodes.contains(&node.name.as_str())) {
        marks.push(Mark::Label(format!("{SERVICELB_LABEL}=true")));
    }
    marks.extend(node.labels.iter().map(|(k, v)| Mark::Label(format!("{k}={v}"))));
    marks.extend(node.taints.iter().map(|t| Mark::Taint(t.clone())));
    marks
}

/// Every node's marks, kept on its Node through the API from the first server: K3s
/// adds `node-label` values at every start but never removes one, and applies
/// `node-taint` only at registration, so a node that stops publishing 80/443 would keep
/// the ServiceLB label and get traffic its firewall drops.
fn node_labels(model: &Model<'_>, kubectl: &str) -> Option<(PlannedFile, crate::plan::PlannedCommand)> {
    let marks: Vec<(String, crate::node_labels::Mark)> =
        model.nodes().flat_map(|(_, n)| node_marks(model, n).into_iter().map(|m| (n.name.clone(), m))).collect();
    crate::node_labels::plan(
        &marks,
        kubectl,
        vec![
            ("zone".into(), "topology.kubernetes.io/zone from spec.nodes[].location".into()),
            (SERVICELB_LABEL.into(), "on the nodes whose firewall publishes ports: ServiceLB runs only there".into()),
            ("labels, taints".into(), "spec.nodes[].labels and .taints: K3s's node-label adds at every start but never removes, node-taint applies only at registration".into()),
        ],
    )
}

/// `k3s.service` on servers, `k3s-agent.service` on agents.
pub fn unit_name(server: bool) -> &'static str {
    if server { "k3s.service" } else { "k3s-agent.service" }
}

/// Whether `unit` is one of K3s's two units.
pub fn is_k3s_unit(unit: &str) -> bool {
    unit == unit_name(true) || unit == unit_name(false)
}

/// The `server:` agents and joining servers register through: the one server's mesh
/// address, or with several servers the node's own registration balancer.
pub fn registration_url(model: &Model<'_>) -> String {
    if model.servers().count() > 1 { format!("https://127.0.0.1:{REGISTRATION_PORT}") } else { model.api_url() }
}

/// The registration balancer's configuration and unit (multi-server clusters).
fn registration_balancer(model: &Model<'_>) -> Vec<PlannedFile> {
    let servers: Vec<std::net::SocketAddrV4> =
        model.servers().map(|(m, _)| std::net::SocketAddrV4::new(m.mesh_ip, crate::model::API_PORT)).collect();
    let conf = crate::balancer::nginx_stream_conf(
        "kforge's K3s registration address on this node",
        REGISTRATION_UNIT,
        REGISTRATION_PORT,
        &servers,
    );
    let unit = crate::balancer::nginx_unit(
        "K3s registers through it, so a join works while any one server is up",
        "kforge K3s registration address on 127.0.0.1 (nginx stream over every server)",
        &format!("wg-quick@{}.service", model.spec.spec.mesh.interface),
        REGISTRATION_UNIT,
        REGISTRATION_CONF,
    );
    vec![
        PlannedFile::new(REGISTRATION_CONF, 0o644, conf).about(
            "K3s's fixed registration address: 127.0.0.1 on this node, passed on to every server's supervisor port over the mesh.",
            "nginx, run by kforge-k3s-registration.service; dialled by K3s (`server:` in config.yaml)",
            vec![(
                "upstream".into(),
                "every server's mesh address, :6443: a join needs any one of them, not the first".into(),
            )],
        ),
        PlannedFile::from_unit(REGISTRATION_UNIT, &unit, "The registration balancer's unit."),
    ]
}

/// The nodes ServiceLB may run on: those whose firewall publishes ports, when the
/// file limits any published port to some nodes (`None`: every node publishes all, or
/// ServiceLB is disabled). Without the label ServiceLB runs on every node, and a
/// LoadBalancer's status would list servers whose firewall drops those ports.
pub fn servicelb_nodes<'m>(model: &'m Model<'_>) -> Option<Vec<&'m str>> {
    let spec = &model.spec.spec;
    if spec.k3s.disable.iter().any(|d| d == "servicelb") || !spec.firewall.enabled {
        return None;
    }
    let restricted: Vec<&str> =
        spec.firewall.publish.iter().filter_map(|p| p.nodes.as_ref()).flatten().map(String::as_str).collect();
    if restricted.is_empty() {
        return None;
    }
    Some(model.nodes().map(|(_, n)| n.name.as_str()).filter(|n| restricted.contains(n)).collect())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EncryptionConfiguration {
    kind: &'static str,
    api_version: &'static str,
    resources: Vec<EncryptedResource>,
}

#[derive(Serialize)]
struct EncryptedResource {
    resources: Vec<&'static str>,
    providers: Vec<serde_json::Value>,
}

/// The EncryptionConfiguration K3s reads at `server/cred/encryption-config.json`:
/// aescbc with kforge's key first (writes), identity second (reads old plaintext).
pub(crate) fn encryption_config(key_b64: &str) -> String {
    let cfg = EncryptionConfiguration {
        kind: "EncryptionConfiguration",
        api_version: "apiserver.config.k8s.io/v1",
        resources: vec![EncryptedResource {
            resources: vec!["secrets"],
            providers: vec![
                serde_json::json!({"aescbc": {"keys": [{"name": "aescbckey", "secret": key_b64}]}}),
                serde_json::json!({"identity": {}}),
            ],
        }],
    };
    serde_json::to_string(&cfg).expect("encryption config serializes")
}

/// K3s's systemd unit (as its installer writes it), ordered after the mesh. Ordered,
/// not bound: `Requires=` would stop or restart K3s with every restart of the mesh (a
/// peer added, a key rotated) and keep it down for good when the mesh failed at boot;
/// K3s rides out a mesh that comes back, and `kforge doctor` names one that is down.
fn render_unit(server: bool, mesh_interface: &str) -> String {
    let what = if server { "server" } else { "agent" };
    let mesh = format!("wg-quick@{mesh_interface}.service");
    UnitFile::new(format!("Managed by kforge: K3s {what}, started once the mesh interface is up."))
        .section("Unit")
        .set("Description", format!("Lightweight Kubernetes ({what}, kforge)"))
        .set("Documentation", "https://k3s.io")
        .set("Wants", format!("network-online.target {mesh}"))
        .set("After", format!("network-online.target {mesh} kforge-firewall.service"))
        .section("Service")
        .set("Type", "notify")
        .set("EnvironmentFile", "-/etc/default/%N")
        .set("KillMode", "process")
        .set("Delegate", "yes")
        .set("LimitNOFILE", "1048576")
        .set("LimitNPROC", "infinity")
        .set("LimitCORE", "infinity")
        .set("TasksMax", "infinity")
        .set("TimeoutStartSec", "0")
        .set("Restart", "always")
        .set("RestartSec", "5s")
        .set("ExecStartPre", "-/sbin/modprobe br_netfilter")
        .set("ExecStartPre", "-/sbin/modprobe overlay")
        .set("ExecStart", format!("{BINARY} {what}"))
        .wanted_by_multi_user()
        .render()
}
