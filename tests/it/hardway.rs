//! The hardway example rendered and checked by the real tools: every certificate's
//! chain, CN, O, SANs, key usage and extended key usage (DESIGN.md §8) by openssl; the
//! service-account pair, encryption config, unit flags and configs; stable pod networks
//! routed by the mesh; `kforge explain`.

use std::path::{Path, PathBuf};

use base64::Engine;

use crate::util::{TestContext, run};

fn text(cert: &Path) -> String {
    run("openssl", &["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"])
}

fn verify(ca: &Path, cert: &Path) {
    let out = run("openssl", &["verify", "-CAfile", ca.to_str().unwrap(), cert.to_str().unwrap()]);
    assert!(out.trim_end().ends_with(": OK"), "{out}");
}

/// The client certificate embedded in a kubeconfig, written out as a PEM file.
fn kubeconfig_cert(kubeconfig: &Path, out: &Path) -> (PathBuf, String) {
    let doc: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let b64 = doc["users"][0]["user"]["client-certificate-data"].as_str().unwrap();
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let name = kubeconfig.file_name().unwrap().to_string_lossy().replace('.', "_");
    let path = out.join(format!("{name}.crt"));
    std::fs::write(&path, pem).unwrap();
    (path, doc["clusters"][0]["cluster"]["server"].as_str().unwrap().to_string())
}

/// Expectation for one certificate: subject, SANs, usage.
struct Expect<'a> {
    subject: &'a str,
    sans: &'a [&'a str],
    server: bool,
    client: bool,
}

fn check(what: &str, cert: &Path, ca: &Path, e: &Expect<'_>) {
    verify(ca, cert);
    let t = text(cert);
    assert!(t.contains(&format!("Subject: {}\n", e.subject)), "{what}: subject is not `{}`:\n{t}", e.subject);
    for san in e.sans {
        assert!(t.contains(san), "{what} lacks SAN {san}:\n{t}");
    }
    if e.sans.is_empty() {
        assert!(!t.contains("Subject Alternative Name"), "{what} has SANs it does not need:\n{t}");
    }
    assert!(t.contains("Digital Signature, Key Encipherment"), "{what}: key usage:\n{t}");
    assert_eq!(t.contains("TLS Web Server Authentication"), e.server, "{what}: serverAuth:\n{t}");
    assert_eq!(t.contains("TLS Web Client Authentication"), e.client, "{what}: clientAuth:\n{t}");
    assert!(t.contains("CA:FALSE"), "{what} must not be a CA:\n{t}");
}

