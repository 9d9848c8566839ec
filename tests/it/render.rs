//! `kforge render`: deterministic trees, stable certificates, safe replacement.

use crate::util::{TestContext, tree};

#[test]
fn rendering_twice_gives_byte_identical_trees() {
    let ctx = TestContext::with_example("ha");
    let a = tree(&ctx.render("a"));
    let b = tree(&ctx.render("b"));
    assert!(a.len() > 50, "a full render has many files ({})", a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, (mode, bytes)) in &a {
        assert_eq!((mode, bytes), (&b[path].0, &b[path].1), "{path} differs between renders");
    }
    // Secrets are 0600 in the tree too.
    assert_eq!(a["server-1/etc/wireguard/kforge0.conf"].0, 0o600);
    assert_eq!(a["server-1/var/lib/kforge/handover/var/lib/rancher/k3s/server/tls/server-ca.key"].0, 0o600);
    assert_eq!(a["server-1/user-data"].0, 0o600);
    assert_eq!(a["server-1/var/lib/kforge/handover/var/lib/rancher/k3s/server/tls/server-ca.crt"].0, 0o644);
}

#[test]
fn adding_nodes_reissues_no_unrelated_certificate() {
    let ctx = TestContext::with_example("ha");
    ctx.render("out");
    let before = ctx.bundle();
    ctx.edit_spec(
        "  nodes:\n",
        "  nodes:\n    - {name: agent-4, role: agent, endpoint: 198.51.100.24}\n    - {name: server-4, role: server, endpoint: 203.0.113.14}\n    - {name: server-5, role: server, endpoint: 203.0.113.15}\n",
    );
    let out = ctx.kforge(&["secrets", "update"]).success();
    let after = ctx.bundle();
    for (id, cert) in &before.certificates {
        assert_eq!(cert, &after.certificates[id], "{id} was re-issued");
    }
    assert_eq!(before.cas, after.cas, "CAs never change");
    assert_eq!(before.k3s_token, after.k3s_token);
    // K3s mints every certificate of a server from kforge's CAs: the bundle holds none.
    assert_eq!(before.certificates.keys().collect::<Vec<_>>(), ["admin"]);
    assert_eq!(after.certificates.keys().collect::<Vec<_>>(), ["admin"]);
    for (name, ip) in &before.mesh_ips {
        assert_eq!(&after.mesh_ips[name], ip, "{name} renumbered");
    }
    assert!(out.stderr.contains("created 3 WireGuard keys, 3 mesh addresses"), "{}", out.stderr);

    // The hard way: changing a worker's endpoint changes its kubelet's SANs, and only
    // that certificate is re-issued.
    let ctx = TestContext::with_example("hardway");
    ctx.render("out");
    let before = ctx.bundle();
    ctx.edit_spec("endpoint: 198.51.100.30", "endpoint: 198.51.100.42");
    let out = ctx.kforge(&["secrets", "update"]).success();
    let changed = ctx.bundle();
    assert!(out.stderr.contains("re-issued kubelet/worker-0"), "{}", out.stderr);
    for (id, cert) in &before.certificates {
        assert_eq!(id == "kubelet/worker-0", cert != &changed.certificates[id], "{id}");
    }
}

