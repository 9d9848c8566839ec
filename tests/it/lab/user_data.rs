//! Day 2 for a cluster born from user-data: three hard-way machines boot from the
//! user-data `kforge render` wrote for their nodes (cloud-init, NoCloud; the nodes'
//! artifacts baked into their disks as a cluster image carries them) and converge with
//! no SSH from kforge. Then the same file and engine keep them: `kforge apply` takes
//! them over writing and restarting nothing, a change goes over SSH, a failed user-data
//! shows in status and doctor and is finished by apply, a host set up from the rendered
//! tree by a shell loop is adopted, and a foreign WireGuard unit on the mesh port is
//! named by a dry run and handed over only when the operator says so.
//!
//! One lab for every check (each recorded, the group fails at the end with all).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{Checks, Lab, totals};

const VERSION: &str = "v1.37.2";
const NODES: [&str; 3] = ["lab-1", "lab-2", "lab-3"];

#[test]
fn the_hard_way_boots_from_user_data_and_apply_takes_it_over() {
    let started = Instant::now();
    // Debian 12 here (the other groups run Debian 13): the bootstrap installs the plan's
    // packages at boot from the lab's mirror, as on a provider's bookworm image.
    let lab = Lab::start("hardway", &["--nodes", "3", "--all-public", "--user-data", "--image", "debian-12"]);
    let booted = started.elapsed().as_secs_f64();
    let mut checks = Checks::default();
    checks.run("cloud-init ran the user-data to the end on every machine", || {
        for node in NODES {
            assert!(lab.ssh(node, "cat /etc/os-release").contains("VERSION_ID=\"12\""), "{node} runs Debian 12");
            // Nothing of it was in the image: the bootstrap installed it from the mirror.
            assert!(lab.ssh_status(node, super::KFORGES_PACKAGES).0, "{node}: the bootstrap installed the packages");
            let machine = lab.state.machine(node).unwrap().public_ip.unwrap().to_string();
            let log = std::fs::read_to_string(lab.ctx.path("lab/mirror.log")).unwrap();
            assert!(
                log.lines().any(|l| l.contains(&format!(" {machine} GET ")) && l.contains("libnginx-mod-stream_")),
                "{node} fetched nginx's stream module from the mirror:\n{log}"
            );
            let (_, out) = lab.ssh_status(node, "timeout 300 cloud-init status --wait --long");
            assert!(out.contains("status: done"), "{node}: {out}");
            assert_eq!(lab.ssh(node, "cut -f1 /var/lib/kforge/bootstrap.outcome").trim(), "ok", "{node}");
            let manifest = lab.ssh(node, "cat /var/lib/kforge/manifest.json");
            assert!(manifest.contains("\"by\":\"bootstrap\""), "{node}: {manifest}");
        }
    });
    checks.run("every node Ready from user-data alone, kforge status clean", || {
        let mut status = String::new();
        lab.wait_for(180, "kforge status to pass", || {
            let out = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
            status = out.stdout;
            out.code == 0
        });
        eprintln!(
            "bench: lab up --user-data {booted:.0} s, every node Ready and status clean {:.0} s after lab up began",
            started.elapsed().as_secs_f64()
        );
        assert!(status.contains(&format!("3 of 3 Ready, kubelet {VERSION}")), "{status}");
        assert!(status.contains("3 nodes ran their bootstrap to the end"), "{status}");
        assert!(status.contains("answers kubernetes.default.svc.cluster.local = 10.32.0.1"), "{status}");
    });
    checks.run("a pod on one node reaches a pod on another", || {
        lab.ssh("lab-1", &format!("cat > /tmp/web.yaml <<'EOF'\n{}EOF", super::hardway::WEB));
        lab.kubectl("lab-1", "apply -f /tmp/web.yaml");
        lab.kubectl("lab-1", "rollout status deploy/web --timeout=120s");
        let pods = super::hardway::web_pods(&lab);
        assert!(pods.len() == 2 && pods[0].1 != pods[1].1, "{pods:?}");
        let got = lab.kubectl("lab-1", &format!("exec {} -- wget -qO- http://{}:8080/", pods[0].0, pods[1].2));
        assert_eq!(got.trim(), pods[1].0);
    });
    checks.run("apply takes the hosts over: nothing written, nothing restarted", || {
        const UNITS: &str = "systemctl show -p Id,InvocationID --value wg-quick@kforge0 kforge-firewall etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy";
        let before: Vec<String> = NODES.iter().map(|n| lab.ssh(n, UNITS)).collect();
        let dry = lab.apply(&["--dry-run"]).success().stdout;
        for node in NODES {
            assert!(dry.contains(&format!("{node}: no changes\n  would be taken over: converged by its bootstrap")), "{dry}");
        }
        let t = Instant::now();
        let report = lab.apply_json();
        let takeover = t.elapsed().as_secs_f64();
        assert_eq!(totals(&report), (0, 0), "{report}");
        for h in report["hosts"].as_array().unwrap() {
            assert_eq!(h["takeover"], "from-bootstrap", "{h}");
            assert!(h["artifactsUploaded"].as_array().unwrap().is_empty(), "{h}");
        }
        for (node, before) in NODES.iter().zip(&before) {
            assert_eq!(&lab.ssh(node, UNITS), before, "{node}: a unit was restarted");
        }
        // Taken over once: the hosts' records say apply now, and the next apply is plain.
        let t = Instant::now();
        let text = lab.apply(&[]).success().stdout;
        eprintln!("bench: takeover apply {takeover:.1} s, the next (no-op) apply {:.1} s", t.elapsed().as_secs_f64());
        assert!(!text.contains("taken over") && text.matches(" converged ").count() == 3, "{text}");
        for node in NODES {
            assert!(lab.ssh(node, "cat /var/lib/kforge/manifest.json").contains("\"by\":\"apply\""), "{node}");
        }
    });
    checks.run("a changed label and taint are applied over SSH, and taken off when dropped", || {
        lab.edit_cluster(|c| {
            c.spec.nodes[1].labels.insert("tier".into(), "edge".into());
            c.spec.nodes[1].taints.push("dedicated=edge:PreferNoSchedule".into());
        });
        let report = lab.apply_json();
        let lab2 = &report["hosts"][1];
        assert_eq!(lab2["node"], "lab-2");
        assert!(!lab2["filesChanged"].as_array().unwrap().is_empty(), "{lab2}");
        assert!(lab2["unitsRestarted"].as_array().unwrap().iter().any(|u| u == "kubelet.service"), "{lab2}");
        assert!(lab.ssh("lab-2", "systemctl cat kubelet").contains("tier=edge"), "the kubelet runs with the label");
        // Elsewhere only the list of Node labels on the controller that applies them.
        assert_eq!(report["hosts"][0]["filesChanged"], serde_json::json!(["/etc/kforge/node-labels"]), "{report}");
        assert_eq!(report["hosts"][2]["filesChanged"], serde_json::json!([]), "{report}");
        let tier = || lab.kubectl("lab-1", "get node lab-2 -o jsonpath={.metadata.labels.tier}").trim().to_string();
        lab.wait_for(60, "lab-2 labelled tier=edge", || tier() == "edge");
        // The kubelet's --register-with-taints reaches only a Node that registers: the
        // taint arrives through the API.
        let taints = || lab.kubectl("lab-1", "get node lab-2 -o jsonpath={.spec.taints}");
        lab.wait_for(60, "lab-2 tainted dedicated=edge", || taints().contains("\"key\":\"dedicated\""));
        // Dropped from the file, the label and the taint come off the Node.
        lab.edit_cluster(|c| {
            c.spec.nodes[1].labels.remove("tier");
            c.spec.nodes[1].taints.clear();
        });
        assert!(lab.apply_json()["hosts"].as_array().unwrap().iter().all(|h| h["converged"] == true));
        lab.wait_for(60, "the tier label gone from lab-2", || tier().is_empty());
        lab.wait_for(60, "the taint gone from lab-2", || !taints().contains("dedicated"));
        assert!(lab.ssh("lab-2", "cat /var/lib/kforge/manifest.json").contains("\"by\":\"apply\""));
    });
    checks.run("a user-data with a wrong digest shows in status and doctor", || {
        a_wrong_digest_in_user_data_is_named_by_status_and_doctor(&lab)
    });
    checks.run("hosts set up from the rendered tree by a shell loop are adopted", || {
        a_host_set_up_by_a_shell_loop_is_adopted(&lab)
    });
    checks.run("a foreign wg-quick@wg0 on the mesh port is named, then handed over", || {
        a_foreign_wireguard_unit_is_named_then_handed_over(&lab)
    });
    checks.finish();
}

