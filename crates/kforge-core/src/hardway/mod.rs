//! The `hardway` distribution: upstream Kubernetes "the hard way", automated.
//!
//! What seeds 002 and 004 typed by hand across six VMs, from the same model as k3s:
//!
//! * **PKI** ([`certs`]): every component's certificate with the CN/O that RBAC
//!   expects (DESIGN.md §8, upstream's typos fixed), apiserver SANs covering every
//!   name a client uses, etcd server/peer/client certificates under their own CAs.
//! * **Controllers**: etcd (mTLS for clients and peers, peers on mesh addresses),
//!   kube-apiserver, kube-controller-manager, kube-scheduler with its configuration
//!   file, and an nginx `/healthz` proxy for an L4 load balancer.
//! * **Workers**: containerd + runc, CNI bridge/loopback with the worker's own pod
//!   network, kubelet (KubeletConfiguration), kube-proxy (KubeProxyConfiguration).
//! * **Pod routes** are the mesh's AllowedIPs (see `Model::mesh_peers`): no cloud
//!   route table, no overlay.
//! * **Addons**: RBAC for apiserver → kubelet and CoreDNS, applied once the API
//!   answers on the initialising controller.
//!
//! Every file carries an explanation for `kforge explain`.

mod addons;
pub mod certs;
mod configs;
mod units;

use std::net::IpAddr;

use crate::kubeconfig::render_kubeconfig;
use crate::model::{API_PORT, Member, Model};
use crate::paths::unit_file;
use crate::plan::{NodePlan, Phase, PlannedArtifact, PlannedCommand, PlannedFile, PlannedUnit};
use crate::secrets::SecretsBundle;
use crate::spec::{Artifact, Node, Role};

pub use certs::cert_requests;

/// The binaries of a hardway cluster, by their key under `spec.artifacts`.
pub const COMPONENT_KEYS: &[&str] = &[
    "etcd",
    "etcdctl",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
    "containerd",
    "runc",
    "cni-plugins",
];

pub const ETCD_DIR: &str = "/etc/etcd";
pub const ETCD_DATA_DIR: &str = "/var/lib/etcd";
/// Sourced by an operator's shell (or kforge) to talk to the local etcd with mTLS.
pub const ETCDCTL_ENV: &str = "/etc/etcd/etcdctl.env";
pub const KUBE_DIR: &str = "/var/lib/kubernetes";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
pub const KUBE_PROXY_DIR: &str = "/var/lib/kube-proxy";
pub const ADDONS_DIR: &str = "/etc/kforge/addons";
pub const ADMIN_KUBECONFIG: &str = "/etc/kforge/admin.kubeconfig";
pub const HEALTHZ_CONF: &str = "/etc/kforge/healthz-nginx.conf";
pub const HEALTHZ_UNIT: &str = "kforge-healthz.service";
pub const API_BALANCER_CONF: &str = "/etc/kforge/api-balancer-nginx.conf";
pub const API_BALANCER_UNIT: &str = "kforge-api-balancer.service";
/// Image archives from `spec.images`, uploaded before containerd imports them.
pub const IMAGES_DIR: &str = "/var/lib/kforge/images";
const BIN: &str = "/usr/local/bin";
const ARCHIVES: &str = "/var/lib/kforge/archives";

/// Where each component's binary lives on a host, and which role needs it.
pub struct Component {
    pub key: &'static str,
    pub dest: &'static str,
    pub role: Role,
    /// Unpacked here when the artifact is a release tarball (top directory stripped).
    pub unpack_into: Option<&'static str>,
    /// Only these tarball members (tar wildcards); everything when empty.
    pub members: &'static [&'static str],
}

pub const COMPONENTS: &[Component] = &[
    Component {
        key: "etcd",
        dest: "/usr/local/bin/etcd",
        role: Role::Controller,
        unpack_into: Some(BIN),
        members: &["*/etcd", "*/etcdctl", "*/etcdutl"],
    },
    Component {
        key: "etcdctl",
        dest: "/usr/local/bin/etcdctl",
        role: Role::Controller,
        unpack_into: None,
        members: &[],
    },
    Component {
        key: "kube-apiserver",
        dest: "/usr/local/bin/kube-apiserver",
        role: Role::Controller,
        unpack_into: None,
        members: &[],
    },
    Component {
        key: "kube-controller-manager",
        dest: "/usr/local/bin/kube-controller-manager",
        role: Role::Controller,
        unpack_into: None,
        members: &[],
    },
    Component {
        key: "kube-scheduler",
        dest: "/usr/local/bin/kube-scheduler",
        role: Role::Controller,
        unpack_into: None,
        members: &[],
    },
    Component {
        key: "kubectl",
        dest: "/usr/local/bin/kubectl",
        role: Role::Controller,
        unpack_into: None,
        members: &[],
    },
    Component { key: "kubelet", dest: "/usr/local/bin/kubelet", role: Role::Worker, unpack_into: None, members: &[] },
    Component {
        key: "kube-proxy",
        dest: "/usr/local/bin/kube-proxy",
        role: Role::Worker,
        unpack_into: None,
        members: &[],
    },
    Component {
        key: "containerd",
        dest: "/usr/local/bin/containerd",
        role: Role::Worker,
        unpack_into: Some(BIN),
        members: &["bin/*"],
    },
    Component { key: "runc", dest: "/usr/local/sbin/runc", role: Role::Worker, unpack_into: None, members: &[] },
    Component {
        key: "cni-plugins",
        dest: "/opt/cni/bin/bridge",
        role: Role::Worker,
        unpack_into: Some("/opt/cni/bin"),
        members: &[],
    },
];

