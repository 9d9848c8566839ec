//! Stage 3 of the pipeline: facts derived from the spec and the secrets bundle.
//!
//! Who is on the mesh and at which address, who can dial whom, which node relays
//! for members behind NAT, where the API answers. Renderers read only this (plus
//! the bundle for key material), so every derived fact is computed in one place.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};

use crate::secrets::SecretsBundle;
use crate::spec::{Cluster, Node};
use crate::wireguard::{PrivateKey, PublicKey};

/// API server port on the mesh.
pub const API_PORT: u16 = 6443;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// Index into `spec.nodes`.
    Node(usize),
    /// Index into `spec.access.peers`.
    Peer(usize),
}

/// A node or access peer on the mesh.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub kind: MemberKind,
    pub mesh_ip: Ipv4Addr,
    /// Where others can dial it; `None` behind NAT (or a roaming laptop).
    pub endpoint: Option<SocketAddr>,
    pub public_key: PublicKey,
    /// hardway worker: its pod network, routed to it over the mesh.
    pub pod_cidr: Option<Ipv4Net>,
}

impl Member {
    pub fn is_node(&self) -> bool {
        matches!(self.kind, MemberKind::Node(_))
    }

    /// What the mesh routes to this member: its /32 and its pod network.
    pub fn routed_networks(&self) -> Vec<Ipv4Net> {
        let mut v = vec![host_net(self.mesh_ip)];
        v.extend(self.pod_cidr);
        v
    }
}

/// One `[Peer]` section in a member's mesh config.
#[derive(Debug, Clone)]
pub struct MeshPeer<'m> {
    pub member: &'m Member,
    /// The peer's own /32 and pod network, plus those of members reached through it
    /// (relay). wg-quick turns these into routes: the mesh is the pod route table.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Names of members whose traffic this peer relays for us.
    pub relays_for: Vec<&'m str>,
    pub keepalive: Option<u16>,
}

#[derive(Debug)]
pub struct Model<'s> {
    pub spec: &'s Cluster,
    /// Nodes in file order, then access peers in file order.
    pub members: Vec<Member>,
    /// Index into `members` of the node relaying between NAT'd members.
    pub relay: Option<usize>,
    /// The address clients use for the API: the lowest mesh address among servers.
    pub api_address: Ipv4Addr,
    /// First address of the service CIDR: the `kubernetes` Service.
    pub kubernetes_service_ip: IpAddr,
    pub cluster_dns_ip: IpAddr,
    pub mesh_prefix_len: u8,
}

