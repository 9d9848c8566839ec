//! The cluster file's types, as the operator writes them (`kforge.yaml`).
//!
//! Every struct denies unknown keys, every optional field has a default, and the
//! same types produce the JSON Schema (`kforge schema`). Values that have a syntax of
//! their own (addresses, CIDRs) are newtypes whose `Deserialize` fails with a message
//! that says how to fix them, so the YAML deserializer can point at the exact spot.

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
    #[serde(default)]
    pub k3s: K3sOptions,
    /// Where binaries come from: a URL with its sha256, or a local path.
    #[serde(default)]
    pub artifacts: Artifacts,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Distribution {
    #[serde(rename = "type")]
    pub kind: DistributionKind,
    /// Release to install, e.g. `v1.33.5+k3s1`.
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DistributionKind {
    /// K3s: one binary per node, embedded etcd for HA server sets.
    K3s,
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
}

impl Default for K3sOptions {
    fn default() -> Self {
        K3sOptions { disable: Vec::new(), flannel_backend: default_flannel_backend() }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Artifacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<Artifact>,
}

/// One binary: `url` + `sha256`, or a `path` on the workstation (sha256 optional).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Artifact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// Node name: a DNS label, unique; also the Kubernetes node name.
    pub name: String,
    pub role: Role,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the control plane (and workloads unless tainted).
    Server,
    /// Runs workloads only.
    Agent,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
fn default_flannel_backend() -> String {
    "vxlan".into()
}