/// Write `data` to `path` on `node` (over the lab's SSH).
fn put(lab: &Lab, node: &str, path: &str, data: &[u8]) {
    let cfg = lab.ctx.path("lab/ssh_config");
    let mut child = Command::new("ssh")
        .args(["-F", cfg.to_str().unwrap(), node, &format!("cat > {path}")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    assert!(child.wait().unwrap().success(), "writing {path} on {node}");
}

fn a_wrong_digest_in_user_data_is_named_by_status_and_doctor(lab: &Lab) {
    // lab-3's user-data as rendered, with a digest for its kubelet that the binary in
    // its image does not have (the lab's artifacts come from workstation paths, so the
    // rendered check has none): the machine boots it as a new instance (cloud-init
    // clean, then a reboot).
    let user_data = lab.ctx.read("lab/user-data/lab-3/user-data");
    let line = user_data.lines().find(|l| l.trim_start().starts_with("kf_require kubelet ")).expect("kubelet is baked");
    let dest = line.split_whitespace().nth(2).unwrap().to_string();
    assert!(line.contains(&format!("{dest} '' ")), "{line}");
    let wrong =
        user_data.replace(line, &line.replacen(&format!("{dest} ''"), &format!("{dest} {}", "0".repeat(64)), 1));
    put(lab, "lab-3", "/var/lib/cloud/seed/nocloud/user-data", wrong.as_bytes());
    lab.ssh("lab-3", "cloud-init clean");
    lab.ctx.kforge(&["lab", "restart", "lab-3"]).success();
    let (ok, out) = lab.ssh_status("lab-3", "timeout 300 cloud-init status --wait --long");
    assert!(!ok && out.contains("status: error"), "{out}");

    let status = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
    assert_ne!(status.code, 0, "{}", status.stdout);
    let line = status.stdout.lines().find(|l| l.trim_start().starts_with("bootstrap")).unwrap_or_default();
    assert!(
        line.contains("FAIL") && line.contains(&format!("lab-3: bootstrap failed at `check kubelet at {dest}`")),
        "{}",
        status.stdout
    );
    assert!(line.contains("does not match its sha256 0000") && line.contains("cloud-init:"), "{line}");
    let doctor = lab.ctx.kforge(&["doctor", "-f", "lab/kforge.yaml"]);
    assert_ne!(doctor.code, 0);
    assert!(
        doctor.stdout.lines().any(|l| l.contains("bootstrap") && l.contains("lab-3") && l.contains("check kubelet")),
        "{}",
        doctor.stdout
    );
    // apply finishes the node over SSH: the bootstrap left on the host is the right
    // one again, the failure is gone from status.
    let report = lab.apply_json();
    assert_eq!(report["hosts"][2]["converged"], true, "{report}");
    lab.wait_for(120, "kforge status to pass after apply", || {
        lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]).code == 0
    });
}

