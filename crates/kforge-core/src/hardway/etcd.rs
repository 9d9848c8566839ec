//! The etcd member on each controller: mTLS for clients and peers under their own
//! CAs, peers on mesh addresses, and kforge's etcdctl environment.

use super::{ETCD_DATA_DIR, ETCD_DIR, ETCDCTL_ENV, certs, service, unit, units};
use crate::component::Component;
use crate::model::{Member, Model};
use crate::pki::Ca;
use crate::plan::{NodePlan, Phase, PlannedFile};
use crate::secrets::SecretsBundle;

/// The etcd cluster the plan deploys, described once: the unit's flags, `kforge etcd`
/// (snapshot, restore) and `kforge status` all read it instead of re-deriving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdCluster {
    /// Every controller, in mesh-address order.
    pub members: Vec<EtcdMember>,
    /// `--initial-cluster-token`; a restore appends its own suffix.
    pub token: String,
    pub data_dir: &'static str,
    /// The etcdctl environment kforge writes (endpoints and client certificate).
    pub env_file: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub name: String,
    pub mesh_ip: std::net::Ipv4Addr,
}

impl EtcdMember {
    pub fn peer_url(&self) -> String {
        format!("https://{}:2380", self.mesh_ip)
    }

    pub fn client_url(&self) -> String {
        format!("https://{}:2379", self.mesh_ip)
    }
}

impl EtcdCluster {
    pub fn of(model: &Model<'_>) -> EtcdCluster {
        EtcdCluster {
            members: super::controllers(model)
                .into_iter()
                .map(|m| EtcdMember { name: m.name.clone(), mesh_ip: m.mesh_ip })
                .collect(),
            token: format!("kforge-{}", model.spec.metadata.name),
            data_dir: ETCD_DATA_DIR,
            env_file: ETCDCTL_ENV,
        }
    }

    /// `--initial-cluster`: `name=peer-url` for every member.
    pub fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect::<Vec<_>>().join(",")
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }
}

pub(super) fn plan(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, np: &mut NodePlan) {
    let etcd_ca = &secrets.ca(Ca::EtcdServer).cert;
    let peer_ca = &secrets.ca(Ca::EtcdPeer).cert;
    let server = secrets.certificate(&certs::etcd_server_id(&me.name));
    let peer = secrets.certificate(&certs::etcd_peer_id(&me.name));
    let client = secrets.certificate(certs::ETCD_CLIENT_ID);
    let cas =
        "kforge's etcd CAs are separate from the Kubernetes CAs: a Kubernetes client certificate opens no door in etcd";
    let ca_file = PlannedFile::new(format!("{ETCD_DIR}/ca.crt"), 0o644, etcd_ca.clone()).about(
        "The etcd client CA (kforge's `etcd/server-ca`): signs etcd's serving certificates and every certificate allowed to talk to etcd as a client.",
        "etcd (--trusted-ca-file: clients must present a certificate it signed), etcdctl and kube-apiserver (--etcd-cafile: to trust etcd's serving certificate)",
        vec![("issuer".into(), cas.into())],
    );
    let cert_file = PlannedFile::new(format!("{ETCD_DIR}/server.crt"), 0o644, server.cert.clone()).about(
        format!("etcd's serving certificate on {}.", me.name),
        "etcd (--cert-file)",
        vec![
            (
                "SANs".into(),
                format!(
                    "{} and its mesh address {}: clients dial etcd on the mesh; 127.0.0.1 for local tools",
                    me.name, me.mesh_ip
                ),
            ),
            (
                "extended key usage".into(),
                "serverAuth and clientAuth: etcd also uses this certificate as a client of its own gRPC gateway".into(),
            ),
        ],
    );
    let key_file = PlannedFile::secret(format!("{ETCD_DIR}/server.key"), server.key.clone());
    let peer_ca_file = PlannedFile::new(format!("{ETCD_DIR}/peer-ca.crt"), 0o644, peer_ca.clone()).about(
        "The etcd peer CA (kforge's `etcd/peer-ca`).",
        "etcd (--peer-trusted-ca-file): only members with a certificate it signed may join the raft group",
        vec![],
    );
    let peer_cert_file = PlannedFile::new(format!("{ETCD_DIR}/peer.crt"), 0o644, peer.cert.clone()).about(
        format!("{}'s etcd peer certificate, used both to serve and to dial the other members.", me.name),
        "etcd (--peer-cert-file)",
        vec![("SANs".into(), format!("{} and {}: peers talk over the mesh only", me.name, me.mesh_ip))],
    );
    let peer_key_file = PlannedFile::secret(format!("{ETCD_DIR}/peer.key"), peer.key.clone());
    let cluster = EtcdCluster::of(model);
    let initial = cluster.initial_cluster();
    let initial_file = PlannedFile::new(
        format!("{ETCD_DIR}/initial-cluster.env"),
        0o644,
        format!(
            "# Managed by kforge: read by etcd only when its data directory is empty.\nETCD_INITIAL_CLUSTER={initial}\nETCD_INITIAL_CLUSTER_STATE=new\n"
        ),
    )
    .about(
        "The members etcd bootstraps with (its --initial-cluster), as an environment file.",
        "etcd (EnvironmentFile), only when its data directory is empty; a change restarts nothing",
        vec![
            ("ETCD_INITIAL_CLUSTER".into(), format!("{initial}: every controller, by mesh address")),
            (
                "ETCD_INITIAL_CLUSTER_STATE".into(),
                "new: the controllers found the cluster together; one added to a running cluster joins it as a learner instead (apply writes /etc/etcd/join.env)".into(),
            ),
        ],
    );
    // The unit's flags name the planned files themselves: one path, written once.
    let etcd_unit = units::etcd(
        model,
        me,
        &cluster,
        &units::EtcdFiles {
            initial_cluster: &initial_file.path,
            ca: &ca_file.path,
            cert: &cert_file.path,
            key: &key_file.path,
            peer_ca: &peer_ca_file.path,
            peer_cert: &peer_cert_file.path,
            peer_key: &peer_key_file.path,
        },
    );
    let initial_path = initial_file.path.clone();
    let files = vec![
        initial_file,
        ca_file,
        cert_file,
        key_file,
        peer_ca_file,
        peer_cert_file,
        peer_key_file,
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
        PlannedFile::from_unit(service(Component::Etcd), &etcd_unit, format!("The etcd member on {}.", me.name)),
    ];
    let restart_on: Vec<String> =
        files.iter().map(|f| f.path.clone()).filter(|p| p != ETCDCTL_ENV && *p != initial_path).collect();
    let u = unit(model, Component::Etcd, restart_on, &[]);
    let p = np.phase(Phase::Datastore);
    p.files.extend(files);
    let release = crate::upgrade::etcd_release(model.spec).map(|v| v.to_string());
    p.gate = u.start.then(|| crate::gates::etcd_member(ETCDCTL_ENV, release.as_deref()));
    p.units.push(u);
}

fn etcdctl_env(model: &Model<'_>) -> String {
    format!(
        "# Managed by kforge: etcdctl over mTLS with kforge's client certificate (etcdctl 3.4+\n\
         # speaks only the v3 API, and 3.6 warns when ETCDCTL_API is set, so it is not).\n\
         ETCDCTL_ENDPOINTS={}\n\
         ETCDCTL_CACERT={ETCD_DIR}/ca.crt\n\
         ETCDCTL_CERT={ETCD_DIR}/kforge-client.crt\n\
         ETCDCTL_KEY={ETCD_DIR}/kforge-client.key\n",
        EtcdCluster::of(model).client_urls().join(",")
    )
}