#[test]
fn every_certificate_has_the_subject_sans_and_usage_of_design_section_8() {
    let ctx = TestContext::with_example("hardway");
    let out = ctx.render("out");
    let c0 = out.join("controller-0");
    let w0 = out.join("worker-0");
    let k = |rel: &str| c0.join("var/lib/kubernetes").join(rel);
    let server_ca = k("ca.crt");
    let client_ca = k("client-ca.crt");
    let etcd_ca = c0.join("etc/etcd/ca.crt");

    // Every controller shares the API server's names: the Service IP, loopback, all
    // controllers' mesh and public addresses, and every kubernetes.default name.
    let apiserver_sans = [
        "IP Address:10.32.0.1",
        "IP Address:127.0.0.1",
        "IP Address:10.4.0.1",
        "IP Address:10.4.0.2",
        "IP Address:10.4.0.3",
        "IP Address:203.0.113.20",
        "IP Address:203.0.113.21",
        "IP Address:203.0.113.22",
        "DNS:kubernetes,",
        "DNS:kubernetes.default,",
        "DNS:kubernetes.default.svc,",
        "DNS:kubernetes.default.svc.cluster,",
        "DNS:kubernetes.default.svc.cluster.local",
    ];
    for c in ["controller-0", "controller-1", "controller-2"] {
        let e = Expect { subject: "CN = kubernetes", sans: &apiserver_sans, server: true, client: false };
        check(c, &out.join(c).join("var/lib/kubernetes/kube-apiserver.crt"), &server_ca, &e);
        let t = text(&out.join(c).join("var/lib/kubernetes/kube-apiserver.crt"));
        assert!(!t.contains("198.51.100."), "a worker's address in the API certificate:\n{t}");
    }

    let clients: [(&str, PathBuf, &str); 4] = [
        ("admin", c0.join("etc/kforge/admin.kubeconfig"), "O = system:masters, CN = admin"),
        (
            "controller-manager",
            k("kube-controller-manager.kubeconfig"),
            "O = system:kube-controller-manager, CN = system:kube-controller-manager",
        ),
        // Not upstream's `system:system:kube-scheduler`.
        ("scheduler", k("kube-scheduler.kubeconfig"), "O = system:kube-scheduler, CN = system:kube-scheduler"),
        ("kube-proxy", w0.join("var/lib/kube-proxy/kubeconfig"), "O = system:node-proxier, CN = system:kube-proxy"),
    ];
    let tmp = ctx.path("certs");
    std::fs::create_dir_all(&tmp).unwrap();
    for (what, kubeconfig, subject) in &clients {
        let (cert, server) = kubeconfig_cert(kubeconfig, &tmp);
        check(what, &cert, &client_ca, &Expect { subject, sans: &[], server: false, client: true });
        if *what == "kube-proxy" {
            assert_eq!(server, "https://127.0.0.1:6445", "{what} talks to its worker's API load balancer");
        } else {
            assert_eq!(server, "https://127.0.0.1:6443", "{what} talks to its own controller's API");
        }
    }
    // The operator's admin kubeconfig points at the API's mesh address.
    ctx.kforge(&["kubeconfig", "--out", "admin.kubeconfig"]).success();
    let (admin_cert, server) = kubeconfig_cert(&ctx.path("admin.kubeconfig"), &tmp);
    assert_eq!(server, "https://10.4.0.1:6443");
    check(
        "operator admin",
        &admin_cert,
        &client_ca,
        &Expect { subject: "O = system:masters, CN = admin", sans: &[], server: false, client: true },
    );
    assert!(!std::fs::read_to_string(k("kube-scheduler.kubeconfig")).unwrap().contains("system:system"));

    // Kubelet: a client identity the Node authorizer knows, and a serving certificate
    // for the addresses the API server dials.
    let (kubelet_client, _) = kubeconfig_cert(&w0.join("var/lib/kubelet/kubeconfig"), &tmp);
    let node = "O = system:nodes, CN = system:node:worker-0";
    check(
        "kubelet client",
        &kubelet_client,
        &client_ca,
        &Expect { subject: node, sans: &[], server: false, client: true },
    );
    let kubelet_sans = ["DNS:worker-0", "IP Address:10.4.0.4", "IP Address:198.51.100.30"];
    check(
        "kubelet serving",
        &w0.join("var/lib/kubelet/kubelet.crt"),
        &server_ca,
        &Expect { subject: node, sans: &kubelet_sans, server: true, client: false },
    );
    assert_eq!(
        std::fs::read(w0.join("var/lib/kubelet/ca.crt")).unwrap(),
        std::fs::read(&client_ca).unwrap(),
        "kubelets trust the client CA for the API server's calls"
    );
    check(
        "apiserver → kubelet",
        &k("apiserver-kubelet-client.crt"),
        &client_ca,
        &Expect { subject: "CN = kubernetes", sans: &[], server: false, client: true },
    );
    check(
        "front proxy",
        &k("front-proxy-client.crt"),
        &k("front-proxy-ca.crt"),
        &Expect { subject: "CN = front-proxy-client", sans: &[], server: false, client: true },
    );

    // etcd: its own CAs; server and peer certificates serve and dial; clients only dial.
    let etcd_sans = ["DNS:controller-0", "DNS:localhost", "IP Address:10.4.0.1", "IP Address:127.0.0.1"];
    check(
        "etcd server",
        &c0.join("etc/etcd/server.crt"),
        &etcd_ca,
        &Expect { subject: "CN = controller-0", sans: &etcd_sans, server: true, client: true },
    );
    check(
        "etcd peer",
        &c0.join("etc/etcd/peer.crt"),
        &c0.join("etc/etcd/peer-ca.crt"),
        &Expect {
            subject: "CN = controller-0",
            sans: &["DNS:controller-0", "IP Address:10.4.0.1"],
            server: true,
            client: true,
        },
    );
    let t = text(&c0.join("etc/etcd/peer.crt"));
    assert!(!t.contains("203.0.113.20"), "etcd peers are reached on the mesh only:\n{t}");
    for (what, path, subject) in [
        ("kforge etcd client", c0.join("etc/etcd/kforge-client.crt"), "CN = kforge-etcd-client"),
        ("apiserver etcd client", k("apiserver-etcd-client.crt"), "CN = kube-apiserver-etcd-client"),
    ] {
        check(what, &path, &etcd_ca, &Expect { subject, sans: &[], server: false, client: true });
    }
    // A certificate from the Kubernetes client CA is no etcd client, and vice versa.
    let (admin, _) = kubeconfig_cert(&c0.join("etc/kforge/admin.kubeconfig"), &tmp);
    let refused = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", etcd_ca.to_str().unwrap(), admin.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "the etcd CA must not vouch for the admin");

    // The service-account key pair: the public file is the private key's public half.
    let public = run("openssl", &["pkey", "-in", k("service-account.key").to_str().unwrap(), "-pubout"]);
    assert_eq!(public, std::fs::read_to_string(k("service-account.pub")).unwrap());
}

