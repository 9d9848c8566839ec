//! The cluster file's types, as the operator writes them (`kforge.yaml`).
//!
//! Every struct denies unknown keys, every optional field has a default, and the
//! same types produce the JSON Schema (`kforge schema`). Values that have a syntax of
//! their own (addresses, CIDRs) are newtypes whose `Deserialize` fails with a message
//! that says how to fix them, so the YAML deserializer can point at the exact spot.

use crate::component::Component;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const API_VERSION: &str = "kforge.dev/v1alpha1";
pub const KIND: &str = "Cluster";

/// The whole cluster file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "kforge cluster file")]
pub struct Cluster {
    /// Always `kforge.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Cluster`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Cluster name: a DNS label (lowercase letters, digits, '-').
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    pub distribution: Distribution,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub mesh: Mesh,
    #[serde(default)]
    pub firewall: Firewall,
    #[serde(default)]
    pub access: Access,
    /// Encrypt Secrets at rest in the datastore (key held in the secrets bundle).
    #[serde(default = "default_true")]
    pub secrets_encryption: bool,
    #[serde(default)]
    pub pki: Pki,
    /// How apply moves a running cluster to a new release or configuration (docs/upgrade.md).
    #[serde(default)]
    pub rollout: Rollout,
    #[serde(default)]
    pub k3s: K3sOptions,
    #[serde(default)]
    pub hardway: HardwayOptions,
    /// Where binaries come from: a URL with its sha256, or a local path.
    #[serde(default)]
    pub artifacts: Artifacts,
    /// Container image archives (OCI layout or docker-archive tarballs) imported into
    /// containerd on every worker before the kubelet starts, for hosts that cannot
    /// pull from a registry (air gap). Each is verified by sha256 when one is given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageArchive>,
    /// GitOps: the cluster follows a Git repository, set up by `apply` (docs/gitops.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<GitOps>,
    pub nodes: Vec<Node>,
}

/// `spec.gitops`: an engine installed by `apply`, following one path of one branch.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitOps {
    /// `flux` or `argocd`.
    pub engine: GitOpsEngine,
    /// `ssh://git@forge.example.com/ops/cluster.git` (the cluster's deploy key reads it),
    /// or `https://…` for a public repository.
    pub repository: String,
    #[serde(default = "default_gitops_branch")]
    pub branch: String,
    /// Directory in the repository the cluster applies (Kustomize), e.g. `./clusters/prod`.
    #[serde(default = "default_gitops_path")]
    pub path: String,
    /// How often the engine fetches and re-applies (a Go duration: `30s`, `1m`, `1h`).
    #[serde(default = "default_gitops_interval")]
    pub interval: String,
    /// The forge's SSH host keys, as `known_hosts` lines (`forge.example.com ssh-ed25519
    /// AAAA…`; `[host]:port …` for a port other than 22). Pinned here: kforge never
    /// trusts a host key on first use. `kforge gitops host-key HOST` prints the line
    /// to check and paste.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_hosts: Vec<String>,
    /// The engine's install manifests, applied in order before anything else (on real
    /// hosts the release's `install.yaml` by url + sha256; or a local path). Left out
    /// with `engine: flux`: kforge's own, Flux v2.9.5's source-controller and
    /// kustomize-controller naming Flux's published images by tag (no digest kforge
    /// could not check). Argo CD has no default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install: Vec<Artifact>,
    /// The engine's controllers that must be up before the repository's objects are
    /// created: Deployment names, or `statefulset/NAME`. Default: the engine's own
    /// (flux: source-controller, kustomize-controller; argocd: its repo server,
    /// server, redis and application controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controllers: Option<Vec<String>>,
}

