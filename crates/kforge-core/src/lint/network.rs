//! Where traffic would go: two seed mistakes found in manifests. A flannel DaemonSet
//! with no `--iface` binds VXLAN (UDP 8472, plaintext) to the default-route — public —
//! interface instead of the mesh; a kubeconfig whose server is loopback works on the
//! node it was copied from and nowhere else.

use super::yaml::Node;
use super::{Finding, Level, Object};

pub fn check(objects: &[Object], mesh_interface: Option<&str>) -> Vec<Finding> {
    let mut out = Vec::new();
    let iface = mesh_interface.unwrap_or("wg0");
    for o in objects {
        for c in o.containers() {
            let image = c.str_at("image").unwrap_or("");
            let words: Vec<&str> = ["command", "args"]
                .iter()
                .filter_map(|k| c.get(k))
                .flat_map(Node::items)
                .filter_map(Node::str)
                .collect();
            let runs_flanneld = image.contains("flannel") && words.iter().any(|w| w.contains("flanneld"));
            if runs_flanneld && !words.iter().any(|w| w.starts_with("--iface")) {
                out.push(
                    Finding::new("network/flannel-outside-mesh", Level::Error, &o.source(), Some(c.pos))
                        .subject(o.subject())
                        .message("flanneld runs without --iface: it binds VXLAN (UDP 8472, unencrypted) to the default-route interface, so pod traffic crosses the public network in plaintext")
                        .fix(format!("add `--iface={iface}` to flanneld's args so VXLAN rides the WireGuard mesh")),
                );
            }
        }
        if o.kind == "Config" && o.api_version == "v1" {
            for (i, cl) in o.root.get("clusters").map(Node::items).unwrap_or_default().iter().enumerate() {
                let Some(server) = cl.at("cluster.server") else { continue };
                let url = server.str().unwrap_or("");
                let host = url.split("://").nth(1).unwrap_or(url).split(['/', ':']).next().unwrap_or("");
                let host = host.trim_start_matches('[');
                if host == "localhost" || host.starts_with("127.") || host == "::1" || url.contains("[::1]") {
                    out.push(
                        Finding::new("network/kubeconfig-loopback", Level::Warning, &o.source(), Some(server.pos))
                            .subject(format!("kubeconfig clusters[{i}]"))
                            .message(format!(
                                "server {url} is loopback: this kubeconfig works only on the node it came from"
                            ))
                            .fix("point it at the API's mesh address (`kforge kubeconfig` writes one that does)"),
                    );
                }
            }
        }
    }
    out
}