pub fn component(key: &str) -> &'static Component {
    COMPONENTS.iter().find(|c| c.key == key).expect("a known component")
}

/// The component's binary is kforge's named stand-in (never started, never counted).
pub fn is_stand_in(model: &Model<'_>, key: &str) -> bool {
    model.spec.spec.artifacts.get(key).is_some_and(|a| a.stand_in.is_some())
}

/// Components configured as stand-ins, with why, for the plan's notes and the status.
pub fn stand_ins(model: &Model<'_>) -> Vec<(&'static str, String)> {
    COMPONENT_KEYS.iter().filter_map(|k| Some((*k, model.spec.spec.artifacts.get(k)?.stand_in.clone()?))).collect()
}

/// `https://<controller mesh IP>:2379` for every controller, in mesh-address order.
pub fn etcd_client_urls(model: &Model<'_>) -> Vec<String> {
    controllers(model).iter().map(|m| format!("https://{}:2379", m.mesh_ip)).collect()
}

/// Controllers in mesh-address order (stable: addresses never change).
pub fn controllers<'m>(model: &'m Model<'_>) -> Vec<&'m Member> {
    let mut v: Vec<&Member> = model.servers().map(|(m, _)| m).collect();
    v.sort_by_key(|m| m.mesh_ip);
    v
}

/// Commands preflight requires on the host before anything is written, for what
/// kforge starts there (each is also the name of its Debian/Ubuntu package).
pub fn required_commands(model: &Model<'_>, node: &Node) -> Vec<String> {
    let mut v = Vec::new();
    // nginx: the /healthz proxy on controllers, the API load balancer on workers.
    v.push("nginx".to_string());
    if node.role.has(Role::Worker) && !is_stand_in(model, "kubelet") {
        v.extend(["conntrack", "socat", "ipset"].map(String::from));
    }
    v
}

/// Add everything a hardway node runs to its plan.
pub fn plan_node(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, node: &Node, np: &mut NodePlan) {
    np.required_commands = required_commands(model, node);
    np.packages.extend(np.required_commands.iter().cloned());
    if node.role.has(Role::Worker) {
        // The API load balancer is nginx's stream module (a separate package on Debian).
        np.packages.push("libnginx-mod-stream".into());
    }
    np.swap_forbidden = node.role.has(Role::Worker) && !is_stand_in(model, "kubelet");
    np.requires_cgroup_v2 = np.swap_forbidden && !model.spec.spec.hardway.allow_cgroup_v1;
    plan_artifacts(model, node, np);
    if node.role.has(Role::Controller) {
        plan_etcd(model, secrets, me, np);
        plan_control_plane(model, secrets, me, node, np);
        if me.name == model.first_server().name {
            addons::plan(model, np);
        }
    }
    if node.role.has(Role::Worker) {
        plan_worker(model, secrets, me, node, np);
    }
}

fn plan_artifacts(model: &Model<'_>, node: &Node, np: &mut NodePlan) {
    let artifacts = &model.spec.spec.artifacts;
    for c in COMPONENTS.iter().filter(|c| node.role.has(c.role)) {
        let Some(a) = artifacts.get(c.key) else { continue };
        let phase = np.phase(Phase::Artifacts);
        let path = upload_path(c, a);
        match c.unpack_into.filter(|_| a.is_archive()) {
            Some(dir) => {
                phase.artifacts.push(PlannedArtifact::from_spec(c.key, &path, 0o644, a));
                phase.commands.push(unpack(&path, dir, c.members));
            }
            None => phase.artifacts.push(PlannedArtifact::from_spec(c.key, &path, 0o755, a)),
        }
    }
    if node.role.has(Role::Worker) {
        for img in &model.spec.spec.images {
            let dest = format!("{IMAGES_DIR}/{}", img.host_file());
            let name = format!("image {}", img.name);
            np.phase(Phase::Artifacts).artifacts.push(PlannedArtifact::from_spec(&name, &dest, 0o644, &img.artifact()));
        }
    }
}

