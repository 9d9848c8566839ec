//! The hardway distribution on lab machines: a real 3-member etcd (Debian's etcd on
//! the workstation, uploaded as the artifact) formed by kforge over the mesh with
//! mTLS; snapshot and restore; every unit checked by `systemd-analyze verify` on a
//! lab machine. The Kubernetes binaries cannot be obtained here: the lab installs
//! kforge's named stand-in for them, which kforge never starts.

use super::{Lab, totals};
use crate::util::run;

impl Lab {
    /// Run on a machine; (exit status ok, stdout + stderr) instead of panicking.
    fn ssh_status(&self, node: &str, cmd: &str) -> (bool, String) {
        let cfg = self.ctx.path("lab/ssh_config");
        let out = std::process::Command::new("ssh").args(["-F", cfg.to_str().unwrap(), node, cmd]).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn up_hardway() -> Lab {
        let lab = Lab::up_example("hardway", 3, &[]);
        let report = lab.apply_json();
        for h in report["hosts"].as_array().unwrap() {
            assert_eq!(h["converged"], true, "{h}");
        }
        lab
    }
}

const ETCDCTL: &str = "set -a; . /etc/etcd/etcdctl.env; set +a; etcdctl";

#[test]
fn three_controllers_form_a_healthy_etcd_over_mtls_on_the_mesh() {
    let lab = Lab::up_hardway();
    let ips = super::mesh_ips(&lab);

    // Healthy, asked with kforge's client certificate, every endpoint a mesh address.
    let health = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint health --cluster 2>&1"));
    for (node, ip) in &ips {
        assert!(health.contains(&format!("https://{ip}:2379 is healthy")), "{node}: {health}");
    }
    // Peers are mesh addresses, and the peer connections between members are too.
    let members = lab.ssh("lab-2", &format!("{ETCDCTL} member list"));
    for (node, ip) in &ips {
        assert!(members.contains(&format!("{node}, https://{ip}:2380")), "{members}");
    }
    let peer_conns = lab.ssh("lab-1", "ss -Htn state established '( sport = :2380 or dport = :2380 )'");
    assert!(!peer_conns.trim().is_empty(), "no peer connections seen");
    for line in peer_conns.lines() {
        let addrs: Vec<&str> = line.split_whitespace().filter(|w| w.contains(':')).collect();
        for a in addrs {
            let ip = a.rsplit_once(':').unwrap().0;
            assert!(ips.iter().any(|(_, m)| m == ip), "peer traffic off the mesh: {line}");
        }
    }

    // A client without a certificate is refused; so is one whose certificate comes
    // from another CA (made here with openssl, as an attacker would).
    let target = format!("--endpoints=https://{}:2379 --cacert=/etc/etcd/ca.crt", ips[1].1);
    let (ok, out) = lab.ssh_status("lab-1", &format!("ETCDCTL_API=3 etcdctl {target} --command-timeout=5s get foo"));
    assert!(!ok, "etcd answered a client without a certificate: {out}");
    let dir = lab.ctx.path("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    let d = |f: &str| dir.join(f).display().to_string();
    // openssl with its arguments written as on a command line (paths have no spaces).
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
        &format!("ETCDCTL_API=3 etcdctl {target} --cert=/tmp/f.crt --key=/tmp/f.key --command-timeout=5s get foo"),
    );
    assert!(!ok, "etcd answered a client certificate from another CA: {out}");
    // The same command with kforge's certificate works: the refusals were about trust.
    lab.ssh(
        "lab-1",
        &format!("ETCDCTL_API=3 etcdctl {target} --cert=/etc/etcd/kforge-client.crt --key=/etc/etcd/kforge-client.key --command-timeout=5s get foo"),
    );

    // From the internet, etcd's ports are closed on every node.
    for (node, _) in &ips {
        let ip = lab.public_ip(node);
        for port in [2379, 2380] {
            let open = std::net::TcpStream::connect_timeout(
                &format!("{ip}:{port}").parse().unwrap(),
                std::time::Duration::from_secs(2),
            )
            .is_ok();
            assert!(!open, "{node}: {port}/tcp answers on the public address");
        }
    }

    // `kforge status` checks all of it for real and names the stand-ins.
    let status = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]).success().stdout;
    for check in ["mesh", "firewall", "certificates", "services", "etcd"] {
        assert!(status.lines().any(|l| l.trim_start().starts_with(check) && l.contains(" ok ")), "{check}: {status}");
    }
    assert!(status.contains("3 of 3 members healthy"), "{status}");
    assert!(
        status.contains("not running") && status.contains("kube-apiserver") && status.contains("kubelet"),
        "{status}"
    );
    // Stand-ins are installed, never started.
    assert_eq!(lab.ssh("lab-1", "systemctl is-active kube-apiserver kubelet || true").trim(), "inactive\ninactive");
    assert!(lab.ssh("lab-1", "/usr/local/bin/kube-apiserver --version").contains("NOT kube-apiserver"));

    // Converged means a second apply does nothing.
    assert_eq!(totals(&lab.apply_json()), (0, 0));
}