impl<'s> Model<'s> {
    /// Derive the model. The bundle must have been reconciled with this spec.
    pub fn build(spec: &'s Cluster, secrets: &SecretsBundle) -> Model<'s> {
        let port = spec.spec.mesh.port;
        let mesh_ip = |name: &str| -> Ipv4Addr {
            *secrets.mesh_ips.get(name).unwrap_or_else(|| panic!("{name} has a mesh address after reconcile"))
        };
        let wg_public = |name: &str| -> PublicKey {
            let key =
                secrets.wireguard.get(name).unwrap_or_else(|| panic!("{name} has a WireGuard key after reconcile"));
            PrivateKey::parse(key).expect("bundle holds valid WireGuard keys").public_key()
        };
        let mut members: Vec<Member> = spec
            .spec
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Member {
                name: n.name.clone(),
                kind: MemberKind::Node(i),
                mesh_ip: mesh_ip(&n.name),
                endpoint: n.endpoint.map(|ip| SocketAddr::new(ip.0, port)),
                public_key: wg_public(&n.name),
                pod_cidr: secrets.pod_cidrs.get(&n.name).copied(),
            })
            .collect();
        members.extend(spec.spec.access.peers.iter().enumerate().map(|(i, p)| Member {
            name: p.name.clone(),
            kind: MemberKind::Peer(i),
            mesh_ip: mesh_ip(&p.name),
            endpoint: None,
            public_key: match &p.public_key {
                Some(k) => PublicKey::parse(k).expect("validated"),
                None => wg_public(&p.name),
            },
            pod_cidr: None,
        }));
        let relay = match &spec.spec.mesh.relay {
            Some(name) => members.iter().position(|m| &m.name == name),
            None => {
                let nodes = || spec.spec.nodes.iter().enumerate();
                nodes()
                    .find(|(_, n)| n.role.is_control_plane() && n.endpoint.is_some())
                    .or_else(|| nodes().find(|(_, n)| n.endpoint.is_some()))
                    .map(|(i, _)| i)
            }
        };
        // The server with the lowest mesh address initialises the cluster and is the
        // API address. Mesh addresses never change, so listing a new server above the
        // others in the file moves neither the API nor `cluster-init`.
        let first_server = (0..spec.spec.nodes.len())
            .filter(|&i| spec.spec.nodes[i].role.is_control_plane())
            .min_by_key(|&i| members[i].mesh_ip)
            .expect("validated: a server exists");
        let service = spec.spec.network.service_cidr.0;
        let kubernetes_service_ip = nth_host(service, 1);
        let cluster_dns_ip = spec.spec.network.cluster_dns.map(|ip| ip.0).unwrap_or_else(|| nth_host(service, 10));
        Model {
            spec,
            api_address: members[first_server].mesh_ip,
            members,
            relay,
            kubernetes_service_ip,
            cluster_dns_ip,
            mesh_prefix_len: spec.spec.mesh.subnet.0.prefix_len(),
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&Member, &'s Node)> {
        self.members.iter().filter_map(|m| match m.kind {
            MemberKind::Node(i) => Some((m, &self.spec.spec.nodes[i])),
            MemberKind::Peer(_) => None,
        })
    }

    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.is_node())
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Control-plane nodes: k3s servers, hardway controllers.
    pub fn servers(&self) -> impl Iterator<Item = (&Member, &'s Node)> {
        self.nodes().filter(|(_, n)| n.role.is_control_plane())
    }

    /// The server that initialises the cluster (`cluster-init`) and that others join:
    /// the one holding the API address.
    pub fn first_server(&self) -> &Member {
        self.servers().map(|(m, _)| m).find(|m| m.mesh_ip == self.api_address).expect("the API address is a server's")
    }

    /// `https://<first server mesh IP>:6443`: what kubeconfigs and joiners use.
    pub fn api_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.api_address)
    }

    /// The `[Peer]` sections of `me`'s mesh config, in member order.
    ///
    /// Full mesh, except: access peers do not peer with each other, and two members
    /// that both lack an endpoint cannot dial each other, so each reaches the other
    /// through the relay (whose AllowedIPs then carry the other's address).
    pub fn mesh_peers(&self, me: &Member) -> Vec<MeshPeer<'_>> {
        let keepalive = self.spec.spec.mesh.keepalive;
        let relay = self.relay.map(|i| &self.members[i]);
        let mut out: Vec<MeshPeer<'_>> = Vec::new();
        let mut relayed: Vec<&Member> = Vec::new();
        for other in &self.members {
            if other.name == me.name || (!me.is_node() && !other.is_node()) {
                continue;
            }
            let unreachable = me.endpoint.is_none() && other.endpoint.is_none();
            if unreachable && relay.is_some_and(|r| r.name != me.name && r.name != other.name) {
                relayed.push(other);
                continue;
            }
            out.push(MeshPeer {
                member: other,
                allowed_ips: other.routed_networks(),
                relays_for: Vec::new(),
                keepalive: (me.endpoint.is_none() || other.endpoint.is_none()).then_some(keepalive).filter(|k| *k > 0),
            });
        }
        if let Some(r) = relay
            && let Some(entry) = out.iter_mut().find(|p| p.member.name == r.name)
        {
            for m in relayed {
                entry.allowed_ips.extend(m.routed_networks());
                entry.relays_for.push(&m.name);
            }
        }
        out
    }

    /// Pairs of members that reach each other through the relay, for the plan's notes.
    pub fn relayed_pairs(&self) -> Vec<(&str, &str, &str)> {
        let mut pairs = Vec::new();
        for (i, a) in self.members.iter().enumerate() {
            for peer in self.mesh_peers(a) {
                for other in &peer.relays_for {
                    let j = self.members.iter().position(|m| &m.name == other).unwrap_or(0);
                    if i < j {
                        pairs.push((a.name.as_str(), *other, peer.member.name.as_str()));
                    }
                }
            }
        }
        pairs
    }
}