/// `ctr images import` of each image archive, after containerd runs and before the
/// kubelet starts. Skipped when the archive was imported already (a stamp with its
/// digest) and containerd still knows the image (a wiped /var/lib/containerd re-imports).
fn image_imports(model: &Model<'_>) -> Vec<PlannedCommand> {
    model
        .spec
        .spec
        .images
        .iter()
        .map(|img| {
            let archive = format!("{IMAGES_DIR}/{}", img.host_file());
            let stamp = format!("{archive}.imported");
            let ctr = "/usr/local/bin/ctr --namespace k8s.io";
            let name = &img.name;
            PlannedCommand {
                description: format!("import image {name} into containerd"),
                run: format!(
                    "{ctr} images import --local {archive} >/dev/null && {ctr} images ls -q 'name=={name}' | grep -qx '{name}' && sha256sum {archive} | cut -d' ' -f1 > {stamp}"
                ),
                unless: Some(format!(
                    "[ \"$(cat {stamp} 2>/dev/null)\" = \"$(sha256sum {archive} | cut -d' ' -f1)\" ] && {ctr} images ls -q 'name=={name}' | grep -qx '{name}'"
                )),
            }
        })
        .collect()
}

/// Where the artifact lands on the host: the binary itself, or the release tarball
/// kept under /var/lib/kforge/archives when the component unpacks one.
fn upload_path(c: &Component, a: &Artifact) -> String {
    match c.unpack_into.filter(|_| a.is_archive()) {
        Some(_) => format!("{ARCHIVES}/{}.tar.gz", c.key),
        None => c.dest.to_string(),
    }
}

/// Unpack a release tarball once per distinct tarball (a stamp holds its digest).
fn unpack(tarball: &str, dir: &str, members: &[&str]) -> PlannedCommand {
    let stamp = format!("{tarball}.unpacked");
    let members = if members.is_empty() {
        String::new()
    } else {
        format!(" --wildcards {}", members.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(" "))
    };
    PlannedCommand {
        description: format!("unpack {tarball} into {dir}"),
        run: format!(
            "mkdir -p {dir} && tar -xzf {tarball} -C {dir} --strip-components=1 --no-same-owner{members} && sha256sum {tarball} | cut -d' ' -f1 > {stamp}"
        ),
        unless: Some(format!("[ \"$(cat {stamp} 2>/dev/null)\" = \"$(sha256sum {tarball} | cut -d' ' -f1)\" ]")),
    }
}

/// A unit for `component`: started unless its binary is a stand-in.
fn unit(model: &Model<'_>, name: &str, component: &str, mut restart_on: Vec<String>, needs: &[&str]) -> PlannedUnit {
    let stand_in = is_stand_in(model, component) || needs.iter().any(|k| is_stand_in(model, k));
    // A new binary (or tarball) restarts the unit.
    if let Some(a) = model.spec.spec.artifacts.get(component) {
        restart_on.push(upload_path(self::component(component), a));
    }
    PlannedUnit { name: name.into(), enable: !stand_in, start: !stand_in, restart_on, reload_command: None }
}

/// One of kforge's own nginx instances (Debian's nginx binary, never a stand-in):
/// always started, restarted when its configuration or unit changes.
fn nginx_unit(name: &str, files: &[PlannedFile]) -> PlannedUnit {
    PlannedUnit {
        name: name.into(),
        enable: true,
        start: true,
        restart_on: files.iter().map(|f| f.path.clone()).collect(),
        reload_command: None,
    }
}

