//! The hardway distribution for real: three lab machines, each a controller and a
//! worker, running the upstream programs built from their Go modules
//! (`scripts/components`): etcd 3.6, kube-apiserver, controller-manager, scheduler,
//! kubelet, kube-proxy v1.37, containerd 2, runc, the CNI plugins, CoreDNS — and
//! images from the lab's own OCI archives (no registry).
//!
//! The cluster is brought up once and every check runs against it, in the order an
//! operator would look, the disruptive ones (an API server stopped, a machine
//! rebooted, etcd wiped and restored) last.

use super::{Capture, Checks, Lab, Stranger, assert_only_wireguard_and_ssh, contains, totals};
use std::time::Instant;

use crate::util::run;

/// The workstation, as a namespace on the lab's internet that joins the mesh as the
/// access peer `workstation` with the config `kforge render` wrote for it.
pub(super) struct Workstation {
    pub(super) ns: Stranger,
    kubeconfig: String,
    kubectl: String,
}

impl Workstation {
    fn join(lab: &Lab) -> Workstation {
        let ns = Stranger::join_as(lab, "ws", 201);
        lab.ctx.kforge(&["render", "-f", "lab/kforge.yaml", "--out", "rendered"]).success();
        let conf = lab.ctx.path("rendered/_peers/workstation/kforge0.conf");
        assert!(std::fs::read_to_string(&conf).unwrap().contains("PrivateKey = "), "the peer config carries its key");
        // This kernel has no WireGuard module: wg-quick runs boringtun-cli, as on the nodes.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns.ns,
                "env",
                "WG_QUICK_USERSPACE_IMPLEMENTATION=boringtun-cli",
                "WG_SUDO=true",
                "wg-quick",
                "up",
                conf.to_str().unwrap(),
            ],
        );
        let kubeconfig = lab.ctx.path("admin.kubeconfig").display().to_string();
        lab.ctx.kforge(&["kubeconfig", "-f", "lab/kforge.yaml", "--out", &kubeconfig]).success();
        let kubectl = lab.ctx.path("lab/bin/kubectl").display().to_string();
        Workstation { ns, kubeconfig, kubectl }
    }

    /// kubectl here, through the mesh: (ok, output).
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["netns", "exec", &self.ns.ns, &self.kubectl, "--kubeconfig", &self.kubeconfig];
        full.push("--request-timeout=20s");
        full.extend_from_slice(args);
        let out = std::process::Command::new("ip").args(&full).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }
}

pub(super) const ETCDCTL: &str = "set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl";

/// etcdctl asking `node`'s own member only: `endpoint health` then answers only while
/// etcd has quorum (a linearizable read), where [`ETCDCTL`] asks every endpoint of the
/// environment file, and fails for a member being added, removed or down. (The endpoint
/// goes by the environment: etcdctl refuses a flag that shadows a variable of the file.)
pub(super) fn etcdctl_on(lab: &Lab, node: &str) -> String {
    let ips = super::mesh_ips(lab);
    let ip = ips.iter().find(|(n, _)| n == node).map(|(_, ip)| ip.clone()).expect("the node's mesh address");
    format!("set -a; . /etc/etcd/etcdctl.env; set +a; ETCDCTL_ENDPOINTS=https://{ip}:2379 etcdctl")
}
const VERSION: &str = "v1.37.2";