#[test]
fn units_and_configs_carry_the_flags_the_hard_way_needs() {
    let ctx = TestContext::with_example("hardway");
    let out = ctx.render("out");
    let c1 = out.join("controller-1");
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();

    let apiserver = read(c1.join("etc/systemd/system/kube-apiserver.service"));
    for flag in [
        "--service-cluster-ip-range=10.32.0.0/24",
        "--encryption-provider-config=/var/lib/kubernetes/encryption-config.yaml",
        "--authorization-mode=Node,RBAC",
        "--etcd-servers=https://10.4.0.1:2379,https://10.4.0.2:2379,https://10.4.0.3:2379",
        "--etcd-certfile=/var/lib/kubernetes/apiserver-etcd-client.crt",
        "--advertise-address=10.4.0.2",
        "--client-ca-file=/var/lib/kubernetes/client-ca.crt",
        "--kubelet-certificate-authority=/var/lib/kubernetes/ca.crt",
    ] {
        assert!(apiserver.contains(flag), "kube-apiserver lacks {flag}:\n{apiserver}");
    }
    let etcd = read(c1.join("etc/systemd/system/etcd.service"));
    for flag in [
        "--client-cert-auth",
        "--peer-client-cert-auth",
        "--listen-peer-urls=https://10.4.0.2:2380",
        "EnvironmentFile=/etc/etcd/initial-cluster.env",
    ] {
        assert!(etcd.contains(flag), "etcd lacks {flag}:\n{etcd}");
    }
    // The bootstrap member list is read only with an empty data directory: it lives
    // outside the unit, so a controller joining or leaving restarts no running etcd.
    assert!(!etcd.contains("--initial-cluster="), "{etcd}");
    assert!(read(c1.join("etc/etcd/initial-cluster.env")).contains(
        "ETCD_INITIAL_CLUSTER=controller-0=https://10.4.0.1:2380,controller-1=https://10.4.0.2:2380,controller-2=https://10.4.0.3:2380\n"
    ));
    let cm = read(c1.join("etc/systemd/system/kube-controller-manager.service"));
    for flag in ["--cluster-cidr=10.200.0.0/16", "--cluster-signing-cert-file=", "--leader-elect=true"] {
        assert!(cm.contains(flag), "controller-manager lacks {flag}:\n{cm}");
    }
    let sched = read(c1.join("etc/systemd/system/kube-scheduler.service"));
    assert!(sched.contains("--config=/etc/kubernetes/config/kube-scheduler.yaml"), "{sched}");
    let sched_cfg: serde_json::Value =
        serde_saphyr::from_str(&read(c1.join("etc/kubernetes/config/kube-scheduler.yaml"))).unwrap();
    assert_eq!(sched_cfg["apiVersion"], "kubescheduler.config.k8s.io/v1");
    assert_eq!(sched_cfg["clientConnection"]["kubeconfig"], "/var/lib/kubernetes/kube-scheduler.kubeconfig");

    // Encryption at rest: aescbc with a 32-byte key first, identity second.
    let enc: serde_json::Value =
        serde_saphyr::from_str(&read(c1.join("var/lib/kubernetes/encryption-config.yaml"))).unwrap();
    assert_eq!(enc["apiVersion"], "apiserver.config.k8s.io/v1");
    assert_eq!(enc["kind"], "EncryptionConfiguration");
    let providers = &enc["resources"][0]["providers"];
    let key = providers[0]["aescbc"]["keys"][0]["secret"].as_str().unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), 32);
    assert!(providers[1].get("identity").is_some());

    // DNS: the kubelets' clusterDNS is CoreDNS's Service address.
    let w1 = out.join("worker-1");
    let kubelet: serde_json::Value =
        serde_saphyr::from_str(&read(w1.join("var/lib/kubelet/kubelet-config.yaml"))).unwrap();
    assert_eq!(kubelet["kind"], "KubeletConfiguration");
    assert_eq!(kubelet["clusterDNS"][0], "10.32.0.10");
    assert_eq!(kubelet["authentication"]["webhook"]["enabled"], true);
    assert_eq!(kubelet["authentication"]["anonymous"]["enabled"], false);
    assert_eq!(kubelet["authorization"]["mode"], "Webhook");
    // The addons are YAML documents a YAML parser reads back (kubectl applies them).
    let docs = |path: &str| -> Vec<serde_json::Value> { serde_saphyr::from_multiple(&read(out.join(path))).unwrap() };
    let coredns = docs("controller-0/etc/kforge/addons/20-coredns.yaml");
    let kinds: Vec<&str> = coredns.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service"]);
    assert_eq!(coredns[5]["spec"]["clusterIP"], "10.32.0.10");
    assert!(coredns[3]["data"]["Corefile"].as_str().unwrap().contains("kubernetes cluster.local in-addr.arpa"));
    let containerd: toml::Value = toml::from_str(&read(out.join("worker-0/etc/containerd/config.toml"))).unwrap();
    assert_eq!(containerd["version"].as_integer(), Some(3), "containerd 2.x's configuration format");
    let runtime = &containerd["plugins"]["io.containerd.cri.v1.runtime"];
    assert_eq!(runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(), Some(true));
    assert_eq!(runtime["restrict_oom_score_adj"].as_bool(), Some(true));
    let pinned = &containerd["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"];
    assert_eq!(pinned.as_str(), Some("registry.k8s.io/pause:3.10.1"));
    let rbac = docs("controller-0/etc/kforge/addons/10-apiserver-to-kubelet.yaml");
    assert_eq!(rbac[0]["metadata"]["name"], "system:kube-apiserver-to-kubelet");
    assert_eq!(rbac[1]["subjects"][0]["name"], "kubernetes");
    assert!(!out.join("controller-1/etc/kforge/addons").exists(), "addons are applied from one controller");

    // Each worker's CNI bridge uses its own pod network, which the kubelet also gets,
    // and every other node's mesh routes that network to it.
    let bridge: serde_json::Value = serde_json::from_str(&read(w1.join("etc/cni/net.d/10-bridge.conf"))).unwrap();
    let subnet = bridge["ipam"]["ranges"][0][0]["subnet"].as_str().unwrap().to_string();
    assert_eq!(kubelet["podCIDR"], subnet.as_str());
    assert_eq!(subnet, "10.200.1.0/24");
    let wg = read(out.join("controller-0/etc/wireguard/kforge0.conf"));
    let section = wg.split("[Peer]").find(|p| p.contains("# worker-1\n")).expect("a peer section for worker-1");
    assert!(
        section.contains("AllowedIPs = 10.4.0.5/32, 10.200.1.0/24\n"),
        "worker-1's pod network is not routed to it"
    );
    run("wg-quick", &["strip", out.join("controller-0/etc/wireguard/kforge0.conf").to_str().unwrap()]);
}

