//! The OS packages kforge installs on a host, named once. A provider's image (a Debian
//! cloud image, Raspberry Pi OS Lite) has the base system, sshd and cloud-init, and
//! none of these: kforge installs what a node's plan needs, over SSH (`apply`, after
//! reading what is missing in the facts) and at boot (the bootstrap script), from the
//! same list ([`for_node`]) — never by command name, which is how Debian's `nginx`
//! came without its stream module.
//!
//! Each package says what proves it is on a host (a command on PATH or a file), so a
//! host whose packages came another way (another distribution, a build from source,
//! nginx.org's own nginx with the stream module built in) is not asked to install
//! Debian's.

use serde::Serialize;

use crate::spec::{Cluster, DistributionKind, Node, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Package {
    WireguardTools,
    Nftables,
    Nginx,
    NginxStream,
    Iptables,
    Conntrack,
    Curl,
}

/// What shows a package's part is on a host, whoever installed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// A command on PATH (with /usr/sbin and /sbin).
    Command(&'static str),
    /// A file (a module with no command of its own).
    File(&'static str),
}

impl Package {
    pub const ALL: [Package; 7] = [
        Package::WireguardTools,
        Package::Nftables,
        Package::Nginx,
        Package::NginxStream,
        Package::Iptables,
        Package::Conntrack,
        Package::Curl,
    ];

    /// The Debian/Ubuntu package name (the same in Debian 12 and 13, Ubuntu and
    /// Raspberry Pi OS).
    pub const fn name(self) -> &'static str {
        match self {
            Package::WireguardTools => "wireguard-tools",
            Package::Nftables => "nftables",
            Package::Nginx => "nginx",
            Package::NginxStream => "libnginx-mod-stream",
            Package::Iptables => "iptables",
            Package::Conntrack => "conntrack",
            Package::Curl => "curl",
        }
    }

    /// What the host must have for kforge's use of the package to work.
    pub const fn proof(self) -> Proof {
        match self {
            Package::WireguardTools => Proof::Command("wg-quick"),
            Package::Nftables => Proof::Command("nft"),
            Package::Nginx => Proof::Command("nginx"),
            // The path kforge's balancers load it from (`balancer::nginx_stream_conf`).
            Package::NginxStream => Proof::File(crate::balancer::STREAM_MODULE),
            Package::Iptables => Proof::Command("iptables"),
            Package::Conntrack => Proof::Command("conntrack"),
            Package::Curl => Proof::Command("curl"),
        }
    }

    /// Why kforge needs it (`kforge plan`, docs/apply.md).
    pub const fn why(self) -> &'static str {
        match self {
            Package::WireguardTools => "wg-quick and wg: the mesh interface (wg-quick@kforge0.service)",
            Package::Nftables => "nft: kforge's firewall table (kforge-firewall.service)",
            Package::Nginx => "nginx: the hard way's /healthz proxy on controllers, and kforge's local API balancers",
            Package::NginxStream => {
                "nginx's stream module (not in Debian's nginx package): the API balancer of hard-way workers and the registration balancer of K3s joiners"
            }
            Package::Iptables => {
                "iptables: kube-proxy (iptables mode) and the CNI bridge's masquerade and port mappings"
            }
            Package::Conntrack => "conntrack: kube-proxy clears stale UDP flows (DNS) when endpoints change",
            Package::Curl => "curl: the bootstrap script downloads artifacts named by url + sha256",
        }
    }

    /// `NAME=PROOF` as the step functions take it (`kf_install`): a command name, or an
    /// absolute path.
    pub fn install_arg(self) -> String {
        match self.proof() {
            Proof::Command(c) => format!("{}={c}", self.name()),
            Proof::File(f) => format!("{}={f}", self.name()),
        }
    }
}

impl Serialize for Package {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for Package {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a node needs installed, by distribution and role, in [`Package::ALL`]'s order.
/// `balancer`: a local API balancer runs there (hard-way workers, K3s joiners of a
/// multi-server cluster); `fetches`: its bootstrap downloads an artifact by URL.
pub fn for_node(cluster: &Cluster, node: &Node, balancer: bool, fetches: bool) -> Vec<Package> {
    let spec = &cluster.spec;
    let hardway = spec.distribution.kind == DistributionKind::Hardway;
    let controller = hardway && node.role.has(Role::Controller);
    let worker = hardway && node.role.has(Role::Worker);
    Package::ALL
        .into_iter()
        .filter(|p| match p {
            Package::WireguardTools => true,
            Package::Nftables => spec.firewall.enabled,
            Package::Nginx => controller || balancer,
            Package::NginxStream => balancer,
            // K3s brings its own (K3s's own iptables and conntrack in its data directory).
            Package::Iptables | Package::Conntrack => worker,
            Package::Curl => fetches,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_has_a_debian_name_a_proof_and_a_reason() {
        for p in Package::ALL {
            assert!(!p.name().is_empty() && !p.why().is_empty());
            let arg = p.install_arg();
            let (name, proof) = arg.split_once('=').unwrap();
            assert_eq!(name, p.name());
            assert!(!proof.is_empty() && !proof.contains(' '), "{arg}");
        }
        assert_eq!(
            Package::NginxStream.install_arg(),
            "libnginx-mod-stream=/usr/lib/nginx/modules/ngx_stream_module.so"
        );
    }
}
