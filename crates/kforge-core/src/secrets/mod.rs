//! Stage 2 of the pipeline: the secrets bundle (Talos-style).
//!
//! One file holds everything secret or stateful about a cluster: CAs, tokens,
//! WireGuard keys, the encryption-at-rest key, the service-account key, every issued
//! leaf, and the mesh addresses handed out so far. It is created on first use and
//! then only ever extended: [`SecretsBundle::reconcile_identity`] adds what a new
//! node or peer needs, [`SecretsBundle::reconcile_certificates`] (re)issues only
//! leaves whose request changed or that are close to expiry. Nothing is ever
//! silently regenerated; `Debug` redacts; the text never reaches stdout or a log.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::pki::{self, Ca, CertAndKey, CertRequest, IssuedCert, LoadedCa, PkiError};
use crate::random::{random_bytes, random_hex};
use crate::spec::{Cluster, IpAddress};
use crate::wireguard::PrivateKey;

pub const BUNDLE_KIND: &str = "SecretsBundle";

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretsBundle {
    pub api_version: String,
    pub kind: String,
    /// The cluster this bundle belongs to; a mismatch is refused.
    pub cluster: String,
    pub cas: BTreeMap<String, CertAndKey>,
    pub service_account_key: String,
    /// Secret half of the server join token (`K10<ca hash>::server:<this>`).
    pub k3s_token: String,
    /// Secret half of the agent join token (`K10<ca hash>::node:<this>`).
    pub k3s_agent_token: String,
    /// 32 random bytes, base64: the aescbc key for Secrets at rest.
    pub encryption_key: String,
    /// Mesh member (node or peer) → WireGuard private key.
    pub wireguard: BTreeMap<String, String>,
    /// Mesh member → address; kept so adding a member never renumbers others.
    #[serde(rename = "meshIPs")]
    pub mesh_ips: BTreeMap<String, Ipv4Addr>,
    /// Leaf id (e.g. `admin`) → issued certificate.
    pub certificates: BTreeMap<String, IssuedCert>,
    /// hardway worker → its pod network; kept so a new worker never moves another's pods.
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_cidrs: BTreeMap<String, Ipv4Net>,
    /// The GitOps deploy key and SOPS age key: created the first time `spec.gitops` is
    /// set, then kept (also when it is removed: the forge knows this deploy key, and
    /// Git holds secrets encrypted to this age key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<crate::gitops::GitOpsKeys>,
    /// The record of what apply deployed: every node it has touched, written before it
    /// touches one. A node dropped from the cluster file stays here — with its keys,
    /// mesh address, pod network and certificates — until apply has removed it from the
    /// cluster: reading the file never forgets a node that still runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployed: BTreeMap<String, DeployedNode>,
    /// Client certificates of removed nodes that the API must refuse (Kubernetes has no
    /// certificate revocation): credential id (`X509SHA256=…`) → what it was. An entry
    /// goes once its certificate has expired anyway.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked: BTreeMap<String, RevokedCredential>,
}

/// A certificate the cluster refuses (see [`SecretsBundle::revoked`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokedCredential {
    pub node: String,
    /// The leaf's id in the bundle when it was issued (e.g. `kubelet-client/lab-4`).
    pub certificate: String,
    /// RFC 3339: after this the certificate is refused anyway, and the entry goes.
    pub not_after: String,
}

/// A node as apply last deployed it: what its removal needs once the file forgets it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployedNode {
    pub role: crate::spec::Roles,
    /// How apply reached it over SSH (host, user, port): a removal resets the host.
    pub ssh: crate::spec::NodeSsh,
}

impl std::fmt::Debug for SecretsBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsBundle")
            .field("cluster", &self.cluster)
            .field("cas", &self.cas.keys().collect::<Vec<_>>())
            .field("certificates", &self.certificates.keys().collect::<Vec<_>>())
            .field("mesh_ips", &self.mesh_ips)
            .finish_non_exhaustive()
    }
}