#[test]
fn pod_networks_are_allocated_once_and_kept_when_workers_come_and_go() {
    let ctx = TestContext::with_example("hardway");
    ctx.kforge(&["secrets", "update"]).success();
    let before = ctx.bundle().pod_cidrs;
    assert_eq!(before.len(), 2);
    // A new worker listed first, and worker-0 removed: worker-1 keeps its network, the
    // newcomer takes the lowest free one.
    ctx.edit_spec("    - {name: worker-0, role: worker, endpoint: 198.51.100.30, location: fra}\n", "");
    ctx.edit_spec("  nodes:\n", "  nodes:\n    - {name: worker-9, role: worker, endpoint: 198.51.100.39}\n");
    ctx.kforge(&["secrets", "update"]).success();
    let after = ctx.bundle().pod_cidrs;
    assert_eq!(after["worker-1"], before["worker-1"]);
    assert_eq!(after["worker-9"].to_string(), "10.200.0.0/24");
    assert!(!after.contains_key("worker-0"));
}

#[test]
fn explain_says_what_a_file_is_who_reads_it_and_why() {
    let ctx = TestContext::with_example("hardway");
    let overview = ctx.kforge(&["explain"]).success().stdout;
    assert!(overview.contains("controller-0  controller  mesh 10.4.0.1"), "{overview}");
    assert!(
        overview
            .contains("etcd.service, kube-apiserver.service, kforge-healthz.service, kube-controller-manager.service"),
        "{overview}"
    );

    let listing = ctx.kforge(&["explain", "worker-0"]).success().stdout;
    assert!(listing.contains("/etc/cni/net.d/10-bridge.conf"), "{listing}");

    let one = ctx.kforge(&["explain", "controller-0", "kube-apiserver.service"]).success().stdout;
    assert!(one.contains("--service-cluster-ip-range"), "{one}");
    assert!(one.contains("10.32.0.0/24"), "{one}");
    assert!(one.contains("read by  systemd"), "{one}");

    let cert = ctx.kforge(&["explain", "controller-0", "/var/lib/kubernetes/kube-apiserver.crt"]).success().stdout;
    assert!(cert.contains("kubernetes.default.svc.cluster.local"), "{cert}");
    assert!(cert.contains("upstream's guide omits it"), "{cert}");

    // Key material is explained, never shown.
    let key = ctx.kforge(&["explain", "controller-0", "/var/lib/kubernetes/encryption-config.yaml"]).success().stdout;
    assert!(key.contains("aescbc") && key.contains("not shown"), "{key}");
    let bundle = ctx.bundle();
    assert!(!key.contains(&bundle.encryption_key));

    let unknown = ctx.kforge(&["explain", "controller-9"]);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("nodes: controller-0, controller-1"), "{}", unknown.stderr);
    let vague = ctx.kforge(&["explain", "controller-0", ".crt"]);
    assert_eq!(vague.code, 1);
    assert!(vague.stderr.contains("matches several files"), "{}", vague.stderr);
}

