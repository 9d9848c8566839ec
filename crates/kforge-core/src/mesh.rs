//! The WireGuard mesh: one wg-quick config per member (`/etc/wireguard/kforge0.conf`).

use crate::ini::IniFile;
use crate::model::{Member, Model};
use crate::wireguard::PrivateKey;

/// Render `me`'s wg-quick config. `private_key` is `None` for an access peer whose
/// key stays on the peer (the operator fills it in).
pub fn render_wg_quick(model: &Model<'_>, me: &Member, private_key: Option<&PrivateKey>) -> String {
    let mesh = &model.spec.spec.mesh;
    let mut conf = IniFile::new(
        " = ",
        format!(
            "kforge mesh of cluster {}: {} ({})\nManaged by kforge; local edits are overwritten.",
            model.spec.metadata.name, me.name, me.mesh_ip
        ),
    );
    conf.section("Interface").set("Address", format!("{}/{}", me.mesh_ip, model.mesh_prefix_len));
    if me.is_node() {
        conf.set("ListenPort", mesh.port.to_string());
    }
    conf.set("MTU", mesh.mtu.to_string());
    if model.spec.spec.distribution.kind == crate::spec::DistributionKind::Hardway && me.pod_cidr.is_some() {
        // kube-proxy rewrites Service addresses only after the kernel found a route for
        // them: on a host without a default route (air gap, the lab) the node itself
        // could not reach a ClusterIP. This route only gets packets that far.
        let svc = model.spec.spec.network.service_cidr;
        conf.note("Service addresses (kube-proxy rewrites them before they leave)")
            .set("PostUp", format!("ip route replace {svc} dev %i"));
    }
    match private_key {
        Some(k) => conf.set("PrivateKey", k.as_base64()),
        None => conf.note(format!("PrivateKey = <the private key matching {}>", me.public_key)),
    };
    for peer in model.mesh_peers(me) {
        conf.section("Peer");
        match peer.relays_for.is_empty() {
            true => conf.note(peer.member.name.clone()),
            false => conf.note(format!("{} (relays for {})", peer.member.name, peer.relays_for.join(", "))),
        };
        conf.set("PublicKey", peer.member.public_key.to_string());
        if let Some(ep) = peer.member.endpoint {
            conf.set("Endpoint", ep.to_string());
        }
        let allowed: Vec<String> = peer.allowed_ips.iter().map(|n| n.to_string()).collect();
        conf.set("AllowedIPs", allowed.join(", "));
        if let Some(k) = peer.keepalive {
            conf.set("PersistentKeepalive", k.to_string());
        }
    }
    conf.render()
}
