//! The WireGuard mesh: one wg-quick config per member (`/etc/wireguard/kforge0.conf`).

use std::fmt::Write;

use crate::model::{Member, Model};
use crate::wireguard::PrivateKey;

/// Render `me`'s wg-quick config. `private_key` is `None` for an access peer whose
/// key stays on the peer (the operator fills it in).
pub fn render_wg_quick(model: &Model<'_>, me: &Member, private_key: Option<&PrivateKey>) -> String {
    let mesh = &model.spec.spec.mesh;
    let mut out = String::new();
    let _ = writeln!(out, "# kforge mesh of cluster {}: {} ({})", model.spec.metadata.name, me.name, me.mesh_ip);
    let _ = writeln!(out, "# Managed by kforge; local edits are overwritten.");
    let _ = writeln!(out, "[Interface]");
    let _ = writeln!(out, "Address = {}/{}", me.mesh_ip, model.mesh_prefix_len);
    if me.is_node() {
        let _ = writeln!(out, "ListenPort = {}", mesh.port);
    }
    let _ = writeln!(out, "MTU = {}", mesh.mtu);
    if model.spec.spec.distribution.kind == crate::spec::DistributionKind::Hardway && me.pod_cidr.is_some() {
        // kube-proxy rewrites Service addresses only after the kernel found a route for
        // them: on a host without a default route (air gap, the lab) the node itself
        // could not reach a ClusterIP. This route only gets packets that far.
        let svc = model.spec.spec.network.service_cidr;
        let _ = writeln!(out, "# Service addresses (kube-proxy rewrites them before they leave)");
        let _ = writeln!(out, "PostUp = ip route replace {svc} dev %i");
    }
    match private_key {
        Some(k) => {
            let _ = writeln!(out, "PrivateKey = {}", k.as_base64());
        }
        None => {
            let _ = writeln!(out, "# PrivateKey = <the private key matching {}>", me.public_key);
        }
    }
    for peer in model.mesh_peers(me) {
        let _ = writeln!(out);
        let _ = writeln!(out, "[Peer]");
        let mut comment = format!("# {}", peer.member.name);
        if !peer.relays_for.is_empty() {
            let _ = write!(comment, " (relays for {})", peer.relays_for.join(", "));
        }
        let _ = writeln!(out, "{comment}");
        let _ = writeln!(out, "PublicKey = {}", peer.member.public_key);
        if let Some(ep) = peer.member.endpoint {
            let _ = writeln!(out, "Endpoint = {ep}");
        }
        let allowed: Vec<String> = peer.allowed_ips.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(out, "AllowedIPs = {}", allowed.join(", "));
        if let Some(k) = peer.keepalive {
            let _ = writeln!(out, "PersistentKeepalive = {k}");
        }
    }
    out
}