/// The hardway lab example with the control plane and kubelet marked as stand-ins
/// (a user's `standIn:`, for binaries they cannot have yet).
fn with_stand_ins() -> TestContext {
    let ctx = TestContext::with_example("hardway-lab");
    for (key, file) in [
        ("kube-apiserver", "kube-apiserver"),
        ("kubectl", "kubectl"),
        ("kubelet", "kubelet"),
        ("containerd", "containerd-2.4.2-linux-amd64.tar.gz"),
    ] {
        ctx.edit_spec(
            &format!("    {key}: {{path: ./bin/{file}}}\n"),
            &format!("    {key}: {{path: ./bin/{file}, standIn: not available here}}\n"),
        );
    }
    ctx
}

#[test]
fn the_plan_marks_stand_ins_and_they_are_never_started() {
    let ctx = with_stand_ins();
    let plan = ctx.kforge(&["plan"]).success().stdout;
    assert!(
        plan.contains("kube-apiserver.service                               installed, not started (stand-in)"),
        "{plan}"
    );
    assert!(plan.contains("etcd.service                                         enabled"), "{plan}");
    assert!(plan.contains("stand-ins, not the real programs: kube-apiserver"), "{plan}");
    assert!(plan.contains("addons (RBAC apiserver-to-kubelet, CoreDNS) are written"), "{plan}");
    let json: serde_json::Value = serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
    let units: Vec<&serde_json::Value> =
        json["nodes"][0]["phases"].as_array().unwrap().iter().flat_map(|p| p["units"].as_array().unwrap()).collect();
    let started: Vec<&str> = units.iter().filter(|u| u["start"] == true).map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(
        started,
        [
            "wg-quick@kforge0.service",
            "kforge-firewall.service",
            "etcd.service",
            "kforge-healthz.service",
            "kube-controller-manager.service",
            "kube-scheduler.service",
            "kforge-api-balancer.service",
            "kube-proxy.service"
        ]
    );
    // No addon command: kubectl and the API server are stand-ins.
    let addons = json["nodes"][0]["phases"].as_array().unwrap().iter().find(|p| p["phase"] == "addons").unwrap();
    assert!(addons["commands"].as_array().unwrap().is_empty());
}