fn host_net(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is valid")
}

/// The n-th address of a network (n=1: first host).
fn nth_host(net: IpNet, n: u32) -> IpAddr {
    match net {
        IpNet::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()) + n)),
        IpNet::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6.network()) + n as u128)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reconcile_secrets;

    const TWO_BEHIND_NAT: &str = "apiVersion: kforge.dev/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  distribution: {type: k3s, version: v1.36.4+k3s1}
  mesh: {relay: edge-1}
  access: {peers: [{name: laptop}]}
  nodes:
    - {name: cp-1, role: server, endpoint: 203.0.113.10}
    - {name: edge-1, role: agent, endpoint: 198.51.100.7}
    - {name: nat-1, role: agent, ssh: {host: a}}
    - {name: nat-2, role: agent, ssh: {host: b}}
";

    #[test]
    fn members_behind_nat_reach_each_other_through_the_chosen_relay() {
        let spec = crate::spec::parse("t.yaml", TWO_BEHIND_NAT).unwrap().cluster;
        let (bundle, _) = reconcile_secrets(&spec, None, time::OffsetDateTime::now_utc()).unwrap();
        let model = Model::build(&spec, &bundle);
        let nat1 = model.member("nat-1").unwrap();
        let peers = model.mesh_peers(nat1);
        let names: Vec<&str> = peers.iter().map(|p| p.member.name.as_str()).collect();
        assert_eq!(names, ["cp-1", "edge-1"], "no direct link to nat-2 or the laptop");
        let relay = &peers[1];
        assert_eq!(relay.relays_for, ["nat-2", "laptop"]);
        assert_eq!(relay.allowed_ips.len(), 3);
        assert!(peers.iter().all(|p| p.keepalive == Some(25)), "nat-1 keeps its NAT mapping open");
        // The relay itself peers with everyone directly.
        let edge = model.member("edge-1").unwrap();
        assert_eq!(model.mesh_peers(edge).len(), 4);
        assert_eq!(
            model.relayed_pairs(),
            [("nat-1", "nat-2", "edge-1"), ("nat-1", "laptop", "edge-1"), ("nat-2", "laptop", "edge-1")]
        );
    }

    #[test]
    fn api_address_belongs_to_the_server_with_the_lowest_mesh_address() {
        let spec = crate::spec::parse("t.yaml", TWO_BEHIND_NAT).unwrap().cluster;
        let (bundle, _) = reconcile_secrets(&spec, None, time::OffsetDateTime::now_utc()).unwrap();
        // A second server listed first, allocated after cp-1.
        let text =
            TWO_BEHIND_NAT.replace("  nodes:\n", "  nodes:\n    - {name: cp-0, role: server, endpoint: 203.0.113.9}\n");
        let grown = crate::spec::parse("t.yaml", &text).unwrap().cluster;
        let (bundle, _) = reconcile_secrets(&grown, Some(bundle), time::OffsetDateTime::now_utc()).unwrap();
        let model = Model::build(&grown, &bundle);
        assert_eq!(model.first_server().name, "cp-1");
        assert_eq!(model.api_url(), format!("https://{}:6443", model.member("cp-1").unwrap().mesh_ip));
    }
}