#[test]
fn the_hard_way_runs_for_real() {
    let lab = Lab::up_example("hardway", 3, &[]);
    // Bare machines, as a provider hands them out: none of what kforge needs is there.
    for m in &lab.state.machines {
        assert!(!lab.ssh_status(&m.name, super::KFORGES_PACKAGES).0, "{} has kforge's packages already", m.name);
    }
    // Born at the previous minor, so the cluster every check below reads is one that
    // kforge upgraded under load (tests/it/lab/upgrade.rs).
    super::upgrade::set_release(&lab, super::upgrade::FROM);
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
        let installed = h["packagesInstalled"].as_array().unwrap();
        for p in ["wireguard-tools", "nftables", "nginx", "libnginx-mod-stream", "iptables", "conntrack"] {
            assert!(installed.iter().any(|i| i == p), "{p} installed from the lab's mirror: {h}");
        }
    }
    let mut checks = Checks::default();
    checks.run("the API balancer on every worker serves (nginx's stream module from the mirror)", || {
        for m in &lab.state.machines {
            let readyz = lab.ssh(
                &m.name,
                "kubectl --kubeconfig /etc/kforge/admin.kubeconfig --server https://127.0.0.1:6445 get --raw /readyz",
            );
            assert_eq!(readyz.trim(), "ok", "{}", m.name);
            let off = lab.ssh(&m.name, "systemctl is-enabled nginx.service || true");
            assert_eq!(off.trim(), "disabled", "{}: Debian's nginx.service left off", m.name);
        }
    });
    super::upgrade::the_cluster_upgrades_under_load(&lab, &mut checks);
    let ws = Workstation::join(&lab);

    checks.run("nodes Ready, the API on the mesh only", || {
        nodes_are_ready_and_the_api_answers_on_the_mesh_only(&lab, &ws)
    });
    checks.run("kforge status", || kforge_status_checks_the_cluster_for_real(&lab));
    checks.run("pods talk across nodes, through Services and DNS", || {
        pods_talk_across_nodes_through_services_and_dns(&lab, &ws)
    });
    checks.run("only WireGuard and SSH cross the bridge", || {
        only_wireguard_and_ssh_cross_the_bridge_while_pods_talk(&lab)
    });
    checks.run("Secrets encrypted in etcd", || secrets_are_encrypted_in_etcd(&lab));
    checks.run("etcd over mTLS on the mesh", || etcd_is_a_healthy_mtls_cluster_on_the_mesh(&lab));
    checks.run("units verify, explain matches the host", || every_unit_verifies_and_explain_matches_the_host(&lab));
    checks.run("doctor finds each seed failure", || {
        super::doctor::kforge_doctor_finds_each_seed_failure_and_its_fix(&lab)
    });
    checks.run("certs renew", || {
        super::doctor::kforge_certs_renew_serves_the_new_certificate_and_restarts_nothing_else(&lab, &ws)
    });
    checks.run("a second apply changes nothing", || assert_eq!(totals(&lab.apply_json()), (0, 0)));
    checks.run("a bare pod is named before any cordon; a node cordoned by hand stays cordoned", || {
        a_bare_pod_is_named_and_a_hand_cordon_kept(&lab)
    });
    checks.run("re-running the bootstrap changes nothing", || lab.rerunning_the_bootstrap_changes_nothing());
    checks.run("workers survive a stopped API server", || workers_survive_a_stopped_api_server(&lab));
    checks.run("the controllers gate waits out a stopped leader's lease", || {
        the_controllers_gate_waits_out_a_stopped_leaders_lease(&lab)
    });
    checks.run("a rebooted worker comes back", || a_rebooted_worker_comes_back_without_apply(&lab));
    checks.run("1000 keys survive snapshot, wipe, restore", || a_thousand_keys_survive_snapshot_wipe_and_restore(&lab));
    super::nodes::a_worker_joins_is_reset_and_joins_again(&lab, &mut checks);
    checks.finish();
}

fn nodes_are_ready_and_the_api_answers_on_the_mesh_only(lab: &Lab, ws: &Workstation) {
    // From the workstation, a mesh peer: every node Ready, at the real version, with
    // its mesh address as InternalIP.
    let ips = super::mesh_ips(lab);
    let mut ready = String::new();
    lab.wait_for(90, "every node Ready (seen from the workstation)", || {
        let (ok, out) = ws.kubectl(&["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion} {.status.addresses[?(@.type==\"InternalIP\")].address} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"]);
        ready = out;
        ok && ready.lines().filter(|l| l.ends_with(" True")).count() == 3
    });
    for (node, ip) in &ips {
        assert!(ready.contains(&format!("{node} {VERSION} {ip} True")), "{node}: {ready}");
    }
    // From the internet, the API is closed on every public address.
    let stranger = Stranger::join(lab);
    for (node, _) in &ips {
        let seen = stranger.probe(&lab.public_ip(node), &[6443, 10250, 2379], &[]);
        assert_eq!(seen, ["tcp/6443 silent", "tcp/10250 silent", "tcp/2379 silent"], "{node}");
    }
}