fn a_host_set_up_by_a_shell_loop_is_adopted(lab: &Lab) {
    // lab-3 loses kforge's record of it (manifest, digests, unit stamps, bootstrap
    // outcome); then a shell loop, as a person or another tool runs it, copies the
    // rendered tree onto it and starts the units with systemctl.
    lab.ctx.kforge(&["render", "-f", "lab/kforge.yaml", "--out", "tree"]).success();
    lab.ssh(
        "lab-3",
        "rm -rf /var/lib/kforge/manifest.json /var/lib/kforge/hash-cache /var/lib/kforge/units /var/lib/kforge/bootstrap.outcome",
    );
    let tree = lab.ctx.path("tree/lab-3");
    let tar = Command::new("tar").args(["-C", tree.to_str().unwrap(), "-c", "."]).output().unwrap();
    assert!(tar.status.success());
    put(lab, "lab-3", "/tmp/tree.tar", &tar.stdout);
    lab.ssh(
        "lab-3",
        "tar -C / --no-same-owner -xf /tmp/tree.tar --exclude=./user-data && systemctl daemon-reload && \
         for u in wg-quick@kforge0 kforge-firewall etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do systemctl enable -q --now $u; done",
    );
    let dry = lab.apply(&["--dry-run"]).success().stdout;
    assert!(dry.contains("lab-3: no changes\n  would be adopted"), "{dry}");
    let report = lab.apply_json();
    assert_eq!(totals(&report), (0, 0), "{report}");
    assert_eq!(report["hosts"][2]["takeover"], "adopted", "{report}");
    assert!(report["hosts"][0].get("takeover").is_none(), "lab-1 was kforge's already: {report}");
    assert!(lab.ssh("lab-3", "cat /var/lib/kforge/manifest.json").contains("\"by\":\"apply\""), "recorded");
    assert_eq!(totals(&lab.apply_json()), (0, 0));
}

fn a_foreign_wireguard_unit_is_named_then_handed_over(lab: &Lab) {
    // Another tool's WireGuard on lab-2, on the mesh port kforge's interface needs.
    lab.ssh(
        "lab-2",
        "systemctl stop wg-quick@kforge0 && umask 077 && printf '[Interface]\\nPrivateKey = %s\\nListenPort = 51820\\nAddress = 10.99.0.1/24\\n' \"$(wg genkey)\" > /etc/wireguard/wg0.conf && systemctl start wg-quick@wg0",
    );
    let dry = lab.apply(&["--dry-run"]);
    assert_ne!(dry.code, 0, "{}", dry.stdout);
    assert!(
        dry.stdout.contains("lab-2: udp/51820 is held by") && dry.stdout.contains("wg-quick@wg0.service"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("--hand-over wg-quick@wg0.service"), "{}", dry.stdout);
    assert!(dry.stdout.contains("restart wg-quick@kforge0.service"), "the dry run shows the rest too: {}", dry.stdout);
    assert_eq!(lab.ssh("lab-2", "systemctl is-active wg-quick@wg0").trim(), "active", "the dry run touched it");
    let refused = lab.apply(&[]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("wg-quick@wg0.service"), "{}", refused.stderr);

    let out = lab.apply(&["--hand-over", "wg-quick@wg0.service", "-o", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let lab2 = &report["hosts"][1];
    assert!(lab2["handedOver"][0].as_str().unwrap().starts_with("stopped and disabled wg-quick@wg0.service"), "{lab2}");
    let (_, wg0) = lab.ssh_status("lab-2", "systemctl is-active wg-quick@wg0; systemctl is-enabled wg-quick@wg0");
    assert!(wg0.starts_with("inactive") && wg0.contains("disabled"), "{wg0}");
    lab.wait_for(120, "kforge status to pass after the hand-over", || {
        lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]).code == 0
    });
}
