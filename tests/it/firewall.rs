//! nftables rulesets, checked and loaded by the real `nft` in a throw-away netns.

use std::process::Command;

use crate::util::{TestContext, run};

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("kforge-test-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Netns(name)
    }
    fn nft(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.0, "nft"];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn nft_accepts_and_loads_every_ruleset_idempotently() {
    let ctx = TestContext::with_example("homelab");
    let out = ctx.render("out");
    let ns = Netns::new("fw");
    // Someone else's table must survive kforge's ruleset.
    ns.nft(&["add", "table", "inet", "operator"]);
    ns.nft(&["add", "chain", "inet", "operator", "mine"]);
    for node in ["cp-1", "edge-1", "pi-1"] {
        let file = out.join(format!("{node}/etc/kforge/firewall.nft"));
        let file = file.to_str().unwrap();
        ns.nft(&["-c", "-f", file]);
        ns.nft(&["-f", file]);
        ns.nft(&["-f", file]); // loading again replaces the table, never duplicates it
        let listed = ns.nft(&["list", "table", "inet", "kforge"]);
        assert!(listed.contains("policy drop"), "{listed}");
        assert_eq!(listed.matches("chain input").count(), 1, "{listed}");
        assert!(listed.contains("udp dport 51820 accept"), "{listed}");
        assert!(listed.contains("tcp dport 22 accept"), "{listed}");
        let publishes_443 = listed.contains("tcp dport 443 accept");
        assert_eq!(publishes_443, node == "edge-1", "443 is published on edge-1 only:\n{listed}");
        assert!(!listed.contains("dport 6443"), "the API is mesh-only by default");
        let mesh_trusted = listed
            .lines()
            .any(|l| l.contains("iifname {") && l.contains("\"kforge0\"") && l.trim_end().ends_with("accept"));
        assert!(mesh_trusted, "the mesh interface is trusted:\n{listed}");
    }
    assert!(ns.nft(&["list", "tables"]).contains("table inet operator"), "other tables are left alone");
}

#[test]
fn ssh_allow_list_and_public_api_follow_the_file() {
    let ctx = TestContext::with_example("homelab");
    ctx.edit_spec(
        "ssh: {allowFrom: [0.0.0.0/0, \"::/0\"], rateLimit: true}",
        "ssh: {allowFrom: [203.0.113.0/24, \"2001:db8::/32\"], rateLimit: false}",
    );
    ctx.edit_spec("apiOnPublic: false", "apiOnPublic: true");
    let out = ctx.render("out");
    let ns = Netns::new("acl");
    let file = out.join("cp-1/etc/kforge/firewall.nft");
    ns.nft(&["-f", file.to_str().unwrap()]);
    let listed = ns.nft(&["list", "table", "inet", "kforge"]);
    assert!(listed.contains("ip saddr 203.0.113.0/24 tcp dport 22 accept"), "{listed}");
    assert!(listed.contains("ip6 saddr 2001:db8::/32 tcp dport 22 accept"), "{listed}");
    assert!(!listed.contains("ssh_ratelimit"), "{listed}");
    assert!(listed.contains("tcp dport 6443 accept"), "apiOnPublic opens the API on servers:\n{listed}");
    let agent = std::fs::read_to_string(out.join("edge-1/etc/kforge/firewall.nft")).unwrap();
    assert!(!agent.contains("dport 6443"), "agents serve no API");
}

/// The test an SSH apply runs at every apply to find the seed's "my IP only" rule: it
/// passes on the table as loaded, fails once a rule is inserted by hand or the table is
/// gone, and ignores what traffic puts in the dynamic SSH rate-limit set.
#[test]
fn firewall_recheck_finds_a_rule_added_by_hand() {
    let ctx = TestContext::with_example("homelab");
    let out = ctx.render("out");
    let file = out.join("cp-1/etc/kforge/firewall.nft");
    let ruleset = std::fs::read_to_string(&file).unwrap();
    let recheck = kforge_core::firewall::loaded_as_planned(&ruleset);
    let ns = Netns::new("recheck");
    let passes =
        || Command::new("ip").args(["netns", "exec", &ns.0, "bash", "-c", &recheck]).status().unwrap().success();
    assert!(!passes(), "no table loaded yet: {recheck}");
    ns.nft(&["-f", file.to_str().unwrap()]);
    assert!(passes(), "the table as planned: {recheck}");
    ns.nft(&["add", "element", "inet", "kforge", "ssh_ratelimit_v4", "{ 198.51.100.7 timeout 30s }"]);
    assert!(passes(), "a rate-limit set element is traffic, not drift");
    ns.nft(&["insert", "rule", "inet", "kforge", "input", "iifname", "kforge0", "ip", "saddr", "10.4.0.3", "drop"]);
    assert!(!passes(), "a rule inserted by hand is drift");
    ns.nft(&["-f", file.to_str().unwrap()]);
    assert!(passes(), "reloading the file repairs it");
    ns.nft(&["delete", "table", "inet", "kforge"]);
    assert!(!passes(), "a deleted table is drift");
}