fn plan_etcd(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, np: &mut NodePlan) {
    let etcd_ca = &secrets.ca("etcd/server-ca").cert;
    let peer_ca = &secrets.ca("etcd/peer-ca").cert;
    let server = secrets.certificate(&certs::etcd_server_id(&me.name));
    let peer = secrets.certificate(&certs::etcd_peer_id(&me.name));
    let client = secrets.certificate(certs::ETCD_CLIENT_ID);
    let cas =
        "kforge's etcd CAs are separate from the Kubernetes CAs: a Kubernetes client certificate opens no door in etcd";
    let mut files = vec![
        PlannedFile::new(format!("{ETCD_DIR}/ca.crt"), 0o644, etcd_ca.clone()).about(
            "The etcd client CA (kforge's `etcd/server-ca`): signs etcd's serving certificates and every certificate allowed to talk to etcd as a client.",
            "etcd (--trusted-ca-file: clients must present a certificate it signed), etcdctl and kube-apiserver (--etcd-cafile: to trust etcd's serving certificate)",
            vec![("issuer".into(), cas.into())],
        ),
        PlannedFile::new(format!("{ETCD_DIR}/server.crt"), 0o644, server.cert.clone()).about(
            format!("etcd's serving certificate on {}.", me.name),
            "etcd (--cert-file)",
            vec![
                ("SANs".into(), format!("{} and its mesh address {}: clients dial etcd on the mesh; 127.0.0.1 for local tools", me.name, me.mesh_ip)),
                ("extended key usage".into(), "serverAuth and clientAuth: etcd also uses this certificate as a client of its own gRPC gateway".into()),
            ],
        ),
        PlannedFile::secret(format!("{ETCD_DIR}/server.key"), server.key.clone()),
        PlannedFile::new(format!("{ETCD_DIR}/peer-ca.crt"), 0o644, peer_ca.clone()).about(
            "The etcd peer CA (kforge's `etcd/peer-ca`).",
            "etcd (--peer-trusted-ca-file): only members with a certificate it signed may join the raft group",
            vec![],
        ),
        PlannedFile::new(format!("{ETCD_DIR}/peer.crt"), 0o644, peer.cert.clone()).about(
            format!("{}'s etcd peer certificate, used both to serve and to dial the other members.", me.name),
            "etcd (--peer-cert-file)",
            vec![("SANs".into(), format!("{} and {}: peers talk over the mesh only", me.name, me.mesh_ip))],
        ),
        PlannedFile::secret(format!("{ETCD_DIR}/peer.key"), peer.key.clone()),
        PlannedFile::new(format!("{ETCD_DIR}/kforge-client.crt"), 0o644, client.cert.clone()).about(
            "kforge's etcd client certificate (CN kforge-etcd-client).",
            "etcdctl run by kforge and by the operator (health, snapshot, restore)",
            vec![],
        ),
        PlannedFile::secret(format!("{ETCD_DIR}/kforge-client.key"), client.key.clone()),
        PlannedFile::new(ETCDCTL_ENV, 0o644, etcdctl_env(model)).about(
            "Environment for etcdctl with kforge's client certificate: `set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl endpoint health --cluster`.",
            "the operator's shell, `kforge etcd snapshot|restore`",
            vec![("ETCDCTL_ENDPOINTS".into(), "every controller's mesh address, port 2379".into())],
        ),
    ];
    let unit_path = unit_file("etcd.service");
    files.push(PlannedFile::systemd(&unit_path, units::etcd(model, me)).about(
        format!("The etcd member on {}.", me.name),
        "systemd",
        units::etcd_explained(model, me),
    ));
    let restart_on: Vec<String> = files.iter().map(|f| f.path.clone()).filter(|p| p != ETCDCTL_ENV).collect();
    let u = unit(model, "etcd.service", "etcd", restart_on, &[]);
    let p = np.phase(Phase::Datastore);
    p.files.extend(files);
    p.units.push(u);
}

fn etcdctl_env(model: &Model<'_>) -> String {
    format!(
        "# Managed by kforge: etcdctl over mTLS with kforge's client certificate.\n\
         ETCDCTL_API=3\n\
         ETCDCTL_ENDPOINTS={}\n\
         ETCDCTL_CACERT={ETCD_DIR}/ca.crt\n\
         ETCDCTL_CERT={ETCD_DIR}/kforge-client.crt\n\
         ETCDCTL_KEY={ETCD_DIR}/kforge-client.key\n",
        etcd_client_urls(model).join(",")
    )
}