/// Why a leaf is issued now.
enum Due {
    Missing,
    /// Subject, SANs, usage, issuer or key algorithm changed.
    RequestChanged,
    /// Inside `pki.renewBeforeDays` of expiry.
    Expiring,
    /// The cluster refuses it: revoked when its node left, and the node is back in the
    /// file (the same certificate would be locked out for good).
    Revoked,
}

/// What a reconcile changed, for the operator (names only, never values).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub created: Vec<Item>,
    /// Certificate ids.
    pub reissued: Vec<String>,
    pub removed: Vec<Item>,
}

/// What kind of bundle entry a report names (never its value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Ca,
    /// Tokens and keys that are not per member: service-account key, K3s tokens,
    /// the encryption-at-rest key.
    Secret,
    WireGuardKey,
    MeshAddress,
    PodNetwork,
    Certificate,
    /// A removed node's certificate the API refuses from now on.
    Revocation,
}

impl ItemKind {
    /// How a count of these reads: "5 CAs", "2 pod networks".
    pub fn plural(self) -> &'static str {
        match self {
            ItemKind::Ca => "CAs",
            ItemKind::Secret => "other secrets",
            ItemKind::WireGuardKey => "WireGuard keys",
            ItemKind::MeshAddress => "mesh addresses",
            ItemKind::PodNetwork => "pod networks",
            ItemKind::Certificate => "certificates",
            ItemKind::Revocation => "revoked certificates",
        }
    }
}

/// One entry of the bundle a reconcile created or removed, by kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: ItemKind,
    pub name: String,
}

impl Item {
    fn new(kind: ItemKind, name: impl Into<String>) -> Item {
        Item { kind, name: name.into() }
    }
}

impl ReconcileReport {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.reissued.is_empty() && self.removed.is_empty()
    }
    fn merge(&mut self, other: ReconcileReport) {
        self.created.extend(other.created);
        self.reissued.extend(other.reissued);
        self.removed.extend(other.removed);
    }
}

impl SecretsBundle {
    /// An empty bundle for `cluster`; [`reconcile_identity`](Self::reconcile_identity) fills it.
    pub fn empty(cluster: &str) -> SecretsBundle {
        SecretsBundle {
            api_version: crate::spec::API_VERSION.into(),
            kind: BUNDLE_KIND.into(),
            cluster: cluster.into(),
            cas: BTreeMap::new(),
            service_account_key: String::new(),
            k3s_token: String::new(),
            k3s_agent_token: String::new(),
            encryption_key: String::new(),
            wireguard: BTreeMap::new(),
            mesh_ips: BTreeMap::new(),
            certificates: BTreeMap::new(),
            pod_cidrs: BTreeMap::new(),
            gitops: None,
            deployed: BTreeMap::new(),
            revoked: BTreeMap::new(),
        }
    }

