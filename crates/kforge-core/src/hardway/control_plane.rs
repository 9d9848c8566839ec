//! The control plane on each controller: kube-apiserver, kube-controller-manager,
//! kube-scheduler (with its configuration file), the nginx `/healthz` proxy for an L4
//! load balancer, and the controller's admin kubeconfig.

use super::{ADMIN_KUBECONFIG, HEALTHZ_CONF, HEALTHZ_UNIT, KUBE_DIR, certs, configs, nginx_unit, unit, units};
use crate::component::Component;
use crate::kubeconfig::render_kubeconfig;
use crate::model::{API_PORT, Member, Model};
use crate::paths::unit_file;
use crate::pki::Ca;
use crate::plan::{NodePlan, Phase, PlannedFile};
use crate::secrets::SecretsBundle;
use crate::spec::Node;

pub(super) fn plan(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, node: &Node, np: &mut NodePlan) {
    let spec = &model.spec.spec;
    let cluster = &model.spec.metadata.name;
    let ca = &secrets.ca(Ca::Server).cert;
    let client_ca = secrets.ca(Ca::Client);
    let front_ca = &secrets.ca(Ca::RequestHeader).cert;
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
        PlannedFile::new(k("etcd-ca.crt"), 0o644, secrets.ca(Ca::EtcdServer).cert.clone()),
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
    let apiserver_unit = unit(model, "kube-apiserver.service", Component::KubeApiserver, restart_on, &[]);

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
    let cm_unit = unit(model, "kube-controller-manager.service", Component::KubeControllerManager, restart_on, &[]);

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
    let sched_unit = unit(model, "kube-scheduler.service", Component::KubeScheduler, restart_on, &[]);

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