fn plan_control_plane(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, node: &Node, np: &mut NodePlan) {
    let spec = &model.spec.spec;
    let cluster = &model.spec.metadata.name;
    let ca = &secrets.ca("server-ca").cert;
    let client_ca = secrets.ca("client-ca");
    let front_ca = &secrets.ca("request-header-ca").cert;
    let serving = secrets.certificate(&certs::apiserver_id(&node.name));
    let etcd_client = secrets.certificate(certs::APISERVER_ETCD_CLIENT_ID);
    let kubelet_client = secrets.certificate(certs::APISERVER_KUBELET_CLIENT_ID);
    let front_client = secrets.certificate(certs::FRONT_PROXY_CLIENT_ID);
    let local = format!("https://127.0.0.1:{API_PORT}");
    let k = |name: &str| format!("{KUBE_DIR}/{name}");
    let sa_public = crate::pki::public_key_pem(&secrets.service_account_key).expect("bundle holds a valid key");

    let mut apiserver_files = vec![
        PlannedFile::new(k("ca.crt"), 0o644, ca.clone()).about(
            "The cluster CA (kforge's `server-ca`): signs the API server's and the kubelets' serving certificates.",
            "every client of the API (kubeconfigs embed it), kube-apiserver (--kubelet-certificate-authority), kube-controller-manager (--root-ca-file: the ca.crt pods get)",
            vec![],
        ),
        PlannedFile::new(k("client-ca.crt"), 0o644, client_ca.cert.clone()).about(
            "The client CA (kforge's `client-ca`): a client certificate it signed authenticates as its CN (user) and O (groups).",
            "kube-apiserver (--client-ca-file), kubelets (authentication.x509.clientCAFile)",
            vec![],
        ),
        PlannedFile::new(k("kube-apiserver.crt"), 0o644, serving.cert.clone()).about(
            format!("The API server's serving certificate on {}.", node.name),
            "kube-apiserver (--tls-cert-file)",
            certs::apiserver_sans_explained(model),
        ),
        PlannedFile::secret(k("kube-apiserver.key"), serving.key.clone()),
        PlannedFile::new(k("etcd-ca.crt"), 0o644, secrets.ca("etcd/server-ca").cert.clone()),
        PlannedFile::new(k("apiserver-etcd-client.crt"), 0o644, etcd_client.cert.clone()).about(
            "The API server's etcd client certificate, signed by the etcd CA.",
            "kube-apiserver (--etcd-certfile)",
            vec![],
        ),
        PlannedFile::secret(k("apiserver-etcd-client.key"), etcd_client.key.clone()),
        PlannedFile::new(k("apiserver-kubelet-client.crt"), 0o644, kubelet_client.cert.clone()).about(
            "The API server's client certificate towards kubelets (logs, exec, port-forward).",
            "kube-apiserver (--kubelet-client-certificate)",
            vec![(
                "CN".into(),
                "`kubernetes`: the user the system:kube-apiserver-to-kubelet ClusterRole is bound to (addons)".into(),
            )],
        ),
        PlannedFile::secret(k("apiserver-kubelet-client.key"), kubelet_client.key.clone()),
        PlannedFile::new(k("front-proxy-ca.crt"), 0o644, front_ca.clone()),
        PlannedFile::new(k("front-proxy-client.crt"), 0o644, front_client.cert.clone()).about(
            "The aggregation layer's client certificate (CN front-proxy-client).",
            "kube-apiserver (--proxy-client-cert-file) when it proxies to extension API servers such as metrics-server",
            vec![],
        ),
        PlannedFile::secret(k("front-proxy-client.key"), front_client.key.clone()),
        PlannedFile::new(k("service-account.pub"), 0o644, sa_public).about(
            "Public half of the service-account signing key.",
            "kube-apiserver (--service-account-key-file: verifies tokens)",
            vec![],
        ),
        PlannedFile::secret(k("service-account.key"), secrets.service_account_key.clone()),
    ];
    if spec.secrets_encryption {
        apiserver_files.push(
            PlannedFile::secret(k("encryption-config.yaml"), crate::k3s::encryption_config(&secrets.encryption_key))
                .about(
                "EncryptionConfiguration (apiserver.config.k8s.io/v1): Secrets are encrypted before they reach etcd.",
                "kube-apiserver (--encryption-provider-config)",
                vec![
                    (
                        "aescbc".into(),
                        "first provider: writes are encrypted with kforge's 32-byte key (kept in the secrets bundle)"
                            .into(),
                    ),
                    (
                        "identity".into(),
                        "second provider: Secrets written before encryption was on can still be read".into(),
                    ),
                ],
            ),
        );
    }
    let unit_path = unit_file("kube-apiserver.service");
    apiserver_files.push(PlannedFile::systemd(&unit_path, units::kube_apiserver(model, me)).about(
        format!("The Kubernetes API server on {}.", node.name),
        "systemd",
        units::kube_apiserver_explained(model),
    ));
    let restart_on = apiserver_files.iter().map(|f| f.path.clone()).collect();
    let apiserver_unit = unit(model, "kube-apiserver.service", "kube-apiserver", restart_on, &[]);

    // controller-manager and scheduler talk to the API server on the same machine.
    let cm_cert = secrets.certificate(certs::CONTROLLER_MANAGER_ID);
    let cm_kubeconfig = render_kubeconfig(cluster, &local, ca, "system:kube-controller-manager", cm_cert);
    let mut cm_files = vec![
        PlannedFile::secret(k("kube-controller-manager.kubeconfig"), cm_kubeconfig).about(
            "kube-controller-manager's kubeconfig.",
            "kube-controller-manager (--kubeconfig)",
            vec![
                ("server".into(), format!("{local}: the API server on this same controller")),
                ("user".into(), "CN=O=system:kube-controller-manager, the identity its ClusterRole is bound to".into()),
            ],
        ),
        PlannedFile::secret(k("client-ca.key"), client_ca.key.clone()),
    ];
    let cm_unit_path = unit_file("kube-controller-manager.service");
    cm_files.push(PlannedFile::systemd(&cm_unit_path, units::kube_controller_manager(model)).about(
        "kube-controller-manager: node lifecycle, service accounts, CSR signing.",
        "systemd",
        units::kube_controller_manager_explained(model),
    ));
    let restart_on = cm_files.iter().map(|f| f.path.clone()).chain([k("ca.crt"), k("service-account.key")]).collect();
    let cm_unit = unit(model, "kube-controller-manager.service", "kube-controller-manager", restart_on, &[]);

    let sched_cert = secrets.certificate(certs::SCHEDULER_ID);
    let sched_kubeconfig = render_kubeconfig(cluster, &local, ca, "system:kube-scheduler", sched_cert);
    let sched_config_path = "/etc/kubernetes/config/kube-scheduler.yaml";
    let mut sched_files = vec![
        PlannedFile::secret(k("kube-scheduler.kubeconfig"), sched_kubeconfig).about(
            "kube-scheduler's kubeconfig.",
            "kube-scheduler (through its KubeSchedulerConfiguration)",
            vec![(
                "user".into(),
                "CN=O=system:kube-scheduler (upstream's guide once wrote `system:system:kube-scheduler`, which no RBAC rule matches)".into(),
            )],
        ),
        PlannedFile::new(sched_config_path, 0o644, configs::kube_scheduler_config(&k("kube-scheduler.kubeconfig")))
            .about(
                "KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1).",
                "kube-scheduler (--config)",
                vec![
                    ("clientConnection.kubeconfig".into(), "where the scheduler finds the API and its identity".into()),
                    ("leaderElection.leaderElect".into(), "true: one scheduler acts at a time across controllers".into()),
                ],
            ),
    ];
    let sched_unit_path = unit_file("kube-scheduler.service");
    sched_files.push(PlannedFile::systemd(&sched_unit_path, units::kube_scheduler(sched_config_path)).about(
        "kube-scheduler: assigns pods to nodes.",
        "systemd",
        vec![(
            "--config".into(),
            "the scheduler reads everything from its configuration file; seed 002 lost hours to a missing one".into(),
        )],
    ));
    let restart_on = sched_files.iter().map(|f| f.path.clone()).collect();
    let sched_unit = unit(model, "kube-scheduler.service", "kube-scheduler", restart_on, &[]);

    let healthz = configs::healthz_nginx(model, me);
    let healthz_unit_path = unit_file(HEALTHZ_UNIT);
    let healthz_files = vec![
        PlannedFile::new(HEALTHZ_CONF, 0o644, healthz).about(
            "nginx as a plain-HTTP /healthz endpoint in front of the API server's HTTPS /healthz.",
            "nginx, run by kforge-healthz.service; probed by an L4 load balancer's HTTP health check",
            vec![
                (
                    "listen".into(),
                    format!("{}:{} and 127.0.0.1: the mesh only, like the API", me.mesh_ip, spec.hardway.healthz_port),
                ),
                (
                    "proxy_ssl_verify".into(),
                    "on: the proxy checks the API server's certificate against the cluster CA".into(),
                ),
            ],
        ),
        PlannedFile::systemd(&healthz_unit_path, units::healthz()),
    ];
    let healthz_unit = nginx_unit(HEALTHZ_UNIT, &healthz_files);

    let admin = secrets.certificate(crate::k3s::ADMIN_CERT_ID);
    let admin_local = PlannedFile::secret(ADMIN_KUBECONFIG, render_kubeconfig(cluster, &local, ca, "admin", admin))
        .about(
            "The admin kubeconfig on this controller (O=system:masters), for kubectl on the machine and for applying addons.",
            "kubectl",
            vec![],
        );

    let p = np.phase(Phase::ControlPlane);
    p.files.extend(apiserver_files);
    p.files.extend(cm_files);
    p.files.extend(sched_files);
    p.files.extend(healthz_files);
    p.files.push(admin_local);
    p.units.extend([apiserver_unit, cm_unit, sched_unit, healthz_unit]);
}

