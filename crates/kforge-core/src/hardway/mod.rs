//! The `hardway` distribution: upstream Kubernetes "the hard way", automated.
//!
//! What seeds 002 and 004 typed by hand across six VMs, from the same model as k3s:
//!
//! * **PKI** ([`certs`]): every component's certificate with the CN/O that RBAC
//!   expects (docs/hardway.md, upstream's typos fixed), apiserver SANs covering every
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

pub mod addons;
mod artifacts;
pub mod certs;
mod configs;
mod control_plane;
mod etcd;
mod units;
mod worker;

use std::net::IpAddr;

use crate::component::Component;
use crate::model::{Member, Model};
use crate::plan::{NodePlan, PlannedFile, PlannedUnit};
use crate::secrets::SecretsBundle;
use crate::spec::{Artifact, Node, Role};

pub use certs::cert_requests;
pub use etcd::{EtcdCluster, EtcdMember};

pub const ETCD_DIR: &str = "/etc/etcd";
pub const ETCD_DATA_DIR: &str = "/var/lib/etcd";
/// Written by apply only while a controller joins a running etcd (the member list etcd
/// answered `member add` with); read by etcd, like the initial cluster, only when its
/// data directory is empty. Not a planned file: its content is observed, not declared.
pub const ETCD_JOIN_ENV: &str = "/etc/etcd/join.env";
/// Sourced by an operator's shell (or kforge) to talk to the local etcd with mTLS.
pub const ETCDCTL_ENV: &str = "/etc/etcd/etcdctl.env";
pub const KUBE_DIR: &str = "/var/lib/kubernetes";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
pub const KUBE_PROXY_DIR: &str = "/var/lib/kube-proxy";
pub const ADDONS_DIR: &str = "/etc/kforge/addons";
pub const ADMIN_KUBECONFIG: &str = "/etc/kforge/admin.kubeconfig";

/// kubectl as the cluster admin, on a controller.
pub fn admin_kubectl() -> String {
    format!("{} --kubeconfig {ADMIN_KUBECONFIG}", Component::Kubectl.install().dest)
}
pub const HEALTHZ_CONF: &str = "/etc/kforge/healthz-nginx.conf";
pub const HEALTHZ_UNIT: &str = "kforge-healthz.service";
pub const API_BALANCER_CONF: &str = "/etc/kforge/api-balancer-nginx.conf";
pub const API_BALANCER_UNIT: &str = "kforge-api-balancer.service";
/// Image archives from `spec.images`, uploaded before containerd imports them.
pub const IMAGES_DIR: &str = "/var/lib/kforge/images";

/// The component's binary is kforge's named stand-in (never started, never counted).
pub fn is_stand_in(model: &Model<'_>, c: Component) -> bool {
    model.spec.spec.artifacts.get(c).is_some_and(|a| a.stand_in.is_some())
}

/// The binary of `c` this cluster's units run (see [`Component::binary`]).
pub fn binary(model: &Model<'_>, c: Component) -> String {
    c.binary(&model.spec.spec.distribution.version, model.spec.spec.artifacts.get(c).is_some())
}

/// Components configured as stand-ins, with why, for the plan's notes and the status.
pub fn stand_ins(model: &Model<'_>) -> Vec<(Component, String)> {
    Component::hardway().filter_map(|c| Some((c, model.spec.spec.artifacts.get(c)?.stand_in.clone()?))).collect()
}

/// Controllers in mesh-address order (stable: addresses never change).
pub fn controllers<'m>(model: &'m Model<'_>) -> Vec<&'m Member> {
    let mut v: Vec<&Member> = model.servers().map(|(m, _)| m).collect();
    v.sort_by_key(|m| m.mesh_ip);
    v
}

/// Add everything a hardway node runs to its plan.
pub fn plan_node(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, node: &Node, np: &mut NodePlan) {
    np.swap_forbidden = node.role.has(Role::Worker) && !is_stand_in(model, Component::Kubelet);
    np.requires_cgroup_v2 = np.swap_forbidden && !model.spec.spec.hardway.allow_cgroup_v1;
    np.requires_memory_cgroup = np.swap_forbidden;
    artifacts::plan(model, node, np);
    if node.role.has(Role::Controller) {
        etcd::plan(model, secrets, me, np);
        control_plane::plan(model, secrets, me, node, np);
        if me.name == model.first_server().name {
            addons::plan(model, secrets, np);
        }
    }
    if node.role.has(Role::Worker) {
        worker::plan(model, secrets, me, node, np);
    }
}

/// The unit that runs `c` (only called for components kforge starts).
fn service(c: Component) -> &'static str {
    c.service().expect("a component with a unit")
}

/// A unit for `component`: started unless its binary (or one it needs) is a stand-in.
fn unit(model: &Model<'_>, component: Component, mut restart_on: Vec<String>, needs: &[Component]) -> PlannedUnit {
    let stand_in = is_stand_in(model, component) || needs.iter().any(|c| is_stand_in(model, *c));
    // A new binary (or tarball) restarts the unit.
    if let Some(a) = model.spec.spec.artifacts.get(component) {
        restart_on.push(artifacts::upload_path(model, component, a));
    }
    PlannedUnit {
        name: service(component).into(),
        enable: !stand_in,
        start: !stand_in,
        restart_on,
        reload_command: None,
        recheck: None,
        joins: None,
    }
}

/// One of kforge's own nginx instances (Debian's nginx binary, never a stand-in):
/// always started, restarted when its configuration or unit changes.
fn nginx_unit(name: &str, files: &[PlannedFile]) -> PlannedUnit {
    crate::balancer::planned_unit(name, files)
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
    let missing: Vec<&str> = Component::hardway()
        .filter(|c| artifacts.get(*c).is_none() && !(*c == Component::Etcdctl && etcd_tarball))
        .map(Component::key)
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
        .map(|(c, _)| c.key())
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
            stand_ins.iter().map(|(c, _)| c.key()).collect::<Vec<_>>().join(", ")
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
