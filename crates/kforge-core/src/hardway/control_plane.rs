//! The control plane on each controller: kube-apiserver, kube-controller-manager,
//! kube-scheduler (with its configuration file), the nginx `/healthz` proxy for an L4
//! load balancer, and the controller's admin kubeconfig.

use super::{ADMIN_KUBECONFIG, HEALTHZ_CONF, HEALTHZ_UNIT, KUBE_DIR, certs, configs, nginx_unit, service, unit, units};
use crate::component::Component;
use crate::kubeconfig::render_kubeconfig;
use crate::model::{API_PORT, Member, Model};
use crate::pki::Ca;
use crate::plan::{NodePlan, Phase, PlannedFile, PlannedUnit};
use crate::secrets::SecretsBundle;
use crate::spec::Node;

pub(super) fn plan(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, node: &Node, np: &mut NodePlan) {
    let paths = Paths::new();
    // controller-manager and scheduler talk to the API server on the same machine.
    let local = format!("https://127.0.0.1:{API_PORT}");
    let (apiserver_files, apiserver_unit) = apiserver(model, secrets, me, node, &paths);
    let (cm_files, cm_unit) = controller_manager(model, secrets, &paths, &local);
    let (sched_files, sched_unit) = scheduler(model, secrets, &paths, &local);
    let (healthz_files, healthz_unit) = healthz(model, me);
    let cluster = &model.spec.metadata.name;
    let ca = &secrets.ca(Ca::Server).cert;
    let admin = secrets.certificate(crate::k3s::ADMIN_CERT_ID);
    let admin_local = PlannedFile::secret(ADMIN_KUBECONFIG, render_kubeconfig(cluster, &local, ca, "admin", admin))
        .about(
            "The admin kubeconfig on this controller (O=system:masters), for kubectl on the machine and for applying addons.",
            "kubectl",
            vec![],
        );

    // Gates ask the API with kubectl: none where a stand-in keeps the API from running.
    let kubectl = super::addons_blocked_by(model).is_none().then(super::admin_kubectl);
    let version = &model.spec.spec.distribution.version;
    let p = np.phase(Phase::ControlPlane);
    p.files.extend(apiserver_files);
    p.files.extend(healthz_files);
    p.files.push(admin_local);
    p.gate = kubectl.as_deref().map(|k| crate::gates::api_server(k, version));
    p.units.extend([apiserver_unit, healthz_unit]);
    let p = np.phase(Phase::Controllers);
    p.files.extend(cm_files);
    p.files.extend(sched_files);
    p.gate = kubectl.as_deref().filter(|_| cm_unit.start && sched_unit.start).map(crate::gates::controllers);
    p.units.extend([cm_unit, sched_unit]);
}