fn plan_worker(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, node: &Node, np: &mut NodePlan) {
    let cluster = &model.spec.metadata.name;
    let ca = &secrets.ca("server-ca").cert;
    let pod_cidr = me.pod_cidr.expect("a worker has a pod network after reconcile");
    let hw = &model.spec.spec.hardway;
    // Kubelet and kube-proxy dial the local balancer over all controllers.
    let api = format!("https://127.0.0.1:{}", hw.api_balancer_port);

    let mut runtime_files = vec![
        PlannedFile::new("/etc/containerd/config.toml", 0o644, configs::containerd_config(&hw.sandbox_image)).about(
            "containerd's configuration (containerd 2.x, `version = 3`): the CRI plugin with runc as the runtime and CNI from /opt/cni/bin.",
            "containerd",
            vec![
                ("SystemdCgroup".into(), "true, matching the kubelet's cgroupDriver: systemd (two cgroup managers fight otherwise)".into()),
                ("restrict_oom_score_adj".into(), "true: no container gets a lower OOM score than containerd itself (-999 from its unit, so nothing changes on a normal host); where containerd cannot lower its own (no CAP_SYS_RESOURCE, as in nested or lab machines) pods still start instead of failing at runc init".into()),
                ("pinned_images.sandbox".into(), format!("{}: the pod sandbox (\"pause\") image (hardway.sandboxImage); the kubelet no longer has a flag for it, and a pinned image is never garbage-collected", hw.sandbox_image)),
                ("cni.conf_dir".into(), "/etc/cni/net.d: the bridge and loopback configs kforge writes".into()),
            ],
        ),
        PlannedFile::new("/etc/cni/net.d/10-bridge.conf", 0o644, configs::cni_bridge(pod_cidr)).about(
            format!("The CNI bridge network of {}: pods get addresses from its own pod network.", node.name),
            "containerd's CRI plugin, through the CNI bridge and host-local plugins",
            vec![
                ("ipam.ranges".into(), format!("{pod_cidr}: this worker's slice of {}, allocated once and kept in the secrets bundle", model.spec.spec.network.pod_cidr)),
                ("bridge".into(), "cni0: the firewall treats it as cluster-internal".into()),
                ("ipMasq".into(), "true: pods reach the internet through the node's address".into()),
                ("routes to other workers".into(), "none here: the mesh's AllowedIPs carry every worker's pod network, and wg-quick installs those routes".into()),
            ],
        ),
        PlannedFile::new("/etc/cni/net.d/99-loopback.conf", 0o644, configs::cni_loopback())
            .about("The loopback interface inside every pod.", "the CNI loopback plugin", vec![]),
        PlannedFile::new("/etc/modules-load.d/kforge-kubernetes.conf", 0o644, "overlay\nbr_netfilter\n").about(
            "Kernel modules containers need: overlay (image layers), br_netfilter (Services for bridged pod traffic).",
            "systemd-modules-load",
            vec![],
        ),
        PlannedFile::new(
            "/etc/sysctl.d/91-kforge-kubernetes.conf",
            0o644,
            "# Managed by kforge: bridged pod traffic passes iptables, so Services work pod to pod.\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n",
        ),
    ];
    let containerd_unit_path = unit_file("containerd.service");
    runtime_files.push(PlannedFile::systemd(&containerd_unit_path, units::containerd()));
    let containerd_restart: Vec<String> = vec!["/etc/containerd/config.toml".into(), containerd_unit_path.clone()];
    let mut containerd_unit = unit(model, "containerd.service", "containerd", containerd_restart, &["runc"]);
    if model.spec.spec.artifacts.runc.is_some() {
        containerd_unit.restart_on.push(component("runc").dest.into());
    }

    let balancer_unit_path = unit_file(API_BALANCER_UNIT);
    let balancer_files = vec![
        PlannedFile::new(API_BALANCER_CONF, 0o644, configs::api_balancer_nginx(model)).about(
            "nginx stream: the API on 127.0.0.1 of this worker, balanced over every controller's API server.",
            "nginx, run by kforge-api-balancer.service; dialled by the kubelet and kube-proxy (their kubeconfigs)",
            vec![
                ("listen".into(), format!("127.0.0.1:{}: local only, nothing new on any interface", hw.api_balancer_port)),
                ("upstream".into(), format!("every controller's mesh address on {API_PORT}: with one controller down, the others answer")),
                ("TLS".into(), "passed through untouched: the client still verifies the API server's certificate (its SANs include 127.0.0.1) and presents its own".into()),
            ],
        ),
        PlannedFile::systemd(&balancer_unit_path, units::api_balancer(&model.spec.spec.mesh.interface)),
    ];
    let balancer_unit = nginx_unit(API_BALANCER_UNIT, &balancer_files);

    let kubelet_serving = secrets.certificate(&certs::kubelet_serving_id(&node.name));
    let kubelet_client = secrets.certificate(&certs::kubelet_client_id(&node.name));
    let user = format!("system:node:{}", node.name);
    let kl = |name: &str| format!("{KUBELET_DIR}/{name}");
    let mut kubelet_files = vec![
        PlannedFile::new(kl("ca.crt"), 0o644, secrets.ca("client-ca").cert.clone()).about(
            "The client CA the kubelet trusts: the API server's kubelet client certificate is signed by it.",
            "kubelet (authentication.x509.clientCAFile)",
            vec![],
        ),
        PlannedFile::new(kl("kubelet.crt"), 0o644, kubelet_serving.cert.clone()).about(
            format!("The kubelet's serving certificate on {}, signed by the cluster CA.", node.name),
            "kubelet (tlsCertFile); kube-apiserver verifies it (--kubelet-certificate-authority)",
            vec![("SANs".into(), format!("{} and its mesh address {}: the API server dials kubelets by InternalIP, which is the mesh address", node.name, me.mesh_ip))],
        ),
        PlannedFile::secret(kl("kubelet.key"), kubelet_serving.key.clone()),
        PlannedFile::secret(kl("kubeconfig"), render_kubeconfig(cluster, &api, ca, &user, kubelet_client)).about(
            format!("The kubelet's kubeconfig on {}.", node.name),
            "kubelet (--kubeconfig)",
            vec![
                ("user".into(), format!("CN={user}, O=system:nodes: the Node authorizer lets a kubelet see only its own pods, secrets and node object")),
                ("server".into(), format!("{api}: this worker's API load balancer over every controller")),
            ],
        ),
        PlannedFile::new(kl("kubelet-config.yaml"), 0o644, configs::kubelet_config(model, pod_cidr)).about(
            "KubeletConfiguration (kubelet.config.k8s.io/v1beta1).",
            "kubelet (--config)",
            configs::kubelet_config_explained(model, pod_cidr),
        ),
    ];
    let kubelet_unit_path = unit_file("kubelet.service");
    kubelet_files.push(PlannedFile::systemd(&kubelet_unit_path, units::kubelet(model, me, node)).about(
        format!("The kubelet on {}.", node.name),
        "systemd",
        vec![
            (
                "--node-ip".into(),
                format!(
                    "{}: the mesh address, so the API server, metrics and logs all reach this node over WireGuard",
                    me.mesh_ip
                ),
            ),
            ("Requires=containerd.service".into(), "the kubelet runs pods through containerd's CRI socket".into()),
        ],
    ));
    let restart_on = kubelet_files.iter().map(|f| f.path.clone()).collect();
    let kubelet_unit = unit(model, "kubelet.service", "kubelet", restart_on, &["containerd"]);

    let proxy_cert = secrets.certificate(certs::KUBE_PROXY_ID);
    let kp = |name: &str| format!("{KUBE_PROXY_DIR}/{name}");
    let mut proxy_files = vec![
        PlannedFile::secret(kp("kubeconfig"), render_kubeconfig(cluster, &api, ca, "system:kube-proxy", proxy_cert))
            .about(
                "kube-proxy's kubeconfig.",
                "kube-proxy (through its KubeProxyConfiguration)",
                vec![("user".into(), "CN=system:kube-proxy, O=system:node-proxier: the built-in ClusterRoleBinding grants it Services and EndpointSlices".into())],
            ),
        PlannedFile::new(kp("kube-proxy-config.yaml"), 0o644, configs::kube_proxy_config(model, &kp("kubeconfig")))
            .about(
                "KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1).",
                "kube-proxy (--config)",
                vec![
                    ("mode".into(), "iptables: Service addresses are rewritten on every node".into()),
                    ("conntrack.maxPerCore".into(), "0: kube-proxy leaves the kernel-wide conntrack table size to the host (nf_conntrack_max) rather than resizing it; it fails to start where nf_conntrack is built in otherwise".into()),
                    ("clusterCIDR".into(), format!("{}: traffic from outside it to a Service is masqueraded", model.spec.spec.network.pod_cidr)),
                ],
            ),
    ];
    let proxy_unit_path = unit_file("kube-proxy.service");
    proxy_files.push(PlannedFile::systemd(&proxy_unit_path, units::kube_proxy(&kp("kube-proxy-config.yaml"))));
    let restart_on = proxy_files.iter().map(|f| f.path.clone()).collect();
    let proxy_unit = unit(model, "kube-proxy.service", "kube-proxy", restart_on, &[]);

    let runtime = np.phase(Phase::Runtime);
    runtime.files.extend(runtime_files);
    runtime.files.extend(balancer_files);
    runtime.units.extend([containerd_unit, balancer_unit]);
    let p = np.phase(Phase::Workers);
    p.commands.extend(image_imports(model));
    p.files.extend(kubelet_files);
    p.files.extend(proxy_files);
    p.units.extend([kubelet_unit, proxy_unit]);
}