impl GitOps {
    /// The controllers waited for: the file's list, else the engine's defaults.
    pub fn controllers(&self) -> Vec<String> {
        self.controllers.clone().unwrap_or_else(|| {
            let defaults: &[&str] = match self.engine {
                GitOpsEngine::Flux => &["source-controller", "kustomize-controller"],
                GitOpsEngine::Argocd => &[
                    "argocd-repo-server",
                    "argocd-server",
                    "argocd-redis",
                    "statefulset/argocd-application-controller",
                ],
            };
            defaults.iter().map(|c| c.to_string()).collect()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GitOpsEngine {
    Flux,
    Argocd,
}

fn default_gitops_branch() -> String {
    "main".into()
}

fn default_gitops_path() -> String {
    "./".into()
}

fn default_gitops_interval() -> String {
    "1m".into()
}

/// One container image archive and the image reference it carries.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageArchive {
    /// The image reference inside the archive (`registry.k8s.io/pause:3.10.1`): after
    /// the import, containerd must know an image by this name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The archive for amd64 (x86_64) hosts: an image is built per architecture, and a
    /// single-architecture pause image starts no pod on a Raspberry Pi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd64: Option<ArchSource>,
    /// The archive for arm64 (aarch64) hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm64: Option<ArchSource>,
}

impl ImageArchive {
    /// As an artifact (same sources, same verification and cache).
    pub fn artifact(&self) -> Artifact {
        Artifact {
            url: self.url.clone(),
            path: self.path.clone(),
            sha256: self.sha256.clone(),
            amd64: self.amd64.clone(),
            arm64: self.arm64.clone(),
            ..Artifact::default()
        }
    }

    /// The archive's file name on the host: a digest of the reference keeps names unique
    /// and free of `/` and `:`.
    pub fn host_file(&self) -> String {
        let slug: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        format!("{slug}.tar")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Distribution {
    #[serde(rename = "type")]
    pub kind: DistributionKind,
    /// Release to install: `v1.36.4+k3s1` (k3s) or `v1.37.2` (hardway).
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DistributionKind {
    /// K3s: one binary per node, embedded etcd for HA server sets.
    K3s,
    /// Upstream Kubernetes "the hard way": etcd, kube-apiserver, controller-manager,
    /// scheduler on controllers; containerd, kubelet, kube-proxy on workers.
    Hardway,
}

impl DistributionKind {
    pub fn name(self) -> &'static str {
        match self {
            DistributionKind::K3s => "k3s",
            DistributionKind::Hardway => "hardway",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// Pods' addresses (k3s `cluster-cidr`).
    #[serde(default = "default_pod_cidr", rename = "podCIDR")]
    pub pod_cidr: Cidr,
    /// Services' addresses (k3s `service-cidr`).
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    pub service_cidr: Cidr,
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// Cluster DNS address; the tenth address of the service CIDR when omitted.
    #[serde(default, rename = "clusterDNS", skip_serializing_if = "Option::is_none")]
    pub cluster_dns: Option<IpAddress>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
            cluster_domain: default_cluster_domain(),
            cluster_dns: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mesh {
    /// WireGuard interface name on every node.
    #[serde(default = "default_mesh_interface")]
    pub interface: String,
    /// Addresses of nodes and access peers on the mesh (IPv4).
    #[serde(default = "default_mesh_subnet")]
    pub subnet: Cidr,
    /// UDP port WireGuard listens on (the only public port besides SSH).
    #[serde(default = "default_mesh_port")]
    pub port: u16,
    #[serde(default)]
    pub granularity: Granularity,
    /// PersistentKeepalive (seconds) on links that involve a node without endpoint.
    #[serde(default = "default_keepalive")]
    pub keepalive: u16,
    /// Interface MTU; 1420 leaves room for WireGuard over an IPv6 underlay.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// MTU of the network the encrypted packets cross (1500 on most VPSes and LANs,
    /// 1492 on PPPoE home lines, 1460 on some clouds). `kforge lint` checks that the
    /// mesh MTU plus WireGuard's 80 bytes fits it; `kforge doctor` measures it.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u16,
    /// Node that relays between members that both lack a public endpoint.
    /// Default: the first server with an endpoint, else the first node with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh {
            interface: default_mesh_interface(),
            subnet: default_mesh_subnet(),
            port: default_mesh_port(),
            granularity: Granularity::default(),
            keepalive: default_keepalive(),
            mtu: default_mtu(),
            underlay_mtu: default_underlay_mtu(),
            relay: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// Every node peers with every other node directly.
    #[default]
    Full,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Firewall {
    /// Install kforge's nftables table on every node.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub ssh: SshRule,
    /// Ports opened to the public on some or all nodes.
    #[serde(default)]
    pub publish: Vec<Publish>,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall { enabled: true, ssh: SshRule::default(), publish: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshRule {
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Sources allowed to reach SSH; default anywhere (IPv4 and IPv6).
    #[serde(default = "default_anywhere")]
    pub allow_from: Vec<Cidr>,
    /// Limit new SSH connections per source (brute-force damper).
    #[serde(default = "default_true")]
    pub rate_limit: bool,
}

impl Default for SshRule {
    fn default() -> Self {
        SshRule { port: default_ssh_port(), allow_from: default_anywhere(), rate_limit: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Publish {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Nodes this port opens on; every node when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Sources allowed; anywhere when omitted.
    #[serde(default = "default_anywhere")]
    pub allow_from: Vec<Cidr>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Access {
    /// Also open the Kubernetes API (6443/tcp) on servers' public side. Off: mesh only.
    #[serde(default)]
    pub api_on_public: bool,
    /// Operator machines that join the mesh (a laptop) to reach the API.
    #[serde(default)]
    pub peers: Vec<AccessPeer>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessPeer {
    /// A DNS label, unique among nodes and peers.
    pub name: String,
    /// Keep the private key on the peer: give its WireGuard public key here and
    /// kforge will not generate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Fixed mesh address; allocated when omitted.
    #[serde(default, rename = "meshIP", skip_serializing_if = "Option::is_none")]
    pub mesh_ip: Option<IpAddress>,
}

/// `spec.rollout`: controllers always go one at a time; workers are drained and
/// upgraded `workersAtOnce` at a time.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rollout {
    /// Workers drained and upgraded at once: a count (`1`, the default) or a share of
    /// the workers (`"25%"`, rounded down, at least one).
    #[serde(default = "default_workers_at_once")]
    pub workers_at_once: WorkersAtOnce,
    /// A drain that has not finished by then fails: the node is uncordoned and the apply
    /// stops before the next worker.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: u32,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout { workers_at_once: default_workers_at_once(), drain_timeout_seconds: default_drain_timeout() }
    }
}

fn default_workers_at_once() -> WorkersAtOnce {
    WorkersAtOnce::Count(1)
}

fn default_drain_timeout() -> u32 {
    300
}

/// A count of workers, or a percentage of them as a string (`"25%"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WorkersAtOnce {
    Count(u32),
    Share(String),
}

impl WorkersAtOnce {
    /// How many of `workers` go at once; `None` for text that is no percentage.
    pub fn of(&self, workers: usize) -> Option<usize> {
        match self {
            WorkersAtOnce::Count(n) => Some((*n as usize).max(1)),
            WorkersAtOnce::Share(s) => {
                let pct: usize = s.strip_suffix('%')?.trim().parse().ok().filter(|p| (1..=100).contains(p))?;
                Some((workers * pct / 100).max(1))
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pki {
    #[serde(default)]
    pub key_algorithm: KeyAlgorithm,
    #[serde(default = "default_leaf_days")]
    pub leaf_validity_days: u32,
    #[serde(default = "default_ca_days")]
    pub ca_validity_days: u32,
    /// A leaf this close to expiry is re-issued on the next render.
    #[serde(default = "default_renew_days")]
    pub renew_before_days: u32,
}

impl Default for Pki {
    fn default() -> Self {
        Pki {
            key_algorithm: KeyAlgorithm::default(),
            leaf_validity_days: default_leaf_days(),
            ca_validity_days: default_ca_days(),
            renew_before_days: default_renew_days(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K3sOptions {
    /// Packaged components not to deploy (k3s `disable`), e.g. `traefik`, `servicelb`.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Flannel backend inside the mesh; `vxlan` rides the encrypted mesh interface.
    #[serde(default = "default_flannel_backend")]
    pub flannel_backend: String,
    /// The pod sandbox ("pause") image (k3s `pause-image`); unset, K3s's own default.
    /// On hosts that cannot pull, name one of `spec.images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_image: Option<String>,
}

impl Default for K3sOptions {
    fn default() -> Self {
        K3sOptions { disable: Vec::new(), flannel_backend: default_flannel_backend(), pause_image: None }
    }
}

/// Options of the `hardway` distribution.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HardwayOptions {
    /// Size of the pod network each worker gets from `network.podCIDR` (a /24 is
    /// 254 pods). Allocated once per worker and kept in the secrets bundle.
    #[serde(default = "default_node_pod_prefix")]
    pub node_pod_prefix: u8,
    /// Port of the plain-HTTP `/healthz` proxy (nginx) on controllers, for an L4 load
    /// balancer's health check. Reachable on the mesh only unless published.
    #[serde(default = "default_healthz_port")]
    pub healthz_port: u16,
    /// Port of the API load balancer on every worker (nginx stream on 127.0.0.1 over all
    /// controllers' API servers): kubelets and kube-proxy dial it, so no single
    /// controller is a single point of failure for workers.
    #[serde(default = "default_api_balancer_port")]
    pub api_balancer_port: u16,
    /// containerd's pod sandbox ("pause") image. Pin it to one of `spec.images` on hosts
    /// that cannot pull.
    #[serde(default = "default_sandbox_image")]
    pub sandbox_image: String,
    /// The CoreDNS image of the DNS addon (pin it to one of `spec.images` on hosts that
    /// cannot pull).
    #[serde(default = "default_coredns_image")]
    pub coredns_image: String,
    /// Run kubelets on a cgroup v1 host anyway (the kubelet's `failCgroupV1: false`).
    /// Kubernetes 1.35+ refuses cgroup v1 by default and kforge's preflight does too:
    /// cgroup v1 is in maintenance upstream. Only for hosts that cannot move to v2.
    #[serde(default)]
    pub allow_cgroup_v1: bool,
    /// The kubelet's hard eviction thresholds (its `evictionHard`), by signal:
    /// `nodefs.available`, `imagefs.available`, `memory.available`, … as a quantity
    /// (`2Gi`) or a percentage (`5%`). Signals left out keep the kubelet's defaults
    /// (nodefs 10%, imagefs 15%, memory 100Mi). Below a threshold a node is tainted
    /// NoSchedule and new pods wait: on a small or shared disk, say what you mean.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eviction_hard: BTreeMap<String, String>,
}

impl Default for HardwayOptions {
    fn default() -> Self {
        HardwayOptions {
            node_pod_prefix: default_node_pod_prefix(),
            healthz_port: default_healthz_port(),
            api_balancer_port: default_api_balancer_port(),
            sandbox_image: default_sandbox_image(),
            coredns_image: default_coredns_image(),
            allow_cgroup_v1: false,
            eviction_hard: BTreeMap::new(),
        }
    }
}

fn default_api_balancer_port() -> u16 {
    6445
}

pub fn default_coredns_image() -> String {
    "registry.k8s.io/coredns/coredns:v1.12.1".into()
}

/// The pause image Kubernetes 1.35–1.37 ship with.
pub fn default_sandbox_image() -> String {
    "registry.k8s.io/pause:3.10.1".into()
}

/// Where each binary comes from. k3s needs `k3s`; hardway needs the rest (keys are
/// the upstream binary names). A missing entry means the host already has it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcdctl: Option<Artifact>,
    #[serde(default, rename = "kube-apiserver", skip_serializing_if = "Option::is_none")]
    pub kube_apiserver: Option<Artifact>,
    #[serde(default, rename = "kube-controller-manager", skip_serializing_if = "Option::is_none")]
    pub kube_controller_manager: Option<Artifact>,
    #[serde(default, rename = "kube-scheduler", skip_serializing_if = "Option::is_none")]
    pub kube_scheduler: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubectl: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<Artifact>,
    #[serde(default, rename = "kube-proxy", skip_serializing_if = "Option::is_none")]
    pub kube_proxy: Option<Artifact>,
    /// The release tarball (`bin/containerd`, `bin/containerd-shim-runc-v2`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd: Option<Artifact>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runc: Option<Artifact>,
    /// The CNI plugins release tarball (`bridge`, `loopback`, `host-local`, …).
    #[serde(default, rename = "cni-plugins", skip_serializing_if = "Option::is_none")]
    pub cni_plugins: Option<Artifact>,
}

impl Artifacts {
    /// The artifact configured for `c`, if any.
    pub fn get(&self, c: Component) -> Option<&Artifact> {
        match c {
            Component::K3s => &self.k3s,
            Component::Etcd => &self.etcd,
            Component::Etcdctl => &self.etcdctl,
            Component::KubeApiserver => &self.kube_apiserver,
            Component::KubeControllerManager => &self.kube_controller_manager,
            Component::KubeScheduler => &self.kube_scheduler,
            Component::Kubectl => &self.kubectl,
            Component::Kubelet => &self.kubelet,
            Component::KubeProxy => &self.kube_proxy,
            Component::Containerd => &self.containerd,
            Component::Runc => &self.runc,
            Component::CniPlugins => &self.cni_plugins,
        }
        .as_ref()
    }

    /// Every configured artifact with its component, in file-schema order.
    pub fn entries(&self) -> Vec<(Component, &Artifact)> {
        Component::ALL.into_iter().filter_map(|c| Some((c, self.get(c)?))).collect()
    }
}

/// One binary (or release tarball): `url` + `sha256`, or a `path` on the workstation
/// (sha256 optional). A name ending in `.tar.gz`/`.tgz` is unpacked on the host.
/// For a cluster of mixed machines, name one source per CPU architecture instead:
/// `amd64: {url, sha256}` and `arm64: {url, sha256}`; each node gets its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Artifact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The source for amd64 (x86_64) hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd64: Option<ArchSource>,
    /// The source for arm64 (aarch64) hosts, e.g. a Raspberry Pi 4/5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm64: Option<ArchSource>,
    /// The file is a named stand-in, not the real program; the value says why the real
    /// one is not used (`kforge lab` sets it for binaries that cannot be obtained).
    /// kforge installs it and its unit so both can be verified, but never starts it,
    /// never counts it as working, and skips what needs it (addons need kube-apiserver
    /// and kubectl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_in: Option<String>,
}

/// Where one architecture's file comes from: `url` + `sha256`, or a local `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArchSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl ArchSource {
    fn is_archive(&self) -> bool {
        let name = self.url.as_deref().or(self.path.as_deref()).unwrap_or("");
        name.ends_with(".tar.gz") || name.ends_with(".tgz")
    }
}

/// A CPU architecture, as release files name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// From `uname -m` (`x86_64`, `aarch64`); `None` for one kforge has no name for.
    pub fn from_uname(machine: &str) -> Option<Arch> {
        match machine.trim() {
            "x86_64" | "amd64" => Some(Arch::Amd64),
            "aarch64" | "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Artifact {
    /// One source for every architecture (`url`/`path` at the top).
    pub fn is_universal(&self) -> bool {
        self.url.is_some() || self.path.is_some()
    }

    /// The sources: `(None, …)` for one that serves every architecture, else one per
    /// architecture named.
    pub fn sources(&self) -> Vec<(Option<Arch>, ArchSource)> {
        if self.is_universal() || (self.amd64.is_none() && self.arm64.is_none()) {
            let one = ArchSource { url: self.url.clone(), path: self.path.clone(), sha256: self.sha256.clone() };
            return vec![(None, one)];
        }
        Arch::ALL.into_iter().filter_map(|a| Some((Some(a), self.for_arch(a)?.clone()))).collect()
    }

    fn for_arch(&self, arch: Arch) -> Option<&ArchSource> {
        match arch {
            Arch::Amd64 => self.amd64.as_ref(),
            Arch::Arm64 => self.arm64.as_ref(),
        }
    }

    /// Whether a host of `arch` can get this artifact.
    pub fn serves(&self, arch: Arch) -> bool {
        self.is_universal() || self.for_arch(arch).is_some()
    }

    /// The source's file name ends like a tarball.
    pub fn is_archive(&self) -> bool {
        self.sources().iter().any(|(_, s)| s.is_archive())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// Node name: a DNS label, unique; also the Kubernetes node name.
    pub name: String,
    /// `server` or `agent` (k3s); `controller`, `worker` or `[controller, worker]`
    /// (hardway).
    pub role: Roles,
    /// Public address others can reach (WireGuard endpoint, node-external-ip).
    /// Omit for a node behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<IpAddress>,
    #[serde(default)]
    pub ssh: NodeSsh,
    /// Free-form location (becomes the `topology.kubernetes.io/zone` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints as `key=value:Effect`.
    #[serde(default)]
    pub taints: Vec<String>,
    /// Fixed mesh address; allocated (and then kept) when omitted.
    #[serde(default, rename = "meshIP", skip_serializing_if = "Option::is_none")]
    pub mesh_ip: Option<IpAddress>,
    /// CPU architecture (`amd64`, `arm64`): picks the node's source of each artifact
    /// that names one per architecture. When omitted, `apply` learns it from the host
    /// and the user-data bootstrap from `uname -m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// k3s: runs the control plane (and workloads unless tainted).
    Server,
    /// k3s: runs workloads only.
    Agent,
    /// hardway: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
    Controller,
    /// hardway: containerd, kubelet, kube-proxy.
    Worker,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Controller => "controller",
            Role::Worker => "worker",
        }
    }
}

/// A node's roles: one (`role: server`) or several (`role: [controller, worker]`).
/// Kept sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

impl Roles {
    pub fn new(mut roles: Vec<Role>) -> Roles {
        roles.sort_by_key(|r| *r as u8);
        roles.dedup();
        Roles(roles)
    }
    pub fn one(role: Role) -> Roles {
        Roles(vec![role])
    }
    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }
    pub fn iter(&self) -> impl Iterator<Item = Role> + '_ {
        self.0.iter().copied()
    }
    /// Runs the control plane: a k3s server or a hardway controller.
    pub fn is_control_plane(&self) -> bool {
        self.has(Role::Server) || self.has(Role::Controller)
    }
    /// Runs a kubelet: every k3s node, a hardway worker.
    pub fn runs_workloads(&self) -> bool {
        self.has(Role::Server) || self.has(Role::Agent) || self.has(Role::Worker)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|r| r.name()).collect();
        f.write_str(&names.join("+"))
    }
}

impl<'de> Deserialize<'de> for Roles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Roles;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a role (server, agent, controller, worker) or a list of roles")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Roles, E> {
                Role::deserialize(serde::de::value::StrDeserializer::<E>::new(v)).map(Roles::one)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Roles, A::Error> {
                let mut v = Vec::new();
                while let Some(r) = seq.next_element::<Role>()? {
                    v.push(r);
                }
                if v.is_empty() {
                    return Err(serde::de::Error::custom(
                        "a node needs at least one role, e.g. `role: [controller, worker]`",
                    ));
                }
                Ok(Roles::new(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Roles {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl JsonSchema for Roles {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Roles".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let one = g.subschema_for::<Role>();
        schemars::json_schema!({
            "description": "One role, or a list (hardway: [controller, worker])",
            "anyOf": [one, { "type": "array", "items": one, "minItems": 1 }]
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSsh {
    /// Host to dial; the endpoint when omitted. May be an alias from ~/.ssh/config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default = "default_ssh_user")]
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
}

impl Default for NodeSsh {
    fn default() -> Self {
        NodeSsh { host: None, user: default_ssh_user(), port: default_ssh_port() }
    }
}

// ---- value newtypes ---------------------------------------------------------------

/// A CIDR such as `10.42.0.0/16`, checked while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let net: IpNet = s.parse().map_err(|_| {
            if s.parse::<IpAddr>().is_ok() {
                format!("`{s}` is an address, not a CIDR: add a prefix length, e.g. `{s}/32`")
            } else {
                format!("`{s}` is not a valid CIDR: write an address and a prefix, e.g. `10.42.0.0/16`")
            }
        })?;
        if net.addr() != net.network() {
            return Err(format!("`{s}` has host bits set: write the network address `{}`", net.trunc()));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IP address such as `203.0.113.10`, checked while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpAddress(pub IpAddr);

impl FromStr for IpAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse().map(IpAddress).map_err(|_| {
            if s.contains('/') {
                format!("`{s}` is a CIDR; write a single address without `/prefix`")
            } else {
                format!("`{s}` is not a valid IP address (e.g. `203.0.113.10` or `2001:db8::1`)")
            }
        })
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! string_newtype_serde {
    ($ty:ty, $format:literal, $desc:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "format": $format, "description": $desc })
            }
        }
    };
}

string_newtype_serde!(Cidr, "cidr", "An IP network in CIDR notation, e.g. 10.42.0.0/16");
string_newtype_serde!(IpAddress, "ip", "An IPv4 or IPv6 address");

// ---- defaults ---------------------------------------------------------------------

fn default_true() -> bool {
    true
}
fn default_pod_cidr() -> Cidr {
    Cidr("10.42.0.0/16".parse().unwrap())
}
fn default_service_cidr() -> Cidr {
    Cidr("10.43.0.0/16".parse().unwrap())
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}
fn default_mesh_interface() -> String {
    "kforge0".into()
}
fn default_mesh_subnet() -> Cidr {
    Cidr("10.4.0.0/16".parse().unwrap())
}
fn default_mesh_port() -> u16 {
    51820
}
fn default_keepalive() -> u16 {
    25
}
fn default_mtu() -> u16 {
    1420
}
fn default_ssh_port() -> u16 {
    22
}
fn default_ssh_user() -> String {
    "root".into()
}
fn default_anywhere() -> Vec<Cidr> {
    vec![Cidr("0.0.0.0/0".parse().unwrap()), Cidr("::/0".parse().unwrap())]
}
fn default_leaf_days() -> u32 {
    365
}
fn default_ca_days() -> u32 {
    3650
}
fn default_renew_days() -> u32 {
    30
}
fn default_node_pod_prefix() -> u8 {
    24
}
fn default_healthz_port() -> u16 {
    8080
}
fn default_underlay_mtu() -> u16 {
    1500
}

fn default_flannel_backend() -> String {
    "vxlan".into()
}
