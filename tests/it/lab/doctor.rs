//! `kforge doctor` and `kforge certs renew` on the real hardway cluster, run from the
//! hardway lab test (one cluster for every check). The cluster is healthy, then broken
//! the seed operators' way, one thing at a time; doctor must fail the right check,
//! name the node and the cause, and the fix (usually `kforge apply`) must turn it ok.
//!
//! Not staged here, and why: lab machines share one kernel, so one machine's clock
//! cannot be moved alone and swap turned on in one is on in all. `tests/it/doctor.rs`
//! feeds the same judging code the answers such hosts give.

use serde_json::Value;

use super::Lab;
use super::hardway::Workstation;

/// `kforge doctor -o json` with the workstation's kubeconfig (`kforge kubeconfig`'s,
/// written when the workstation joined): (exit code, report).
fn doctor(lab: &Lab) -> (i32, Value) {
    doctor_with_kubeconfig(lab, "admin.kubeconfig")
}

fn doctor_with_kubeconfig(lab: &Lab, kubeconfig: &str) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kforge"))
        .args(["doctor", "-f", "lab/kforge.yaml", "-o", "json"])
        .current_dir(lab.ctx.path(""))
        .env("KUBECONFIG", lab.ctx.path(kubeconfig))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor -o json: {e}\n{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

/// Every diagnosis that is not ok, as `check node: evidence`.
fn problems(report: &Value) -> Vec<String> {
    report["diagnoses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["verdict"] != "ok")
        .map(|d| {
            format!(
                "{} [{}] {}: {} | cause: {} | fix: {}",
                d["check"].as_str().unwrap(),
                d["verdict"].as_str().unwrap(),
                d["node"].as_str().unwrap_or(""),
                d["evidence"].as_str().unwrap(),
                d["cause"].as_str().unwrap_or(""),
                d["fix"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The lab's one standing warning: its machines run cgroup v1 (the workstation's
/// kernel), allowed by `hardway.allowCgroupV1` and said so.
fn only_the_lab_warning(p: &[String]) -> bool {
    p.len() == 1 && p[0].starts_with("cgroups [warn]")
}

fn wait_healthy(lab: &Lab, secs: u64, after: &str) {
    let mut last = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed().as_secs() < secs {
        last = problems(&doctor(lab).1);
        if only_the_lab_warning(&last) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    panic!("doctor still reports problems {secs} s after {after}:\n{}", last.join("\n"));
}

/// The problem lines of `check` that mention every one of `words`.
fn assert_found(p: &[String], check: &str, words: &[&str]) {
    assert!(
        p.iter().any(|l| l.starts_with(&format!("{check} [")) && words.iter().all(|w| l.contains(w))),
        "expected a `{check}` problem mentioning {words:?}; doctor said:\n{}",
        p.join("\n")
    );
}

pub(super) fn kforge_doctor_finds_each_seed_failure_and_its_fix(lab: &Lab) {
    let (code, report) = doctor(lab);
    let p = problems(&report);
    assert!(only_the_lab_warning(&p), "a healthy cluster: all ok but the lab's cgroup v1\n{}", p.join("\n"));
    assert_eq!(code, 1, "warnings only: exit 1");
    let checks: Vec<&str> =
        report["diagnoses"].as_array().unwrap().iter().map(|d| d["check"].as_str().unwrap()).collect();
    for c in [
        "clock",
        "swap",
        "mesh",
        "mesh-mtu",
        "firewall",
        "ports",
        "files",
        "images",
        "certificates",
        "etcd",
        "api",
        "scheduler",
        "pods",
        "coredns",
        "kubeconfig",
    ] {
        assert!(checks.contains(&c), "{c} is checked: {checks:?}");
    }
    doctor_changes_nothing_on_the_hosts(lab);

    // The seed's kubeconfig copied off a node: its server is 127.0.0.1.
    let copied = lab.ctx.read("admin.kubeconfig").replace("https://10.4.0.1:6443", "https://127.0.0.1:6443");
    assert!(copied.contains("127.0.0.1"), "the admin kubeconfig names lab-1's mesh address");
    lab.ctx.write("copied.kubeconfig", &copied);
    let p = problems(&doctor_with_kubeconfig(lab, "copied.kubeconfig").1);
    assert_found(
        &p,
        "kubeconfig",
        &["copied.kubeconfig", "server https://127.0.0.1:6443 is loopback", "kforge kubeconfig --out"],
    );
    lab.ctx.kforge(&["kubeconfig", "-f", "lab/kforge.yaml", "--out", "copied.kubeconfig"]).success();
    assert!(only_the_lab_warning(&problems(&doctor_with_kubeconfig(lab, "copied.kubeconfig").1)));

    // An imported image unpinned on one worker (the kubelet's garbage collection may
    // delete it) and gone from another (no registry serves it back).
    const CTR: &str = "/usr/local/bin/ctr --namespace k8s.io images";
    lab.ssh("lab-2", &format!("{CTR} label kforge.lab/busybox:1 io.cri-containerd.pinned= >/dev/null"));
    lab.ssh("lab-3", &format!("{CTR} rm kforge.lab/busybox:1 >/dev/null"));
    let p = problems(&doctor(lab).1);
    assert_found(&p, "images", &["[warn] lab-2", "not pinned: kforge.lab/busybox:1", "kforge apply pins it"]);
    assert_found(&p, "images", &["[fail] lab-3", "not in containerd: kforge.lab/busybox:1", "kforge apply imports it"]);
    // No file of kforge's changed: apply finds the drift by its recheck and says so.
    let applied = lab.apply_json();
    for (node, h) in [("lab-2", &applied["hosts"][1]), ("lab-3", &applied["hosts"][2])] {
        assert_eq!(h["node"], node);
        assert_eq!(
            h["repaired"],
            serde_json::json!(["import image kforge.lab/busybox:1 into containerd, pinned"]),
            "{h}"
        );
    }
    assert_eq!(applied["hosts"][0]["repaired"], serde_json::json!([]), "lab-1 had nothing to repair");
    wait_healthy(lab, 30, "kforge apply imported and pinned the image again");

    // A missing kube-scheduler configuration: every new pod stays Pending (the seed).
    for n in ["lab-1", "lab-2", "lab-3"] {
        lab.ssh(n, "rm /etc/kubernetes/config/kube-scheduler.yaml && systemctl restart kube-scheduler || true");
    }
    lab.kubectl(
        "lab-1",
        "run doctor-probe --image=kforge.lab/busybox:1 --image-pull-policy=Never --command -- sleep 3600",
    );
    lab.wait_for(90, "doctor to see the Pending pod", || {
        problems(&doctor(lab).1).iter().any(|l| l.starts_with("pods [") && l.contains("default/doctor-probe"))
    });
    let p = problems(&doctor(lab).1);
    assert_found(&p, "pods", &["default/doctor-probe", "never looked at by a scheduler"]);
    assert_found(&p, "files", &["lab-2", "missing: /etc/kubernetes/config/kube-scheduler.yaml", "kforge apply"]);
    assert_found(&p, "services", &["kube-scheduler.service", "no such file or directory"]);
    assert_found(&p, "scheduler", &["kube-scheduler lease"]);
    lab.apply(&[]).success();
    wait_healthy(lab, 120, "kforge apply restored the scheduler's configuration");
    lab.kubectl("lab-1", "delete pod doctor-probe --wait=false");

    // "My IP only": a rule that drops one node's mesh traffic.
    lab.ssh("lab-1", "nft insert rule inet kforge input iifname kforge0 ip saddr 10.4.0.3 drop");
    let p = problems(&doctor(lab).1);
    assert_found(&p, "firewall", &["lab-1", "differs from the plan", "input: 13 rules loaded, 12 planned"]);
    assert_found(&p, "ports", &["lab-3 → lab-1", "kubelet 10250", "lab-1: table inet kforge, changed by hand"]);
    // The rules file is unchanged: apply finds the drift by the firewall's recheck.
    let applied = lab.apply_json();
    assert_eq!(
        applied["hosts"][0]["repaired"],
        serde_json::json!([
            "reload kforge-firewall.service: table inet kforge differs from the plan (a rule added or removed by hand)"
        ]),
        "{applied}"
    );
    assert_eq!(applied["hosts"][0]["unitsReloaded"], serde_json::json!(["kforge-firewall.service"]), "{applied}");
    for h in &applied["hosts"].as_array().unwrap()[1..] {
        assert_eq!(h["repaired"], serde_json::json!([]), "only lab-1's table was changed: {h}");
    }
    wait_healthy(lab, 60, "kforge apply reloaded the firewall from the plan");

    // An MTU black hole: one node's underlay carries less than the mesh needs.
    lab.ssh("lab-2", "ip link set dev eth0 mtu 1400");
    let p = problems(&doctor(lab).1);
    assert_found(
        &p,
        "mesh-mtu",
        &["→ lab-2", "1420-byte packets", "lab-2's underlay eth0 has MTU 1400", "spec.mesh.mtu"],
    );
    lab.edit_cluster(|c| {
        c.spec.mesh.mtu = 1320;
        c.spec.mesh.underlay_mtu = 1400;
    });
    lab.apply(&[]).success();
    assert!(lab.ssh("lab-1", "ip link show kforge0").contains("mtu 1320"), "apply sets a changed mesh MTU");
    wait_healthy(lab, 90, "the mesh MTU was lowered to fit");
    lab.ssh("lab-2", "ip link set dev eth0 mtu 1500");
    lab.edit_cluster(|c| {
        c.spec.mesh.mtu = 1420;
        c.spec.mesh.underlay_mtu = 1500;
    });
    lab.apply(&[]).success();
    wait_healthy(lab, 90, "the lab's MTU was put back");

    // An expired certificate where kforge's should be.
    lab.ssh("lab-3", &format!("cat > /etc/etcd/kforge-client.crt <<'EOF'\n{}EOF", expired_certificate()));
    let p = problems(&doctor(lab).1);
    assert_found(&p, "certificates", &["lab-3", "/etc/etcd/kforge-client.crt expired on 2025-01-01", "kforge apply"]);
    lab.apply(&[]).success();
    wait_healthy(lab, 30, "kforge apply put the bundle's certificate back");

    // etcd: one member down keeps quorum (a warning), two lose it (a failure).
    lab.ssh("lab-3", "systemctl stop etcd");
    let p = problems(&doctor(lab).1);
    assert_found(&p, "etcd", &["[warn] lab-3", "2 of 3 members answer; quorum (2) kept"]);
    lab.ssh("lab-2", "systemctl stop etcd");
    let p = problems(&doctor(lab).1);
    assert_found(
        &p,
        "etcd",
        &["[fail] lab-2, lab-3", "1 of 3 members answer, 2 needed for quorum", "refuses every write"],
    );
    assert_found(&p, "api", &["[-]etcd"]);
    lab.apply(&[]).success();
    wait_healthy(lab, 240, "kforge apply started the stopped etcd members");

    // A node resolving through a loopback stub: CoreDNS would forward to itself.
    lab.ssh("lab-2", "cp /etc/resolv.conf /root/resolv.conf.kept && echo 'nameserver 127.0.0.53' > /etc/resolv.conf");
    let p = problems(&doctor(lab).1);
    assert_found(&p, "resolv.conf", &["lab-2", "127.0.0.53", "forwarding loop"]);
    lab.ssh("lab-2", "cp /root/resolv.conf.kept /etc/resolv.conf");
    wait_healthy(lab, 30, "resolv.conf was put back");
}

/// A marker before, then every file under the trees kforge and the components own:
/// nothing may be newer after a doctor run (the components' own state directories,
/// which they write all the time, are not among them).
fn doctor_changes_nothing_on_the_hosts(lab: &Lab) {
    let trees = "/etc /usr/local /opt /var/lib/kforge /var/lib/kubernetes";
    let snapshot = |n: &str| {
        lab.ssh(n, &format!("find {trees} -xdev -type f -printf '%p %s %T@\\n' 2>/dev/null | sort | sha256sum"))
    };
    let before: Vec<String> = ["lab-1", "lab-2", "lab-3"].iter().map(|n| snapshot(n)).collect();
    let (_, report) = doctor(lab);
    assert!(only_the_lab_warning(&problems(&report)));
    let after: Vec<String> = ["lab-1", "lab-2", "lab-3"].iter().map(|n| snapshot(n)).collect();
    assert_eq!(before, after, "doctor changed a file on a host");
}

/// A certificate that expired on 2025-01-01 (self-signed, as a stale copy would be).
fn expired_certificate() -> String {
    let mut params = rcgen::CertificateParams::new(vec!["kforge-client".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// Each kforge unit on each node: when it last entered `active`, and how many times
/// systemd restarted it on its own (`NRestarts`: after its process exited, never for a
/// `systemctl restart`).
fn unit_starts(lab: &Lab) -> Vec<(String, String, u64)> {
    let units = "etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy containerd kforge-firewall kforge-api-balancer";
    ["lab-1", "lab-2", "lab-3"]
        .iter()
        .flat_map(|n| {
            let out = lab.ssh(
                n,
                &format!("for u in {units}; do echo \"$u $(systemctl show -p ActiveEnterTimestampMonotonic --value $u) $(systemctl show -p NRestarts --value $u)\"; done"),
            );
            out.lines()
                .filter_map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    Some((format!("{n} {}", w.first()?), w.get(1)?.to_string(), w.get(2)?.parse().ok()?))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The serial of the certificate an API server serves, seen over the mesh.
fn served_serial(ws: &Workstation, ip: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ws.ns.ns,
            "sh",
            "-c",
            &format!("echo | timeout 10 openssl s_client -connect {ip}:6443 2>/dev/null | openssl x509 -noout -serial"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("serial=").to_string()
}

pub(super) fn kforge_certs_renew_serves_the_new_certificate_and_restarts_nothing_else(lab: &Lab, ws: &Workstation) {
    let check = lab.ctx.kforge(&["certs", "check", "-f", "lab/kforge.yaml", "-o", "json"]).success();
    let rows: Value = serde_json::from_str(&check.stdout).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["id"] == "apiserver/lab-2").unwrap().clone();
    assert_eq!(row["status"], "ok");
    let before = served_serial(ws, "10.4.0.2");
    assert_eq!(before, row["serial"].as_str().unwrap(), "lab-2 serves the bundle's certificate");
    let starts = unit_starts(lab);

    let out = lab.ctx.kforge(&["certs", "renew", "-f", "lab/kforge.yaml", "apiserver/lab-2"]).success();
    assert!(out.stderr.contains(&format!("re-issued apiserver/lab-2: serial {before} → ")), "{}", out.stderr);
    let rows: Value = serde_json::from_str(
        &lab.ctx.kforge(&["certs", "check", "-f", "lab/kforge.yaml", "-o", "json"]).success().stdout,
    )
    .unwrap();
    let renewed = rows.as_array().unwrap().iter().find(|r| r["id"] == "apiserver/lab-2").unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(renewed, before);
    let mut served = String::new();
    lab.wait_for(60, "lab-2 to serve the renewed certificate", || {
        served = served_serial(ws, "10.4.0.2");
        served == renewed
    });
    assert_eq!(
        served_serial(ws, "10.4.0.1"),
        rows.as_array().unwrap().iter().find(|r| r["id"] == "apiserver/lab-1").unwrap()["serial"].as_str().unwrap()
    );
    // kforge restarted lab-2's kube-apiserver and nothing else: its own report says so,
    // and on the hosts every other unit either kept its start time or was restarted by
    // systemd after its process exited (a kube-scheduler or controller-manager that
    // leads through lab-2's API server exits when that server is gone for seconds and
    // loses its lease: upstream's behaviour, counted by NRestarts, not a restart kforge made).
    let report: Vec<&str> = out.stdout.lines().filter(|l| l.contains(" converged ")).collect();
    assert_eq!(report.len(), 3, "{}", out.stdout);
    for line in &report {
        let restarted = line.split_whitespace().nth(5).unwrap_or("");
        let want = if line.starts_with("lab-2 ") { "kube-apiserver.service" } else { "-" };
        assert_eq!(restarted, want, "kforge restarts only what reads the renewed certificate: {line}");
    }
    let after = unit_starts(lab);
    let mut deliberate = Vec::new();
    for (unit, started, automatic) in &after {
        let (_, was_started, was_automatic) =
            starts.iter().find(|(u, ..)| u == unit).expect("same units before and after");
        if started != was_started && automatic == was_automatic {
            deliberate.push(unit.as_str());
        }
    }
    assert_eq!(deliberate, ["lab-2 kube-apiserver"], "only lab-2's kube-apiserver was restarted on purpose");
    wait_healthy(lab, 60, "the renewed API server certificate");
}
