//! The mesh configs, checked with wireguard-tools.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::{TestContext, run, run_with_input};

/// A parsed wg-quick file: the interface's keys and each peer's settings.
struct WgConf {
    interface: BTreeMap<String, String>,
    peers: Vec<BTreeMap<String, String>>,
}

fn parse(text: &str) -> WgConf {
    let mut conf = WgConf { interface: BTreeMap::new(), peers: Vec::new() };
    let mut in_peer = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line {
            "[Interface]" => in_peer = false,
            "[Peer]" => {
                in_peer = true;
                conf.peers.push(BTreeMap::new());
            }
            _ => {
                let (k, v) = line.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap();
                let section = if in_peer { conf.peers.last_mut().unwrap() } else { &mut conf.interface };
                section.insert(k.to_string(), v.to_string());
            }
        }
    }
    conf
}

/// `wg-quick strip` must accept the file (it parses every wg-quick directive).
fn strip(conf: &Path, scratch: &Path) -> String {
    let copy = scratch.join("kforge0.conf");
    std::fs::copy(conf, &copy).unwrap();
    run("wg-quick", &["strip", copy.to_str().unwrap()])
}

#[test]
fn every_mesh_config_is_accepted_by_wg_quick_and_keys_match() {
    let ctx = TestContext::with_example("homelab");
    let out = ctx.render("out");
    let scratch = tempfile::tempdir().unwrap();
    let mut confs: BTreeMap<String, WgConf> = BTreeMap::new();
    for member in ["cp-1", "edge-1", "pi-1"] {
        let path = out.join(format!("{member}/etc/wireguard/kforge0.conf"));
        let stripped = strip(&path, scratch.path());
        assert!(!stripped.contains("Address") && !stripped.contains("MTU"), "strip removes wg-quick-only keys");
        confs.insert(member.into(), parse(&std::fs::read_to_string(&path).unwrap()));
    }
    let laptop = out.join("_peers/laptop/kforge0.conf");
    strip(&laptop, scratch.path());
    confs.insert("laptop".into(), parse(&std::fs::read_to_string(&laptop).unwrap()));

    // Public key of each member, derived by `wg pubkey` from its own private key.
    let public: BTreeMap<String, String> = confs
        .iter()
        .map(|(name, c)| {
            (name.clone(), run_with_input("wg", &["pubkey"], &c.interface["PrivateKey"]).trim().to_string())
        })
        .collect();
    let address: BTreeMap<String, String> =
        confs.iter().map(|(n, c)| (n.clone(), c.interface["Address"].split('/').next().unwrap().to_string())).collect();
    for (name, conf) in &confs {
        for peer in &conf.peers {
            let owner = public.iter().find(|(_, k)| **k == peer["PublicKey"]).map(|(n, _)| n.clone());
            let owner = owner.unwrap_or_else(|| panic!("{name} has a peer whose key matches no member's private key"));
            assert_ne!(&owner, name, "{name} peers with itself");
            assert!(
                peer["AllowedIPs"].contains(&format!("{}/32", address[&owner])),
                "{name}: peer {owner} must carry its own /32"
            );
        }
    }

    // Full mesh among nodes; pi-1 (behind NAT) reaches the laptop through cp-1.
    let peers_of = |n: &str| -> Vec<String> {
        confs[n].peers.iter().map(|p| public.iter().find(|(_, k)| **k == p["PublicKey"]).unwrap().0.clone()).collect()
    };
    assert_eq!(peers_of("cp-1"), ["edge-1", "pi-1", "laptop"]);
    assert_eq!(peers_of("edge-1"), ["cp-1", "pi-1", "laptop"]);
    assert_eq!(peers_of("pi-1"), ["cp-1", "edge-1"], "no direct link between two NAT'd members");
    assert_eq!(peers_of("laptop"), ["cp-1", "edge-1"]);
    let pi_to_cp = &confs["pi-1"].peers[0];
    assert_eq!(pi_to_cp["AllowedIPs"], format!("{}/32, {}/32", address["cp-1"], address["laptop"]));
    assert_eq!(pi_to_cp["Endpoint"], "203.0.113.10:51820");
    // Keepalive exactly on links that involve a member without endpoint.
    assert_eq!(pi_to_cp.get("PersistentKeepalive").map(String::as_str), Some("25"));
    let cp_to_edge = &confs["cp-1"].peers[0];
    assert!(!cp_to_edge.contains_key("PersistentKeepalive"), "two public nodes need no keepalive");
    assert!(!confs["cp-1"].peers[1].contains_key("Endpoint"), "pi-1 has no endpoint to dial");
    assert_eq!(confs["cp-1"].interface["ListenPort"], "51820");
    assert_eq!(confs["cp-1"].interface["MTU"], "1420");

    let plan = ctx.kforge(&["plan"]).success().stdout;
    assert!(plan.contains("pi-1 ↔ laptop have no public endpoint on either side"), "{plan}");
}

#[test]
fn adding_a_node_renumbers_nobody() {
    let ctx = TestContext::with_example("homelab");
    let ips = |ctx: &TestContext| -> BTreeMap<String, String> {
        let plan: serde_json::Value =
            serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
        let mut m: BTreeMap<String, String> = plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["node"].as_str().unwrap().to_string(), n["meshIp"].as_str().unwrap().to_string()))
            .collect();
        for p in plan["peers"].as_array().unwrap() {
            m.insert(p["peer"].as_str().unwrap().into(), p["meshIp"].as_str().unwrap().into());
        }
        m
    };
    let before = ips(&ctx);
    // A new node listed *first* still must not shift anyone.
    ctx.edit_spec("  nodes:\n", "  nodes:\n    - {name: new-1, role: agent, endpoint: 198.51.100.99}\n");
    let after = ips(&ctx);
    for (name, ip) in &before {
        assert_eq!(&after[name], ip, "{name} was renumbered");
    }
    assert!(!before.values().any(|ip| ip == &after["new-1"]), "the new node got a fresh address");
}