/// kube-apiserver: the CAs and certificates it serves and dials with, the
/// service-account key pair, the encryption config, and its unit.
fn apiserver(
    model: &Model<'_>,
    secrets: &SecretsBundle,
    me: &Member,
    node: &Node,
    paths: &Paths,
) -> (Vec<PlannedFile>, PlannedUnit) {
    let spec = &model.spec.spec;
    let ca = &secrets.ca(Ca::Server).cert;
    let client_ca = secrets.ca(Ca::Client);
    let front_ca = &secrets.ca(Ca::RequestHeader).cert;
    let serving = secrets.certificate(&certs::apiserver_id(&node.name));
    let etcd_client = secrets.certificate(certs::APISERVER_ETCD_CLIENT_ID);
    let kubelet_client = secrets.certificate(certs::APISERVER_KUBELET_CLIENT_ID);
    let front_client = secrets.certificate(certs::FRONT_PROXY_CLIENT_ID);
    let sa_public = crate::pki::public_key_pem(&secrets.service_account_key).expect("bundle holds a valid key");
    let mut apiserver_files = vec![
        PlannedFile::new(paths.ca.clone(), 0o644, ca.clone()).about(
            "The cluster CA (kforge's `server-ca`): signs the API server's and the kubelets' serving certificates.",
            "every client of the API (kubeconfigs embed it), kube-apiserver (--kubelet-certificate-authority), kube-controller-manager (--root-ca-file: the ca.crt pods get)",
            vec![],
        ),
        PlannedFile::new(paths.client_ca.clone(), 0o644, client_ca.cert.clone()).about(
            "The client CA (kforge's `client-ca`): a client certificate it signed authenticates as its CN (user) and O (groups).",
            "kube-apiserver (--client-ca-file), kubelets (authentication.x509.clientCAFile)",
            vec![],
        ),
        PlannedFile::new(paths.apiserver_crt.clone(), 0o644, serving.cert.clone()).about(
            format!("The API server's serving certificate on {}.", node.name),
            "kube-apiserver (--tls-cert-file)",
            certs::apiserver_sans_explained(model),
        ),
        PlannedFile::secret(paths.apiserver_key.clone(), serving.key.clone()),
        PlannedFile::new(paths.etcd_ca.clone(), 0o644, secrets.ca(Ca::EtcdServer).cert.clone()),
        PlannedFile::new(paths.etcd_client_crt.clone(), 0o644, etcd_client.cert.clone()).about(
            "The API server's etcd client certificate, signed by the etcd CA.",
            "kube-apiserver (--etcd-certfile)",
            vec![],
        ),
        PlannedFile::secret(paths.etcd_client_key.clone(), etcd_client.key.clone()),
        PlannedFile::new(paths.kubelet_client_crt.clone(), 0o644, kubelet_client.cert.clone()).about(
            "The API server's client certificate towards kubelets (logs, exec, port-forward).",
            "kube-apiserver (--kubelet-client-certificate)",
            vec![(
                "CN".into(),
                "`kubernetes`: the user the system:kube-apiserver-to-kubelet ClusterRole is bound to (addons)".into(),
            )],
        ),
        PlannedFile::secret(paths.kubelet_client_key.clone(), kubelet_client.key.clone()),
        PlannedFile::new(paths.front_proxy_ca.clone(), 0o644, front_ca.clone()),
        PlannedFile::new(paths.front_proxy_client_crt.clone(), 0o644, front_client.cert.clone()).about(
            "The aggregation layer's client certificate (CN front-proxy-client).",
            "kube-apiserver (--proxy-client-cert-file) when it proxies to extension API servers such as metrics-server",
            vec![],
        ),
        PlannedFile::secret(paths.front_proxy_client_key.clone(), front_client.key.clone()),
        PlannedFile::new(paths.sa_pub.clone(), 0o644, sa_public).about(
            "Public half of the service-account signing key.",
            "kube-apiserver (--service-account-key-file: verifies tokens)",
            vec![],
        ),
        PlannedFile::secret(paths.sa_key.clone(), secrets.service_account_key.clone()),
    ];
    if spec.secrets_encryption {
        apiserver_files.push(
            PlannedFile::secret(
                paths.encryption_config.clone(),
                crate::k3s::encryption_config(&secrets.encryption_key),
            )
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
    let apiserver = units::kube_apiserver(
        model,
        me,
        &units::ApiserverFiles {
            client_ca: &paths.client_ca,
            etcd_ca: &paths.etcd_ca,
            etcd_cert: &paths.etcd_client_crt,
            etcd_key: &paths.etcd_client_key,
            kubelet_ca: &paths.ca,
            kubelet_client_cert: &paths.kubelet_client_crt,
            kubelet_client_key: &paths.kubelet_client_key,
            proxy_client_cert: &paths.front_proxy_client_crt,
            proxy_client_key: &paths.front_proxy_client_key,
            front_proxy_ca: &paths.front_proxy_ca,
            service_account_pub: &paths.sa_pub,
            service_account_key: &paths.sa_key,
            tls_cert: &paths.apiserver_crt,
            tls_key: &paths.apiserver_key,
            encryption_config: spec.secrets_encryption.then_some(paths.encryption_config.as_str()),
        },
    );
    apiserver_files.push(PlannedFile::from_unit(
        service(Component::KubeApiserver),
        &apiserver,
        format!("The Kubernetes API server on {}.", node.name),
    ));
    let restart_on = apiserver_files.iter().map(|f| f.path.clone()).collect();
    (apiserver_files, unit(model, Component::KubeApiserver, restart_on, &[]))
}

/// The kubeconfig of a component that talks to the API server on its own controller.
fn local_kubeconfig(model: &Model<'_>, secrets: &SecretsBundle, local: &str, user: &str, cert_id: &str) -> String {
    let ca = &secrets.ca(Ca::Server).cert;
    render_kubeconfig(&model.spec.metadata.name, local, ca, user, secrets.certificate(cert_id))
}

/// kube-controller-manager: its kubeconfig, the client CA's key (it signs CSRs), its unit.
fn controller_manager(
    model: &Model<'_>,
    secrets: &SecretsBundle,
    paths: &Paths,
    local: &str,
) -> (Vec<PlannedFile>, PlannedUnit) {
    let client_ca = secrets.ca(Ca::Client);
    let cm_kubeconfig =
        local_kubeconfig(model, secrets, local, "system:kube-controller-manager", certs::CONTROLLER_MANAGER_ID);
    let mut cm_files = vec![
        PlannedFile::secret(paths.cm_kubeconfig.clone(), cm_kubeconfig).about(
            "kube-controller-manager's kubeconfig.",
            "kube-controller-manager (--kubeconfig)",
            vec![
                ("server".into(), format!("{local}: the API server on this same controller")),
                ("user".into(), "CN=O=system:kube-controller-manager, the identity its ClusterRole is bound to".into()),
            ],
        ),
        PlannedFile::secret(paths.client_ca_key.clone(), client_ca.key.clone()),
    ];
    let cm = units::kube_controller_manager(
        model,
        &units::ControllerManagerFiles {
            kubeconfig: &paths.cm_kubeconfig,
            signing_cert: &paths.client_ca,
            signing_key: &paths.client_ca_key,
            root_ca: &paths.ca,
            service_account_key: &paths.sa_key,
        },
    );
    cm_files.push(PlannedFile::from_unit(
        service(Component::KubeControllerManager),
        &cm,
        "kube-controller-manager: node lifecycle, service accounts, CSR signing.",
    ));
    let restart_on = cm_files.iter().map(|f| f.path.clone()).chain([paths.ca.clone(), paths.sa_key.clone()]).collect();
    (cm_files, unit(model, Component::KubeControllerManager, restart_on, &[]))
}

/// kube-scheduler: its kubeconfig, its KubeSchedulerConfiguration, its unit.
fn scheduler(
    model: &Model<'_>,
    secrets: &SecretsBundle,
    paths: &Paths,
    local: &str,
) -> (Vec<PlannedFile>, PlannedUnit) {
    let sched_kubeconfig = local_kubeconfig(model, secrets, local, "system:kube-scheduler", certs::SCHEDULER_ID);
    let sched_config_path = "/etc/kubernetes/config/kube-scheduler.yaml";
    let mut sched_files = vec![
        PlannedFile::secret(paths.sched_kubeconfig.clone(), sched_kubeconfig).about(
            "kube-scheduler's kubeconfig.",
            "kube-scheduler (through its KubeSchedulerConfiguration)",
            vec![(
                "user".into(),
                "CN=O=system:kube-scheduler (upstream's guide once wrote `system:system:kube-scheduler`, which no RBAC rule matches)".into(),
            )],
        ),
        PlannedFile::new(sched_config_path, 0o644, configs::kube_scheduler_config(&paths.sched_kubeconfig.clone()))
            .about(
                "KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1).",
                "kube-scheduler (--config)",
                vec![
                    ("clientConnection.kubeconfig".into(), "where the scheduler finds the API and its identity".into()),
                    ("leaderElection.leaderElect".into(), "true: one scheduler acts at a time across controllers".into()),
                ],
            ),
    ];
    sched_files.push(PlannedFile::from_unit(
        service(Component::KubeScheduler),
        &units::kube_scheduler(&super::binary(model, Component::KubeScheduler), sched_config_path),
        "kube-scheduler: assigns pods to nodes.",
    ));
    let restart_on = sched_files.iter().map(|f| f.path.clone()).collect();
    (sched_files, unit(model, Component::KubeScheduler, restart_on, &[]))
}

/// nginx as a plain-HTTP /healthz in front of the API server, for an L4 load balancer.
fn healthz(model: &Model<'_>, me: &Member) -> (Vec<PlannedFile>, PlannedUnit) {
    let spec = &model.spec.spec;
    let healthz = configs::healthz_nginx(model, me);
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
        PlannedFile::unit(HEALTHZ_UNIT, units::healthz().render()),
    ];
    let unit = nginx_unit(HEALTHZ_UNIT, &healthz_files);
    (healthz_files, unit)
}

/// The files the control plane's units read, under /var/lib/kubernetes: each path is
/// written once and used by both the planned file and the flag that names it.
struct Paths {
    apiserver_crt: String,
    apiserver_key: String,
    ca: String,
    client_ca: String,
    client_ca_key: String,
    cm_kubeconfig: String,
    encryption_config: String,
    etcd_ca: String,
    etcd_client_crt: String,
    etcd_client_key: String,
    front_proxy_ca: String,
    front_proxy_client_crt: String,
    front_proxy_client_key: String,
    kubelet_client_crt: String,
    kubelet_client_key: String,
    sa_key: String,
    sa_pub: String,
    sched_kubeconfig: String,
}

impl Paths {
    fn new() -> Paths {
        Paths {
            apiserver_crt: format!("{KUBE_DIR}/kube-apiserver.crt"),
            apiserver_key: format!("{KUBE_DIR}/kube-apiserver.key"),
            ca: format!("{KUBE_DIR}/ca.crt"),
            client_ca: format!("{KUBE_DIR}/client-ca.crt"),
            client_ca_key: format!("{KUBE_DIR}/client-ca.key"),
            cm_kubeconfig: format!("{KUBE_DIR}/kube-controller-manager.kubeconfig"),
            encryption_config: format!("{KUBE_DIR}/encryption-config.yaml"),
            etcd_ca: format!("{KUBE_DIR}/etcd-ca.crt"),
            etcd_client_crt: format!("{KUBE_DIR}/apiserver-etcd-client.crt"),
            etcd_client_key: format!("{KUBE_DIR}/apiserver-etcd-client.key"),
            front_proxy_ca: format!("{KUBE_DIR}/front-proxy-ca.crt"),
            front_proxy_client_crt: format!("{KUBE_DIR}/front-proxy-client.crt"),
            front_proxy_client_key: format!("{KUBE_DIR}/front-proxy-client.key"),
            kubelet_client_crt: format!("{KUBE_DIR}/apiserver-kubelet-client.crt"),
            kubelet_client_key: format!("{KUBE_DIR}/apiserver-kubelet-client.key"),
            sa_key: format!("{KUBE_DIR}/service-account.key"),
            sa_pub: format!("{KUBE_DIR}/service-account.pub"),
            sched_kubeconfig: format!("{KUBE_DIR}/kube-scheduler.kubeconfig"),
        }
    }
}