fn kforge_status_checks_the_cluster_for_real(lab: &Lab) {
    // CoreDNS may still be starting right after apply.
    let mut status = String::new();
    lab.wait_for(120, "kforge status to pass", || {
        let out = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
        status = out.stdout;
        out.code == 0
    });
    for check in ["mesh", "firewall", "certificates", "services", "etcd", "api", "nodes", "dns"] {
        assert!(status.lines().any(|l| l.trim_start().starts_with(check) && l.contains(" ok ")), "{check}: {status}");
    }
    assert!(status.contains(&format!("3 of 3 Ready, kubelet {VERSION}")), "{status}");
    assert!(status.contains("answers kubernetes.default.svc.cluster.local = 10.32.0.1"), "{status}");
    assert!(!status.contains("not running") && !status.contains("stand-in"), "no stand-ins left: {status}");
}

pub(super) const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
        - name: web
          image: kforge.lab/busybox:1
          imagePullPolicy: Never
          command: [/bin/sh, -c, "mkdir -p /www && hostname > /www/index.html && dd if=/dev/zero bs=1M count=10 2>/dev/null | tr '\\000' K > /www/big && echo kforge-marker-5f1c2 > /www/marker && exec httpd -f -p 8080 -h /www"]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// (pod name, node, pod IP) of the web pods.
pub(super) fn web_pods(lab: &Lab) -> Vec<(String, String, String)> {
    lab.kubectl(
        "lab-1",
        "get pods -l app=web -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{\"\\n\"}{end}'",
    )
    .lines()
    .map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w[0].to_string(), w[1].to_string(), w.get(2).unwrap_or(&"").to_string())
    })
    .collect()
}