#[test]
fn a_thousand_keys_survive_snapshot_wipe_and_restore() {
    let lab = Lab::up_hardway();
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

    // Disaster: every member's data is gone.
    for node in ["lab-1", "lab-2", "lab-3"] {
        lab.ssh(node, "systemctl stop etcd.service; rm -rf /var/lib/etcd");
    }
    // Without --yes nothing happens.
    let refused = lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", snap.to_str().unwrap()]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(lab.ssh("lab-1", "systemctl is-active etcd.service || true").trim(), "inactive");

    let restored =
        lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", snap.to_str().unwrap(), "--yes"]).success();
    assert_eq!(restored.stdout.matches(" is healthy").count(), 3, "{}", restored.stdout);
    for node in ["lab-1", "lab-2", "lab-3"] {
        assert_eq!(count(node).trim(), "1000", "{node}");
    }
    assert_eq!(lab.ssh("lab-2", &format!("{ETCDCTL} get key777 --print-value-only")).trim(), "value777");

    // Restoring over a live cluster keeps the data it replaces.
    lab.ssh("lab-1", &format!("{ETCDCTL} put written-after-snapshot yes >/dev/null"));
    let again =
        lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", snap.to_str().unwrap(), "--yes"]).success();
    assert_eq!(
        again.stdout.matches("previous data kept in /var/lib/etcd.before-restore-").count(),
        3,
        "{}",
        again.stdout
    );
    assert_eq!(lab.ssh("lab-1", &format!("{ETCDCTL} get written-after-snapshot --print-value-only")).trim(), "");
    assert_eq!(count("lab-1").trim(), "1000");
    // A file that is not a snapshot is refused before anything stops.
    std::fs::write(lab.ctx.path("junk.db"), "not a snapshot").unwrap();
    let junk = lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", "junk.db", "--yes"]);
    assert_eq!(junk.code, 1, "{}", junk.stdout);
    assert!(junk.stderr.contains("not a valid etcd snapshot; nothing was stopped"), "{}", junk.stderr);
    assert_eq!(lab.ssh("lab-3", "systemctl is-active etcd.service").trim(), "active");
}

#[test]
fn every_rendered_unit_passes_systemd_analyze_verify_on_a_lab_machine() {
    let lab = Lab::up_hardway();
    let plan: serde_json::Value =
        serde_json::from_str(&lab.ctx.kforge(&["plan", "-f", "lab/kforge.yaml", "-o", "json"]).success().stdout)
            .unwrap();
    let node = &plan["nodes"][0];
    let units: Vec<String> = node["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["files"].as_array().unwrap().iter())
        .map(|f| f["path"].as_str().unwrap().to_string())
        .filter(|p| p.starts_with("/etc/systemd/system/") && p.ends_with(".service"))
        .collect();
    for expected in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "containerd",
        "kforge-healthz",
    ] {
        assert!(units.contains(&format!("/etc/systemd/system/{expected}.service")), "{expected} missing: {units:?}");
    }
    // Apply installed every unit and every binary (real etcd, stand-ins for the rest).
    let (ok, out) = lab.ssh_status("lab-1", &format!("systemd-analyze verify {} 2>&1", units.join(" ")));
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    assert!(!out.contains("is not executable") && !out.contains("Unknown"), "{out}");

    // The nginx /healthz proxy is real and running; its upstream (a stand-in) is not,
    // which it reports instead of claiming health.
    let code = lab.ssh("lab-1", "timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080; printf \"GET /healthz HTTP/1.0\\r\\n\\r\\n\" >&3; head -1 <&3'");
    assert!(code.starts_with("HTTP/1.1 502"), "{code}");

    // explain on the real files: the learner's view of what was applied.
    let explained = lab.ctx.kforge(&["explain", "-f", "lab/kforge.yaml", "lab-2", "etcd.service"]).success().stdout;
    assert!(explained.contains("--peer-client-cert-auth"), "{explained}");
    let remote = lab.ssh("lab-2", "cat /etc/systemd/system/etcd.service");
    for line in remote.lines() {
        assert!(explained.contains(&format!("| {line}")), "explain shows other content than the host has: {line}");
    }
}