/// Every address a kubelet on `me` is reached at (its serving certificate's SANs).
pub fn node_addresses(me: &Member) -> Vec<IpAddr> {
    let mut v = vec![IpAddr::V4(me.mesh_ip)];
    if let Some(ep) = me.endpoint {
        v.push(ep.ip());
    }
    v
}

/// The stand-in that keeps the API server (and so the addons and the Kubernetes
/// checks) from running, if any.
pub fn addons_blocked_by(model: &Model<'_>) -> Option<String> {
    addons::blocked_by(model)
}

/// Notes for the operator specific to hardway.
pub fn notes(model: &Model<'_>) -> Vec<String> {
    let mut notes = Vec::new();
    let artifacts = &model.spec.spec.artifacts;
    // The etcd release tarball carries etcdctl too.
    let etcd_tarball = artifacts.etcd.as_ref().is_some_and(Artifact::is_archive);
    let missing: Vec<&str> = COMPONENT_KEYS
        .iter()
        .copied()
        .filter(|k| artifacts.get(k).is_none() && !(*k == "etcdctl" && etcd_tarball))
        .collect();
    if !missing.is_empty() {
        notes.push(format!(
            "no artifact is configured for {}: hosts must already have them (set spec.artifacts.<name>)",
            missing.join(", ")
        ));
    }
    let local: Vec<&str> = artifacts
        .entries()
        .into_iter()
        .filter(|(_, a)| a.url.is_none() && a.stand_in.is_none())
        .map(|(k, _)| k)
        .collect();
    if !local.is_empty() {
        notes.push(format!(
            "{} come from this workstation: `apply` uploads them; cloud-init user-data cannot carry binaries, so hosts booted from it need them in their image (or pin url + sha256)",
            local.join(", ")
        ));
    }
    let stand_ins = stand_ins(model);
    if !stand_ins.is_empty() {
        notes.push(format!(
            "stand-ins, not the real programs: {} — installed with their units so both can be verified, never started",
            stand_ins.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
        ));
    }
    if addons::blocked_by(model).is_some() {
        notes.push(format!(
            "addons (RBAC apiserver-to-kubelet, CoreDNS) are written to {ADDONS_DIR} but not applied: {} is a stand-in",
            addons::blocked_by(model).unwrap_or_default()
        ));
    }
    notes
}