fn pods_talk_across_nodes_through_services_and_dns(lab: &Lab, ws: &Workstation) {
    lab.ssh("lab-1", &format!("cat > /tmp/web.yaml <<'EOF'\n{WEB}EOF"));
    lab.kubectl("lab-1", "apply -f /tmp/web.yaml");
    lab.kubectl("lab-1", "rollout status deploy/web --timeout=120s");
    let pods = web_pods(lab);
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert_ne!(pods[0].1, pods[1].1, "the Deployment spreads over two workers: {pods:?}");
    let (a, b) = (&pods[0], &pods[1]);

    // Pod to pod across nodes: the pod networks the mesh routes.
    let got = lab.kubectl("lab-1", &format!("exec {} -- wget -qO- http://{}:8080/", a.0, b.2));
    assert_eq!(got.trim(), b.0, "{} on {} answered {} on {}", b.0, b.1, a.0, a.1);
    // 10 MB across nodes arrives whole (MTU inside the mesh is right).
    let size = lab.kubectl("lab-1", &format!("exec {} -- sh -c 'wget -qO- http://{}:8080/big | wc -c'", a.0, b.2));
    assert_eq!(size.trim(), "10485760");
    // The Service through kube-proxy, by its DNS name, from a pod. kube-proxy programs a
    // new Service asynchronously (its sync loop): wait until the client pod's node has
    // the rule, as any client of a just-created Service must.
    let svc_ip = lab.kubectl("lab-1", "get svc web -o jsonpath={.spec.clusterIP}");
    let programmed = format!("iptables-save -t nat | grep -q -- '-d {}/32'", svc_ip.trim());
    lab.wait_for(60, &format!("kube-proxy on {} to program the web Service", a.1), || {
        lab.ssh_status(&a.1, &programmed).0
    });
    // Both endpoints answer, the client pod itself included (a hairpin through its own
    // bridge port): one request at a time until each has, each within 2 s (a lost SYN
    // retransmits after 1 s and may pick the other endpoint, which hid the hairpin case).
    let mut names = std::collections::BTreeSet::new();
    let mut slow = Vec::new();
    for _ in 0..40 {
        let timed = format!(
            "exec {} -- sh -c 's=$(date +%s); wget -qO- http://web.default.svc.cluster.local/; echo \" $(($(date +%s)-s))\"'",
            a.0
        );
        let got = lab.kubectl("lab-1", &timed);
        let (name, secs) = got.trim().rsplit_once(' ').unwrap_or((got.trim(), "?"));
        if secs.parse::<u32>().map_or(true, |s| s >= 2) {
            slow.push(got.trim().to_string());
        }
        names.insert(name.trim().to_string());
        if names.len() == 2 {
            break;
        }
    }
    let expected: std::collections::BTreeSet<String> = pods.iter().map(|p| p.0.clone()).collect();
    assert_eq!(names, expected, "each endpoint answers through the Service, {} (on {}) itself included", a.0, a.1);
    assert!(slow.is_empty(), "Service requests that waited for a retransmission: {slow:?}");
    // CoreDNS resolves the API's Service and the test Service.
    let api = lab.kubectl("lab-1", &format!("exec {} -- nslookup kubernetes.default.svc.cluster.local", a.0));
    assert!(api.contains("10.32.0.1"), "{api}");
    let web = lab.kubectl("lab-1", &format!("exec {} -- nslookup web.default.svc.cluster.local", b.0));
    assert!(web.contains(svc_ip.trim()), "{web} should name {svc_ip}");

    // API server → kubelet: logs, exec (above) and port-forward, from the workstation.
    let (ok, logs) = ws.kubectl(&["logs", &a.0]);
    assert!(ok, "kubectl logs: {logs}");
    let (ok, out) = ws.kubectl(&["exec", &b.0, "--", "cat", "/www/marker"]);
    assert!(ok && out.contains("kforge-marker-5f1c2"), "kubectl exec: {out}");
    let mut forward = std::process::Command::new("ip")
        .args(["netns", "exec", &ws.ns.ns, &ws.kubectl, "--kubeconfig", &ws.kubeconfig, "port-forward"])
        .args([&format!("pod/{}", a.0), "18080:8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let fetch = "import urllib.request,time\nfor i in range(40):\n  try:\n    print(urllib.request.urlopen('http://127.0.0.1:18080/', timeout=3).read().decode()); break\n  except Exception: time.sleep(0.5)";
    let got = run("ip", &["netns", "exec", &ws.ns.ns, "python3", "-c", fetch]);
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(got.trim(), a.0, "kubectl port-forward reached the pod");
}

fn only_wireguard_and_ssh_cross_the_bridge_while_pods_talk(lab: &Lab) {
    let pods = web_pods(lab);
    let capture = Capture::start(lab);
    let got = lab.kubectl("lab-1", &format!("exec {} -- wget -qO- http://{}:8080/marker", pods[0].0, pods[1].2));
    assert_eq!(got.trim(), "kforge-marker-5f1c2");
    let bytes = capture.stop();
    assert!(!contains(&bytes, b"kforge-marker-5f1c2"), "a pod's payload crossed the bridge in plaintext");
    assert_only_wireguard_and_ssh(lab, &bytes);
}

fn secrets_are_encrypted_in_etcd(lab: &Lab) {
    lab.kubectl("lab-1", "create secret generic kforge-test --from-literal=password=hunter2-kforge");
    let stored = lab
        .ssh("lab-2", &format!("{ETCDCTL} get /registry/secrets/default/kforge-test --print-value-only | head -c 64"));
    assert!(stored.starts_with("k8s:enc:aescbc:v1:"), "stored as: {stored:?}");
    let whole = lab.ssh("lab-2", &format!("{ETCDCTL} get /registry/secrets/default/kforge-test --print-value-only"));
    assert!(!whole.contains("hunter2-kforge"), "the value is readable in etcd");
    // And the API gives it back decrypted.
    let back = lab.kubectl("lab-3", "get secret kforge-test -o jsonpath={.data.password} | base64 -d");
    assert_eq!(back, "hunter2-kforge");
}

fn etcd_is_a_healthy_mtls_cluster_on_the_mesh(lab: &Lab) {
    let ips = super::mesh_ips(lab);
    let health = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint health --cluster 2>&1"));
    for (node, ip) in &ips {
        assert!(health.contains(&format!("https://{ip}:2379 is healthy")), "{node}: {health}");
    }
    let version = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint status -w json"));
    assert!(version.contains("\"version\":\"3.6."), "etcd 3.6: {version}");
    let members = lab.ssh("lab-2", &format!("{ETCDCTL} member list"));
    for (node, ip) in &ips {
        assert!(members.contains(&format!("{node}, https://{ip}:2380")), "{members}");
    }
    let peer_conns = lab.ssh("lab-1", "ss -Htn state established '( sport = :2380 or dport = :2380 )'");
    assert!(!peer_conns.trim().is_empty(), "no peer connections seen");
    for line in peer_conns.lines() {
        for a in line.split_whitespace().filter(|w| w.contains(':')) {
            let ip = a.rsplit_once(':').unwrap().0;
            assert!(ips.iter().any(|(_, m)| m == ip), "peer traffic off the mesh: {line}");
        }
    }
    // A client without a certificate is refused; so is one whose certificate comes
    // from another CA (made here with openssl, as an attacker would).
    let target = format!("--endpoints=https://{}:2379 --cacert=/etc/etcd/ca.crt", ips[1].1);
    let (ok, out) = lab.ssh_status("lab-1", &format!("etcdctl {target} --command-timeout=5s get foo"));
    assert!(!ok, "etcd answered a client without a certificate: {out}");
    let dir = lab.ctx.path("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    let d = |f: &str| dir.join(f).display().to_string();
    let openssl = |args: &str| run("openssl", &args.split_whitespace().collect::<Vec<_>>());
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(&format!("req -x509 {ec} -keyout {} -out {} -subj /CN=foreign-ca -days 1", d("ca.key"), d("ca.crt")));
    openssl(&format!("req {ec} -keyout {} -out {} -subj /CN=kforge-etcd-client", d("c.key"), d("c.csr")));
    std::fs::write(dir.join("ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(&format!(
        "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -out {} -days 1 -extfile {}",
        d("c.csr"),
        d("ca.crt"),
        d("ca.key"),
        d("c.crt"),
        d("ext")
    ));
    let cert = std::fs::read_to_string(d("c.crt")).unwrap();
    let key = std::fs::read_to_string(d("c.key")).unwrap();
    lab.ssh("lab-1", &format!("umask 077; printf '%s' '{cert}' > /tmp/f.crt; printf '%s' '{key}' > /tmp/f.key"));
    let (ok, out) = lab.ssh_status(
        "lab-1",
        &format!("etcdctl {target} --cert=/tmp/f.crt --key=/tmp/f.key --command-timeout=5s get foo"),
    );
    assert!(!ok, "etcd answered a client certificate from another CA: {out}");
    lab.ssh(
        "lab-1",
        &format!("etcdctl {target} --cert=/etc/etcd/kforge-client.crt --key=/etc/etcd/kforge-client.key --command-timeout=5s get foo"),
    );
}

fn every_unit_verifies_and_explain_matches_the_host(lab: &Lab) {
    let plan: serde_json::Value =
        serde_json::from_str(&lab.ctx.kforge(&["plan", "-f", "lab/kforge.yaml", "-o", "json"]).success().stdout)
            .unwrap();
    let units: Vec<String> = plan["nodes"][0]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["files"].as_array().unwrap().iter())
        .map(|f| f["path"].as_str().unwrap().to_string())
        .filter(|p| p.starts_with("/etc/systemd/system/") && p.ends_with(".service"))
        .collect();
    for expected in ["etcd", "kube-apiserver", "kube-scheduler", "kubelet", "containerd", "kforge-api-balancer"] {
        assert!(units.contains(&format!("/etc/systemd/system/{expected}.service")), "{expected} missing: {units:?}");
    }
    let (ok, out) = lab.ssh_status("lab-1", &format!("systemd-analyze verify {} 2>&1", units.join(" ")));
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    assert!(!out.contains("is not executable") && !out.contains("Unknown"), "{out}");
    // The /healthz proxy answers for the real API server.
    let code = lab.ssh("lab-1", "timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080; printf \"GET /healthz HTTP/1.0\\r\\n\\r\\n\" >&3; head -1 <&3'");
    assert!(code.starts_with("HTTP/1.1 200"), "{code}");
    let explained = lab.ctx.kforge(&["explain", "-f", "lab/kforge.yaml", "lab-2", "kubelet.service"]).success().stdout;
    let remote = lab.ssh("lab-2", "cat /etc/systemd/system/kubelet.service");
    for line in remote.lines() {
        assert!(explained.contains(&format!("| {line}")), "explain shows other content than the host has: {line}");
    }
}

/// Seconds since the node's lease was renewed, as the API sees it.
fn lease_renewed(lab: &Lab, via: &str, node: &str) -> String {
    lab.ssh(
        via,
        &format!("kubectl --kubeconfig /etc/kforge/admin.kubeconfig --server=https://127.0.0.1:6445 -n kube-node-lease get lease {node} -o jsonpath={{.spec.renewTime}}"),
    )
}

/// lab-3 cordoned by hand, with a pod no controller runs on it; a label changed on
/// lab-3 restarts its kubelet, so apply drains it. The bare pod is named before any
/// cordon (a dry run names it too); accepted with `--delete-bare-pods`, the drain goes,
/// the kubelet restarts, and lab-3 stays cordoned as the operator left it.
fn a_bare_pod_is_named_and_a_hand_cordon_kept(lab: &Lab) {
    lab.kubectl("lab-1", "cordon lab-3");
    lab.ssh(
        "lab-1",
        "kubectl --kubeconfig /etc/kforge/admin.kubeconfig apply -f - <<'EOF'\napiVersion: v1\nkind: Pod\nmetadata: {name: bare, namespace: default}\nspec:\n  nodeName: lab-3\n  containers: [{name: c, image: kforge.lab/busybox:1, imagePullPolicy: Never, command: [sleep, '3600']}]\nEOF",
    );
    lab.edit_cluster(|c| {
        c.spec.nodes[2].labels.insert("kept".into(), "cordoned".into());
    });
    let dry = lab.apply(&["--dry-run"]).stdout;
    assert!(dry.contains("drain preflight would refuse: default/bare on lab-3 runs under no controller"), "{dry}");
    let refused = lab.apply(&[]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(refused.stdout.contains("kforge apply --delete-bare-pods; nothing was cordoned"), "{}", refused.stdout);
    assert!(lab.kubectl("lab-1", "get pod bare -o name").contains("pod/bare"), "the refusal deleted the pod");
    let report = lab.apply(&["--delete-bare-pods", "-o", "json"]);
    assert_eq!(report.code, 0, "{}\n{}", report.stdout, report.stderr);
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let lab3 = &report["hosts"][2];
    assert!(lab3["unitsRestarted"].as_array().unwrap().iter().any(|u| u == "kubelet.service"), "{lab3}");
    let steps: Vec<&str> = lab3["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert!(steps.contains(&"drain (cordoned by hand: it stays cordoned)"), "{steps:?}");
    assert!(!steps.contains(&"uncordon"), "{steps:?}");
    let node = lab.kubectl(
        "lab-1",
        "get node lab-3 -o jsonpath='{.spec.unschedulable} {.metadata.annotations.kforge\\.dev/cordoned-by-apply}'",
    );
    assert_eq!(node.trim(), "true", "still cordoned by hand, no kforge mark");
    assert!(lab.kubectl("lab-1", "get pod bare --ignore-not-found -o name").trim().is_empty());
    // Back as it was: uncordoned by hand, label dropped.
    lab.kubectl("lab-1", "uncordon lab-3");
    lab.edit_cluster(|c| {
        c.spec.nodes[2].labels.remove("kept");
    });
    assert!(lab.apply_json()["hosts"].as_array().unwrap().iter().all(|h| h["converged"] == true));
}

fn workers_survive_a_stopped_api_server(lab: &Lab) {
    // lab-1's API server holds the API address; stop it. Kubelets and kube-proxy use
    // their worker's load balancer over all three and keep going.
    lab.ssh("lab-1", "systemctl stop kube-apiserver");
    let before: Vec<String> = ["lab-1", "lab-2", "lab-3"].iter().map(|n| lease_renewed(lab, "lab-2", n)).collect();
    lab.wait_for(40, "every kubelet to renew its lease with lab-1's API server down", || {
        ["lab-1", "lab-2", "lab-3"].iter().zip(&before).all(|(n, b)| &lease_renewed(lab, "lab-2", n) != b)
    });
    // kubectl through a worker's balancer still works, from every worker.
    for node in ["lab-1", "lab-3"] {
        let nodes = lab.ssh(
            node,
            "kubectl --kubeconfig /etc/kforge/admin.kubeconfig --server=https://127.0.0.1:6445 get nodes --no-headers",
        );
        assert_eq!(nodes.lines().filter(|l| l.contains(" Ready ")).count(), 3, "{node}: {nodes}");
    }
    lab.ssh("lab-1", "systemctl start kube-apiserver");
    lab.wait_for(60, "lab-1's API server back", || {
        lab.ssh_status("lab-1", "kubectl --kubeconfig /etc/kforge/admin.kubeconfig get --raw=/readyz").0
    });
}

/// The leading controller-manager stopped, as apply's restart of it does: it keeps its
/// lease on exit, so for up to 15 s no controller runs while the lease still looks
/// fresh. apply's controllers gate (the very test apply runs) must fail then — a drain
/// started there loses requests, as the upgrade under load once did — and pass once
/// another controller-manager has taken the lease over.
fn the_controllers_gate_waits_out_a_stopped_leaders_lease(lab: &Lab) {
    let gate = kforge_core::gates::controllers(&kforge_core::hardway::admin_kubectl());
    let try_gate = |node: &str| lab.ssh_status(node, &format!("bash <<'KFGATE'\n{}\nKFGATE", gate.test));
    let holder =
        || lab.kubectl("lab-1", "-n kube-system get lease kube-controller-manager -o jsonpath={.spec.holderIdentity}");
    lab.wait_for(60, "the controllers gate to pass before the stop", || try_gate("lab-1").0);
    let before = holder();
    // The identity is HOSTNAME_UUID.
    let leader = before.split('_').next().unwrap().to_string();
    assert!(["lab-1", "lab-2", "lab-3"].contains(&leader.as_str()), "lease holder {before}");
    let other = if leader == "lab-1" { "lab-2" } else { "lab-1" };
    lab.ssh(&leader, "systemctl stop kube-controller-manager");
    let stopped = Instant::now();
    let (passed, said) = try_gate(other);
    let during = holder();
    lab.ssh(&leader, "systemctl start kube-controller-manager");
    assert!(!passed, "the gate passed with the leader stopped and its lease still held ({during}): {said}");
    assert_eq!(during, before, "the lease named the stopped leader while the gate refused");
    lab.wait_for(60, "the controllers gate to pass once another controller-manager leads", || try_gate(other).0);
    let after = holder();
    assert_ne!(after, before, "a new leader holds the lease");
    eprintln!(
        "controllers gate: passed again {} s after the leader stopped; lease now {after}",
        stopped.elapsed().as_secs()
    );
}

fn a_rebooted_worker_comes_back_without_apply(lab: &Lab) {
    // A worker with a web pod (not lab-1, where kubectl runs), rebooted.
    let before = web_pods(lab).into_iter().find(|p| p.1 != "lab-1").expect("a web pod off lab-1");
    let victim = before.1.clone();
    let on_victim = |lab: &Lab| web_pods(lab).into_iter().find(|p| p.1 == victim);
    lab.ctx.kforge(&["lab", "restart", &victim]).success();
    lab.wait_for(180, "the rebooted worker Ready with its web pod running again", || {
        let ready = lab.kubectl(
            "lab-1",
            &format!("get node {victim} -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"),
        );
        let running = lab.ssh_status(&victim, "ctr -n k8s.io tasks ls 2>/dev/null | grep -c RUNNING").1;
        ready.trim() == "True" && running.trim().parse::<u32>().unwrap_or(0) >= 2
    });
    // The pod answers again, from the other worker, across the mesh.
    lab.wait_for(120, "the web pod on the rebooted worker answering", || {
        let Some(p) = on_victim(lab) else { return false };
        let other = web_pods(lab).into_iter().find(|q| q.1 != victim).unwrap();
        let cmd = format!(
            "kubectl --kubeconfig /etc/kforge/admin.kubeconfig exec {} -- timeout 5 wget -qO- http://{}:8080/",
            other.0, p.2
        );
        lab.ssh_status("lab-1", &cmd).1.trim() == p.0
    });
    assert_eq!(on_victim(lab).unwrap().0, before.0, "the same pod, restarted in place by the kubelet");
}

fn a_thousand_keys_survive_snapshot_wipe_and_restore(lab: &Lab) {
    // 1000 keys in 8 transactions of 125 puts.
    lab.ssh(
        "lab-1",
        &format!(
            "for b in $(seq 0 7); do {{ echo; for i in $(seq $((b*125+1)) $((b*125+125))); do echo \"put key$i value$i\"; done; echo; echo; }} | ({ETCDCTL} txn >/dev/null); done"
        ),
    );
    let count = |node: &str| lab.ssh(node, &format!("{ETCDCTL} get --prefix key --keys-only | grep -c ."));
    assert_eq!(count("lab-3").trim(), "1000");

    let snap = lab.ctx.path("etcd.snapshot");
    let out = lab.ctx.kforge(&["etcd", "snapshot", "-f", "lab/kforge.yaml", "--out", snap.to_str().unwrap()]).success();
    assert!(out.stdout.contains("revision"), "{}", out.stdout);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777, 0o600);

    // Without --yes nothing happens.
    let refused = lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", snap.to_str().unwrap()]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    // A file that is not a snapshot is refused before anything stops.
    std::fs::write(lab.ctx.path("junk.db"), "not a snapshot").unwrap();
    let junk = lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", "junk.db", "--yes"]);
    assert_eq!(junk.code, 1, "{}", junk.stdout);
    assert!(junk.stderr.contains("not a valid etcd snapshot; nothing was stopped"), "{}", junk.stderr);
    assert_eq!(lab.ssh("lab-3", "systemctl is-active etcd.service").trim(), "active");

    // Disaster: every member's data is gone (the API servers stop with it).
    lab.ssh("lab-1", &format!("{ETCDCTL} put written-after-snapshot yes >/dev/null"));
    let revision = || -> u64 {
        let status = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint status -w json"));
        status
            .split("\"revision\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap()
    };
    let seen = revision();
    for node in ["lab-1", "lab-2", "lab-3"] {
        lab.ssh(node, "systemctl stop kube-apiserver etcd.service; rm -rf /var/lib/etcd");
    }
    let restored =
        lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", snap.to_str().unwrap(), "--yes"]).success();
    assert_eq!(restored.stdout.matches(" is healthy").count(), 3, "{}", restored.stdout);
    for node in ["lab-1", "lab-2", "lab-3"] {
        assert_eq!(count(node).trim(), "1000", "{node}");
    }
    assert_eq!(lab.ssh("lab-1", &format!("{ETCDCTL} get written-after-snapshot --print-value-only")).trim(), "");
    // Kubernetes comes back on the restored data: the Secret written before the
    // snapshot is there, and the nodes are Ready again.
    for node in ["lab-1", "lab-2", "lab-3"] {
        // A first start that fails is left to the unit's Restart=on-failure (the wait
        // below must still see the API back); its journal is printed so the cause shows.
        let (ok, out) = lab.ssh_status(node, "systemctl start kube-apiserver");
        if !ok {
            let journal = lab.ssh_status(node, "journalctl -u kube-apiserver -b --no-pager -n 60").1;
            eprintln!("{node}: kube-apiserver's first start after the restore failed: {out}\n{journal}");
        }
    }
    lab.wait_for(120, "the API back on restored data", || {
        lab.ssh_status("lab-1", "kubectl --kubeconfig /etc/kforge/admin.kubeconfig get secret kforge-test").0
    });
    // The restored revision is ahead of every revision the cluster's informers saw
    // before the wipe (and compacted): back at the snapshot's, they would miss what is
    // written until it passed theirs again — a pod created now would never be scheduled.
    let restored = revision();
    assert!(restored > seen, "revision {restored} after the restore, {seen} before the wipe");
    lab.kubectl("lab-1", "create deployment after-restore --image=kforge.lab/busybox:1 --replicas=2 -- sleep 3600");
    lab.kubectl(
        "lab-1",
        "patch deployment after-restore --type=json -p='[{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/imagePullPolicy\",\"value\":\"Never\"}]'",
    );
    let (rolled_out, said) = lab.ssh_status(
        "lab-1",
        "kubectl --kubeconfig /etc/kforge/admin.kubeconfig rollout status deploy/after-restore --timeout=90s",
    );
    let pods = lab.kubectl("lab-1", "get pods -l app=after-restore -o wide");
    assert!(rolled_out, "a Deployment created after the restore: {said}\n{pods}");
    lab.kubectl("lab-1", "delete deployment after-restore");
}