#[test]
fn render_replaces_its_own_tree_but_refuses_a_foreign_directory() {
    let ctx = TestContext::with_example("homelab");
    ctx.render("out");
    ctx.edit_spec("    - name: pi-1", "    - name: pi-2");
    ctx.render("out");
    assert!(!ctx.path("out/pi-1").exists(), "a removed node's files do not linger");
    assert!(ctx.path("out/pi-2/user-data").exists());

    std::fs::create_dir(ctx.path("precious")).unwrap();
    ctx.write("precious/notes.txt", "mine");
    let out = ctx.kforge(&["render", "--out", "precious"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("was not written by kforge"), "{}", out.stderr);
    assert_eq!(ctx.read("precious/notes.txt"), "mine");
}

#[test]
fn leaves_inside_the_renewal_window_are_reissued_and_only_those() {
    let ctx = TestContext::with_example("homelab");
    // Short-lived leaves: 30 days, renewed in the last 10.
    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    ctx.edit_spec(
        "  secretsEncryption: true\n",
        "  secretsEncryption: true\n  pki: {leafValidityDays: 30, renewBeforeDays: 10}\n",
    );
    ctx.kforge(&["secrets", "update"]).success();
    let first = ctx.bundle();
    ctx.kforge(&["secrets", "update"]).success();
    assert_eq!(first, ctx.bundle(), "30 days left is outside a 10-day window: nothing re-issued");

    // Widen the window past the leaves' remaining life: every leaf is now due, CAs are not.
    ctx.edit_spec(
        "pki: {leafValidityDays: 30, renewBeforeDays: 10}",
        "pki: {leafValidityDays: 90, renewBeforeDays: 45}",
    );
    let out = ctx.kforge(&["secrets", "update"]).success();
    let renewed = ctx.bundle();
    assert!(out.stderr.contains("re-issued"), "{}", out.stderr);
    for (id, cert) in &first.certificates {
        assert_ne!(cert.pair.cert, renewed.certificates[id].pair.cert, "{id} was due for renewal");
        assert_eq!(cert.fingerprint, renewed.certificates[id].fingerprint, "{id}: same request, new validity");
    }
    assert_eq!(first.cas, renewed.cas);
}

/// `certs check` reads the bundle as stored: leaves inside a window widened in the file
/// are due (it used to re-issue them in memory and print them fresh, "0 leaves due"),
/// it exits non-zero, and the bundle is untouched. Without a bundle it says so.
#[test]
fn certs_check_reports_the_stored_bundle_and_fails_on_due_leaves() {
    let ctx = TestContext::with_example("homelab");
    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    let none = ctx.kforge(&["certs", "check"]);
    assert_ne!(none.code, 0);
    assert!(
        none.stderr.contains("no secrets bundle at") && none.stderr.contains("kforge secrets update"),
        "{}",
        none.stderr
    );
    ctx.edit_spec(
        "  secretsEncryption: true\n",
        "  secretsEncryption: true\n  pki: {leafValidityDays: 30, renewBeforeDays: 10}\n",
    );
    ctx.kforge(&["secrets", "update"]).success();
    assert_eq!(ctx.kforge(&["certs", "check"]).code, 0, "30 days left, a 10-day window: nothing due");
    let stored = std::fs::read(ctx.path("kforge.secrets.yaml")).unwrap();
    ctx.edit_spec(
        "pki: {leafValidityDays: 30, renewBeforeDays: 10}",
        "pki: {leafValidityDays: 400, renewBeforeDays: 45}",
    );
    let out = ctx.kforge(&["certs", "check"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    let admin = out.stdout.lines().find(|l| l.starts_with("admin ")).expect("the admin certificate is listed");
    assert!(admin.ends_with("due") && !admin.contains(" 399 "), "{admin}");
    assert!(!out.stdout.contains(" 0 leaves due"), "{}", out.stdout);
    assert_eq!(std::fs::read(ctx.path("kforge.secrets.yaml")).unwrap(), stored, "check changed the bundle");
}

#[test]
fn k3s_nodes_get_the_image_archives_in_agent_images_and_the_pinned_pause_image() {
    // The K3s lab example: no registry, so pause and the test workload come as archives
    // that K3s imports from agent/images/ on every node, server and agents alike.
    let ctx = TestContext::with_example("lab");
    let t = tree(&ctx.render("out"));
    for node in ["lab-1", "lab-2", "lab-3"] {
        let script = String::from_utf8(t[&format!("{node}/var/lib/kforge/bootstrap.sh")].1.clone()).unwrap();
        for (i, archive) in ["kforge.lab_pause_busybox.tar", "kforge.lab_busybox_1.tar"].iter().enumerate() {
            let dest = format!("/var/lib/rancher/k3s/agent/images/{archive}");
            let line = script.lines().find(|l| l.contains(&dest)).unwrap_or_else(|| panic!("{node} needs {dest}"));
            // A host booted from user-data cannot receive a workstation file: the hint
            // names the cluster file's own setting to pin instead.
            assert!(line.contains(&format!("pin images[{i}].url + sha256")), "{line}");
        }
        let config = String::from_utf8(t[&format!("{node}/etc/rancher/k3s/config.yaml")].1.clone()).unwrap();
        assert!(config.contains("pause-image: kforge.lab/pause:busybox"), "{node}: {config}");
    }
    let server = String::from_utf8(t["lab-1/etc/rancher/k3s/config.yaml"].1.clone()).unwrap();
    for component in ["traefik", "servicelb", "metrics-server", "local-storage"] {
        assert!(server.contains(&format!("- {component}\n")), "the lab disables {component}: {server}");
    }
}

#[test]
fn an_ha_k3s_cluster_is_initialised_by_one_server_and_joined_by_the_others() {
    let ctx = TestContext::with_example("ha");
    let t = tree(&ctx.render("out"));
    let config = |node: &str| String::from_utf8(t[&format!("{node}/etc/rancher/k3s/config.yaml")].1.clone()).unwrap();
    let first = config("server-1");
    assert!(first.contains("cluster-init: true") && !first.contains("\nserver:"), "{first}");
    // Joiners register through their own node's balancer over every server, so a join
    // works while server-1 is down (K3s's fixed registration address).
    for node in ["server-2", "server-3", "agent-1"] {
        let c = config(node);
        assert!(!c.contains("cluster-init"), "{node}: {c}");
        assert!(c.contains("server: https://127.0.0.1:6445"), "{node} registers through its balancer: {c}");
        let nginx = String::from_utf8(t[&format!("{node}/etc/kforge/k3s-registration-nginx.conf")].1.clone()).unwrap();
        for server in ["10.4.0.1:6443", "10.4.0.2:6443", "10.4.0.3:6443"] {
            assert!(nginx.contains(&format!("server {server} ")), "{node}'s balancer lacks {server}: {nginx}");
        }
        assert!(nginx.contains("listen 127.0.0.1:6445;"), "{nginx}");
    }
    assert!(!t.contains_key("server-1/etc/kforge/k3s-registration-nginx.conf"), "the first server joins nobody");
    // The datastore's files (CAs, service-account key) are staged on the first server
    // only: a joining server gets them from the datastore, and nothing rewrites them.
    let staged = "var/lib/kforge/handover/var/lib/rancher/k3s/server/tls";
    assert!(t.contains_key(&format!("server-1/{staged}/server-ca.key")));
    assert!(t.contains_key(&format!("server-1/{staged}/service.key")));
    for node in ["server-2", "server-3", "agent-1"] {
        assert!(!t.keys().any(|k| k.starts_with(&format!("{node}/var/lib/kforge/handover"))), "{node} gets no CA");
        assert!(!t.contains_key(&format!("{node}/var/lib/rancher/k3s/server/tls/server-ca.crt")), "{node}");
    }
    // ServiceLB runs where the firewall publishes 80/443: the agents, labelled.
    for (node, publishes) in [("server-1", false), ("server-2", false), ("agent-1", true), ("agent-3", true)] {
        assert_eq!(config(node).contains("svccontroller.k3s.cattle.io/enablelb=true"), publishes, "{node}");
    }
    // A server joins with the server token (full CA-pinned), an agent with the agent token.
    let token = |node: &str| String::from_utf8(t[&format!("{node}/etc/kforge/k3s/token")].1.clone()).unwrap();
    assert!(token("server-2").starts_with("K10") && !token("server-2").contains("::node:"));
    assert!(token("agent-1").starts_with("K10") && token("agent-1").contains("::node:"));
}

#[test]
fn a_mixed_fleet_gets_each_architectures_image_archive() {
    // An image is built per architecture: a Raspberry Pi starts no pod with an amd64
    // pause image, so an archive can name one source per architecture, as artifacts do.
    let ctx = TestContext::with_example("homelab");
    ctx.edit_spec(
        "  nodes:\n",
        "  k3s: {pauseImage: registry.k8s.io/pause:3.10.1}\n  images:\n    - name: registry.k8s.io/pause:3.10.1\n      amd64: {path: ./pause-amd64.tar}\n      arm64: {path: ./pause-arm64.tar}\n  nodes:\n",
    );
    let plan: serde_json::Value = serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
    let images = |node: &str| -> Vec<String> {
        let n = plan["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap();
        n["phases"][0]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["dest"].as_str().unwrap().starts_with("/var/lib/rancher/k3s/agent/images/"))
            .map(|a| format!("{}:{}", a["arch"].as_str().unwrap(), a["source"]["path"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(images("pi-1"), ["arm64:./pause-arm64.tar"]);
    assert_eq!(images("edge-1"), ["amd64:./pause-amd64.tar", "arm64:./pause-arm64.tar"]);
    let t = tree(&ctx.render("out"));
    let edge = String::from_utf8(t["edge-1/var/lib/kforge/bootstrap.sh"].1.clone()).unwrap();
    assert!(
        edge.contains("kf_arch_is arm64 && kf_require 'image registry.k8s.io/pause:3.10.1' /var/lib/rancher/k3s/agent/images/registry.k8s.io_pause_3.10.1.tar"),
        "{edge}"
    );
    // A host whose architecture has no archive is refused at the image's line.
    ctx.edit_spec("      arm64: {path: ./pause-arm64.tar}\n", "");
    let out = ctx.kforge(&["check"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no arm64 source for image `registry.k8s.io/pause:3.10.1`, but pi-1 is arm64"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_mixed_fleet_gets_each_architectures_binary() {
    // The homelab example: two amd64 VPSes and pi-1, a Raspberry Pi (arch: arm64).
    let ctx = TestContext::with_example("homelab");
    let sources = |ctx: &TestContext| -> Vec<(String, Vec<String>)> {
        let plan: serde_json::Value =
            serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
        plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let k3s = n["phases"][0]["artifacts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| a["dest"] == "/usr/local/bin/k3s");
                (
                    n["node"].as_str().unwrap().to_string(),
                    k3s.map(|a| format!("{}:{}", a["arch"].as_str().unwrap(), a["source"]["path"].as_str().unwrap()))
                        .collect(),
                )
            })
            .collect()
    };
    // pi-1 gets only the arm64 binary; a node whose architecture the file does not say
    // gets both, and its bootstrap picks by `uname -m` (apply picks from the facts).
    assert_eq!(
        sources(&ctx),
        [
            ("cp-1".to_string(), vec!["amd64:./k3s".to_string(), "arm64:./k3s-arm64".to_string()]),
            ("edge-1".to_string(), vec!["amd64:./k3s".to_string(), "arm64:./k3s-arm64".to_string()]),
            ("pi-1".to_string(), vec!["arm64:./k3s-arm64".to_string()]),
        ]
    );
    let t = tree(&ctx.render("out"));
    let script = |node: &str| String::from_utf8(t[&format!("{node}/var/lib/kforge/bootstrap.sh")].1.clone()).unwrap();
    let edge = script("edge-1");
    assert!(edge.contains("kf_arch_in k3s artifacts.k3s 'amd64 arm64'\n"), "{edge}");
    assert!(edge.contains("kf_arch_is amd64 && kf_require k3s /usr/local/bin/k3s"), "{edge}");
    assert!(edge.contains("kf_arch_is arm64 && kf_require k3s /usr/local/bin/k3s"), "{edge}");
    let pi = script("pi-1");
    // Declared arm64: its bootstrap still refuses a host that is not.
    assert!(pi.contains("kf_arch_in k3s artifacts.k3s arm64\n"), "{pi}");
    assert!(pi.contains("kf_arch_is arm64 && kf_require k3s /usr/local/bin/k3s '' 'it comes from ./k3s-arm64"), "{pi}");
    assert!(!pi.contains("kf_arch_is amd64"), "{pi}");

    // Declared, the node gets its own binary only.
    ctx.edit_spec("endpoint: 198.51.100.7, location: osaka}", "endpoint: 198.51.100.7, location: osaka, arch: amd64}");
    assert_eq!(sources(&ctx)[1], ("edge-1".to_string(), vec!["amd64:./k3s".to_string()]));

    // What apply learns from a host (its `uname -m`) is checked against the file too.
    let spec = kforge_core::spec::parse("kforge.yaml", &ctx.read("kforge.yaml")).unwrap();
    assert!(kforge_core::pipeline::host_arch_problems(&spec.cluster, "cp-1", "x86_64").is_empty());
    assert!(kforge_core::pipeline::host_arch_problems(&spec.cluster, "cp-1", "aarch64").is_empty());
    let wrong = kforge_core::pipeline::host_arch_problems(&spec.cluster, "edge-1", "aarch64");
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert_eq!(wrong[0].path, "spec.nodes[1].arch");
    let unknown = kforge_core::pipeline::host_arch_problems(&spec.cluster, "cp-1", "riscv64");
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0].path, "spec.artifacts.k3s");
    assert!(unknown[0].message.contains("no riscv64 source for `k3s`"), "{}", unknown[0].message);
}

/// K3s's own flag names (pkg/cli/cmds/server.go, agent.go): config.yaml keys are these.
const K3S_SERVER_FLAGS: &[&str] = &[
    "cluster-init",
    "server",
    "token-file",
    "agent-token-file",
    "node-name",
    "node-ip",
    "node-external-ip",
    "advertise-address",
    "flannel-iface",
    "flannel-backend",
    "tls-san",
    "cluster-cidr",
    "service-cidr",
    "cluster-dns",
    "cluster-domain",
    "secrets-encryption",
    "write-kubeconfig-mode",
    "disable",
    "pause-image",
    "node-label",
    "node-taint",
];
/// Of those, what `k3s agent` takes (agent.go): the rest are server-only.
const K3S_AGENT_FLAGS: &[&str] = &[
    "server",
    "token-file",
    "node-name",
    "node-ip",
    "node-external-ip",
    "flannel-iface",
    "pause-image",
    "node-label",
    "node-taint",
];

#[test]
fn every_k3s_config_key_is_a_k3s_flag_of_the_nodes_role() {
    for example in ["homelab", "ha", "lab"] {
        let ctx = TestContext::with_example(example);
        let t = tree(&ctx.render("out"));
        for (path, (_, bytes)) in t.iter().filter(|(p, _)| p.ends_with("/etc/rancher/k3s/config.yaml")) {
            let text = String::from_utf8(bytes.clone()).unwrap();
            let server = text.contains("\nagent-token-file:");
            let allowed = if server { K3S_SERVER_FLAGS } else { K3S_AGENT_FLAGS };
            for key in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.starts_with('-')) {
                let key = key.split(':').next().unwrap();
                assert!(
                    allowed.contains(&key),
                    "{example}: {path}: `{key}` is not a K3s {} flag",
                    if server { "server" } else { "agent" }
                );
            }
        }
    }
}

/// K3s adds `node-label` values and never removes one, and applies `node-taint` only at
/// registration: every node's labels and taints are kept on its Node through the API
/// from the first server, so a node that stops publishing 80/443 loses the ServiceLB
/// label (and the LoadBalancer traffic its firewall would drop).
#[test]
fn k3s_node_labels_and_taints_are_kept_through_the_api_by_the_first_server() {
    let ctx = TestContext::with_example("homelab");
    ctx.edit_spec(
        "endpoint: 198.51.100.7, location: osaka}",
        "endpoint: 198.51.100.7, location: osaka, taints: [\"edge=true:NoSchedule\"]}",
    );
    let list = |ctx: &TestContext| -> (String, String) {
        let t = tree(&ctx.render("out"));
        let file = String::from_utf8(t["cp-1/etc/kforge/node-labels"].1.clone()).unwrap();
        let script = String::from_utf8(t["cp-1/var/lib/kforge/bootstrap.sh"].1.clone()).unwrap();
        assert!(!t.contains_key("edge-1/etc/kforge/node-labels"), "the first server applies them, no one else");
        (file, script)
    };
    let (file, script) = list(&ctx);
    assert!(file.contains("edge-1 label svccontroller.k3s.cattle.io/enablelb=true\n"), "{file}");
    assert!(file.contains("edge-1 label topology.kubernetes.io/zone=osaka\n"), "{file}");
    assert!(file.contains("edge-1 taint edge=true:NoSchedule\n"), "{file}");
    assert!(!file.contains("cp-1 label svccontroller"), "cp-1 publishes nothing: {file}");
    assert!(
        script.contains(
            "kf_node_labels '/usr/local/bin/k3s kubectl' /etc/kforge/node-labels /var/lib/kforge/node-labels.applied"
        ),
        "{script}"
    );
    assert!(script.find("kf_node_labels '") > script.find("--- phase: control-plane"), "after K3s starts");
    // edge-1 stops publishing: its line goes, so the next apply takes the label off.
    ctx.edit_spec("      - {port: 443, protocol: tcp, nodes: [edge-1]}   # ingress on the edge node only\n", "");
    ctx.edit_spec("    publish:\n", "    publish: []\n");
    let (file, _) = list(&ctx);
    assert!(!file.contains("svccontroller"), "{file}");
    assert!(file.contains("edge-1 taint edge=true:NoSchedule\n"), "{file}");
}

/// A controller added to a running hard-way cluster joins etcd as a learner, which only
/// apply can do: rendered for user-data, its bootstrap would start a new cluster with
/// the planned members. With controller-0 recorded as running and controller-1 and -2
/// never deployed, render refuses and writes nothing; once they run, it renders.
#[test]
fn no_bootstrap_for_a_controller_that_would_join_a_running_etcd() {
    let ctx = TestContext::with_example("hardway");
    ctx.render("out");
    let mut bundle = ctx.bundle();
    let spec = kforge_core::spec::parse("kforge.yaml", &ctx.read("kforge.yaml")).unwrap().cluster;
    bundle.record_deployed(&spec);
    let all = bundle.deployed.clone();
    bundle.deployed.retain(|n, _| n == "controller-0" || n.starts_with("worker"));
    ctx.write("kforge.secrets.yaml", &serde_saphyr::to_string(&bundle).unwrap());
    let out = ctx.kforge(&["render", "--out", "joining"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("controller-1, controller-2 would join the running etcd of controller-0 as new members"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("kforge apply, which adds them as etcd learners"), "{}", out.stderr);
    assert!(!ctx.path("joining").exists(), "nothing was written");
    bundle.deployed = all;
    ctx.write("kforge.secrets.yaml", &serde_saphyr::to_string(&bundle).unwrap());
    ctx.kforge(&["render", "--out", "joining"]).success();
}