#[test]
fn the_bootstrap_script_installs_what_the_node_needs_and_never_starts_a_stand_in() {
    let ctx = with_stand_ins();
    let out = ctx.render("out");
    let script = std::fs::read_to_string(out.join("lab-1/var/lib/kforge/bootstrap.sh")).unwrap();
    run("bash", &["-n", out.join("lab-1/var/lib/kforge/bootstrap.sh").to_str().unwrap()]);
    let install = script.lines().find(|l| l.starts_with("kf_install ")).expect("the bootstrap installs packages");
    assert!(install.contains(" nginx=nginx"), "controllers need nginx for /healthz: {install}");
    assert!(install.contains(" iptables=iptables"), "workers need iptables for kube-proxy: {install}");
    // etcd waits for a quorum; other controllers may boot later: never block on it.
    assert!(script.contains("kf_restart_no_block etcd.service"), "{script}");
    for stand_in in ["kube-apiserver.service", "kubelet.service", "containerd.service"] {
        assert!(!script.contains(&format!("restart {stand_in}")), "{stand_in} is a stand-in: {script}");
        assert!(!script.contains(&format!("enable -q {stand_in}")), "{stand_in} is a stand-in: {script}");
    }
    assert!(script.contains("kf_restart kforge-healthz.service"), "{script}");
}

#[test]
fn a_guarded_command_does_nothing_when_its_guard_holds_on_a_rerun() {
    // The bootstrap once wrote `GUARD || mkdir … && tar …`: the tar ran even when the
    // guard held, and a re-run on a converged host aborted under `set -e`. Take the
    // rendered unpack line for containerd's tarball and run it for real, as a re-run
    // would: the stamp says the tarball is unpacked, the tarball is gone (so tar would
    // fail), and the line must change nothing and succeed.
    let ctx = TestContext::with_example("hardway-lab");
    let out = ctx.render("out");
    let script = std::fs::read_to_string(out.join("lab-1/var/lib/kforge/bootstrap.sh")).unwrap();
    let line = script
        .lines()
        .find(|l| l.contains("tar -xzf /var/lib/kforge/archives/containerd.tar.gz"))
        .expect("the containerd unpack command")
        .to_string();
    assert!(line.contains(" || { ") && line.ends_with("; }"), "the guard covers the whole command: {line}");
    let root = ctx.path("host");
    let at = |p: &str| format!("{}{p}", root.display());
    let local = line
        .replace("/var/lib/kforge/archives", &at("/var/lib/kforge/archives"))
        .replace("-C /usr/local/bin", &format!("-C {}", at("/usr/local/bin")));
    std::fs::create_dir_all(at("/var/lib/kforge/archives")).unwrap();
    // A converged host: the stamp holds the digest of the tarball that was unpacked.
    std::fs::write(at("/var/lib/kforge/archives/containerd.tar.gz"), "tarball bytes").unwrap();
    let digest = run("sha256sum", &[&at("/var/lib/kforge/archives/containerd.tar.gz")]);
    std::fs::write(at("/var/lib/kforge/archives/containerd.tar.gz.unpacked"), format!("{}\n", &digest[..64])).unwrap();
    run("bash", &["-euo", "pipefail", "-c", &local]);
    assert!(!std::path::Path::new(&at("/usr/local/bin")).exists(), "the unpack ran although the stamp matched");
    // And where the stamp does not match, it does run (and here fails: not a tarball).
    std::fs::write(at("/var/lib/kforge/archives/containerd.tar.gz.unpacked"), "other\n").unwrap();
    let ran = std::process::Command::new("bash").args(["-euo", "pipefail", "-c", &local]).status().unwrap();
    assert!(!ran.success(), "with a stale stamp the unpack runs");
}