    /// Revoke the client certificates of every departed node (its kubelet's identity
    /// towards the API), and forget revocations whose certificate has expired. Done
    /// when the removal is planned: from then on the node is leaving, whatever happens.
    pub fn revoke_departed(&mut self, spec: &Cluster, now: OffsetDateTime) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let departed = self.departed_names(spec);
        for (id, issued) in &self.certificates {
            let Some((kind, node)) = id.rsplit_once('/') else { continue };
            if kind != "kubelet-client" || !departed.contains(node) {
                continue;
            }
            let (Some(cred), Some(not_after)) =
                (pki::credential_id(&issued.pair.cert), pki::not_after(&issued.pair.cert))
            else {
                continue;
            };
            if let std::collections::btree_map::Entry::Vacant(e) = self.revoked.entry(cred) {
                let not_after = not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                e.insert(RevokedCredential { node: node.to_string(), certificate: id.clone(), not_after });
                report.created.push(Item::new(ItemKind::Revocation, id.clone()));
            }
        }
        self.revoked.retain(|_, r| {
            time::OffsetDateTime::parse(&r.not_after, &time::format_description::well_known::Rfc3339)
                .is_ok_and(|t| t > now)
        });
        report
    }

    /// Nodes apply deployed that the file no longer names: removals still to apply.
    /// Their identity is kept until then.
    pub fn departed<'a>(&'a self, spec: &'a Cluster) -> impl Iterator<Item = (&'a String, &'a DeployedNode)> + 'a {
        self.deployed.iter().filter(|(name, _)| !spec.spec.nodes.iter().any(|n| &n.name == *name))
    }

    /// Record every node of the file as deployed (apply, before it touches a host);
    /// true when the record changed.
    pub fn record_deployed(&mut self, spec: &Cluster) -> bool {
        let mut changed = false;
        for n in &spec.spec.nodes {
            let mut ssh = n.ssh.clone();
            // What apply dials: the endpoint when no SSH host is named.
            if ssh.host.is_none() {
                ssh.host = n.endpoint.map(|e| e.to_string());
            }
            let record = DeployedNode { role: n.role.clone(), ssh };
            if self.deployed.get(&n.name) != Some(&record) {
                self.deployed.insert(n.name.clone(), record);
                changed = true;
            }
        }
        changed
    }

    /// A removal applied: the node leaves the record, and the next reconcile drops its
    /// keys, address, pod network and certificates.
    pub fn forget_removed(&mut self, node: &str) {
        self.deployed.remove(node);
    }

    fn departed_names(&self, spec: &Cluster) -> BTreeSet<String> {
        self.departed(spec).map(|(n, _)| n.clone()).collect()
    }

    /// Create whatever the cluster file needs and the bundle lacks: CAs, tokens, keys,
    /// WireGuard keys and mesh addresses for new members. Drops keys and addresses of
    /// members no longer in the file. Existing material is never replaced.
    pub fn reconcile_identity(&mut self, spec: &Cluster, now: OffsetDateTime) -> Result<ReconcileReport, PkiError> {
        let mut report = ReconcileReport::default();
        let pki = &spec.spec.pki;
        for ca in Ca::ALL {
            if !self.cas.contains_key(ca.id()) {
                let cn = format!("kforge-{}-{}", spec.metadata.name, ca.id().replace('/', "-"));
                self.cas.insert(ca.id().to_string(), pki::new_ca(&cn, pki.key_algorithm, pki.ca_validity_days, now)?);
                report.created.push(Item::new(ItemKind::Ca, ca.id()));
            }
        }
        if self.service_account_key.is_empty() {
            self.service_account_key = pki::generate_key(pki.key_algorithm)?.serialize_pem();
            report.created.push(Item::new(ItemKind::Secret, "service-account key"));
        }
        if self.k3s_token.is_empty() {
            self.k3s_token = random_hex(32);
            report.created.push(Item::new(ItemKind::Secret, "k3s server token"));
        }
        if self.k3s_agent_token.is_empty() {
            self.k3s_agent_token = random_hex(32);
            report.created.push(Item::new(ItemKind::Secret, "k3s agent token"));
        }
        if self.encryption_key.is_empty() {
            self.encryption_key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>());
            report.created.push(Item::new(ItemKind::Secret, "secrets-encryption key"));
        }
        if spec.spec.gitops.is_some() && self.gitops.is_none() {
            self.gitops = Some(crate::gitops::GitOpsKeys::generate(&spec.metadata.name));
            report.created.push(Item::new(ItemKind::Secret, "gitops deploy key"));
            report.created.push(Item::new(ItemKind::Secret, "gitops SOPS age key"));
        }
        report.merge(self.reconcile_wireguard(spec));
        report.merge(self.reconcile_mesh_ips(spec));
        report.merge(self.reconcile_pod_cidrs(spec));
        Ok(report)
    }

    /// hardway: each worker's own slice of `network.podCIDR` (kept ones first, then
    /// the lowest free slice for each new worker in file order). Its CNI bridge hands
    /// out pod addresses from it and the mesh routes it to that worker.
    fn reconcile_pod_cidrs(&mut self, spec: &Cluster) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let ipnet::IpNet::V4(pods) = spec.spec.network.pod_cidr.0 else {
            return report;
        };
        let prefix = spec.spec.hardway.node_pod_prefix;
        let workers: Vec<&str> = if spec.spec.distribution.kind == crate::spec::DistributionKind::Hardway {
            spec.spec.nodes.iter().filter(|n| n.role.has(crate::spec::Role::Worker)).map(|n| n.name.as_str()).collect()
        } else {
            Vec::new()
        };
        // Departed workers keep their network (their pods may still run) and get none.
        let departed = self.departed_names(spec);
        let mut next: BTreeMap<String, Ipv4Net> = BTreeMap::new();
        for w in workers.iter().copied().chain(departed.iter().map(String::as_str)) {
            if let Some(net) = self.pod_cidrs.get(w)
                && net.prefix_len() == prefix
                && pods.contains(net)
                && !next.values().any(|n| n == net)
            {
                next.insert(w.to_string(), *net);
            }
        }
        if let Ok(mut slices) = pods.subnets(prefix) {
            for w in &workers {
                if !next.contains_key(*w) {
                    let used: BTreeSet<Ipv4Net> = next.values().copied().collect();
                    let net =
                        slices.find(|s| !used.contains(s)).expect("validation checked the pod network is large enough");
                    next.insert(w.to_string(), net);
                    report.created.push(Item::new(ItemKind::PodNetwork, format!("{w}={net}")));
                }
            }
        }
        for (name, net) in &self.pod_cidrs {
            if !next.contains_key(name) {
                report.removed.push(Item::new(ItemKind::PodNetwork, format!("{name}={net}")));
            }
        }
        self.pod_cidrs = next;
        report
    }

    fn reconcile_wireguard(&mut self, spec: &Cluster) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let departed = self.departed_names(spec);
        let wanted: BTreeSet<&str> = spec
            .spec
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(spec.spec.access.peers.iter().filter(|p| p.public_key.is_none()).map(|p| p.name.as_str()))
            .chain(departed.iter().map(String::as_str))
            .collect();
        for name in &wanted {
            if !self.wireguard.contains_key(*name) {
                self.wireguard.insert(name.to_string(), PrivateKey::generate().as_base64().to_string());
                report.created.push(Item::new(ItemKind::WireGuardKey, *name));
            }
        }
        self.wireguard.retain(|name, _| {
            let keep = wanted.contains(name.as_str());
            if !keep {
                report.removed.push(Item::new(ItemKind::WireGuardKey, name.clone()));
            }
            keep
        });
        report
    }

    /// Pinned addresses first, then kept ones, then the lowest free address for each
    /// new member in file order.
    fn reconcile_mesh_ips(&mut self, spec: &Cluster) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let ipnet::IpNet::V4(subnet) = spec.spec.mesh.subnet.0 else {
            return report;
        };
        // A departed node keeps its address until its removal is applied: no newcomer
        // may take an address a running host still answers on.
        let departed = self.departed_names(spec);
        let members: Vec<(&str, Option<IpAddress>)> = spec
            .spec
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.mesh_ip))
            .chain(spec.spec.access.peers.iter().map(|p| (p.name.as_str(), p.mesh_ip)))
            .chain(departed.iter().map(|n| (n.as_str(), None)))
            .collect();
        let mut next: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for (name, pinned) in &members {
            if let Some(IpAddress(IpAddr::V4(ip))) = pinned {
                next.insert(name.to_string(), *ip);
                used.insert(*ip);
            }
        }
        for (name, _) in &members {
            if let Some(ip) = self.mesh_ips.get(*name)
                && !next.contains_key(*name)
                && subnet.contains(ip)
                && !used.contains(ip)
            {
                next.insert(name.to_string(), *ip);
                used.insert(*ip);
            }
        }
        let mut free = subnet.hosts().filter(|ip| !used.contains(ip));
        for (name, _) in &members {
            if !next.contains_key(*name) {
                let ip = free.next().expect("validation checked the subnet is large enough");
                next.insert(name.to_string(), ip);
                report.created.push(Item::new(ItemKind::MeshAddress, format!("{name}={ip}")));
            }
        }
        for (name, ip) in &self.mesh_ips {
            if !next.contains_key(name) {
                report.removed.push(Item::new(ItemKind::MeshAddress, format!("{name}={ip}")));
            }
        }
        self.mesh_ips = next;
        report
    }

    /// Issue each requested leaf that is missing, whose request changed, or that
    /// expires within the renewal window; drop leaves nobody requests any more.
    pub fn reconcile_certificates(
        &mut self,
        spec: &Cluster,
        requests: &[CertRequest],
        now: OffsetDateTime,
    ) -> Result<ReconcileReport, PkiError> {
        let mut report = ReconcileReport::default();
        let pki = &spec.spec.pki;
        let renew_after = now + Duration::days(pki.renew_before_days as i64);
        let mut cas: BTreeMap<Ca, LoadedCa> = BTreeMap::new();
        let mut due: Vec<(&CertRequest, Due)> = Vec::new();
        for req in requests {
            let ca_pair = self.cas.get(req.issuer.id()).expect("CAs are created before leaves");
            let wanted = req.fingerprint(ca_pair, pki.key_algorithm);
            let revoked = |pem: &str| pki::credential_id(pem).is_some_and(|id| self.revoked.contains_key(&id));
            let why = match self.certificates.get(&req.id) {
                None => Due::Missing,
                Some(have) if revoked(&have.pair.cert) => Due::Revoked,
                Some(have) if have.fingerprint != wanted => Due::RequestChanged,
                Some(have) => match pki::not_after(&have.pair.cert) {
                    Some(expiry) if expiry > renew_after => continue,
                    Some(_) => Due::Expiring,
                    None => return Err(PkiError::Parse { what: req.id.clone() }),
                },
            };
            if let std::collections::btree_map::Entry::Vacant(e) = cas.entry(req.issuer) {
                e.insert(LoadedCa::load(req.issuer.id(), ca_pair)?);
            }
            due.push((req, why));
        }
        // Key generation dominates (RSA 4096 takes about a second a key): issue on
        // every core, then record in request order so the bundle stays deterministic.
        let issue = |req: &CertRequest| cas[&req.issuer].issue(req, pki.key_algorithm, pki.leaf_validity_days, now);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, due.len().max(1));
        let chunk = due.len().div_ceil(threads).max(1);
        let issued: Vec<Result<IssuedCert, PkiError>> = std::thread::scope(|s| {
            let handles: Vec<_> = due
                .chunks(chunk)
                .map(|part| s.spawn(|| part.iter().map(|(req, _)| issue(req)).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("issuing thread panicked")).collect()
        });
        for ((req, why), cert) in due.into_iter().zip(issued) {
            self.certificates.insert(req.id.clone(), cert?);
            match why {
                Due::Missing => report.created.push(Item::new(ItemKind::Certificate, req.id.clone())),
                Due::RequestChanged | Due::Expiring | Due::Revoked => report.reissued.push(req.id.clone()),
            }
        }
        let wanted: BTreeSet<&str> = requests.iter().map(|r| r.id.as_str()).collect();
        // A departed node's leaves (`kubelet-client/NODE`, …) stay until its removal is
        // applied: the removal revokes them by what they are.
        let departed = self.departed_names(spec);
        let of_departed = |id: &str| id.rsplit_once('/').is_some_and(|(_, node)| departed.contains(node));
        self.certificates.retain(|id, _| {
            let keep = wanted.contains(id.as_str()) || of_departed(id);
            if !keep {
                report.removed.push(Item::new(ItemKind::Certificate, id.clone()));
            }
            keep
        });
        Ok(report)
    }

    pub fn ca(&self, ca: Ca) -> &CertAndKey {
        self.cas.get(ca.id()).unwrap_or_else(|| panic!("CA {ca} is created by reconcile_identity"))
    }

    pub fn certificate(&self, id: &str) -> &CertAndKey {
        &self
            .certificates
            .get(id)
            .unwrap_or_else(|| panic!("certificate {id} is issued by reconcile_certificates"))
            .pair
    }

    /// Every secret value in the bundle, for tests that prove none leaks.
    pub fn secret_values(&self) -> Vec<&str> {
        let mut v: Vec<&str> = vec![&self.k3s_token, &self.k3s_agent_token, &self.encryption_key];
        v.extend(self.wireguard.values().map(String::as_str));
        v.extend(self.cas.values().map(|c| c.key.as_str()));
        v.extend(self.certificates.values().map(|c| c.pair.key.as_str()));
        v.push(&self.service_account_key);
        v
    }
}
