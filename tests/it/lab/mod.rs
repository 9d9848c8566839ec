//! `kforge lab` + `kforge apply` on real machines: systemd-nspawn containers with
//! systemd and sshd, in network namespaces, reached over real OpenSSH. K3s itself
//! cannot be obtained here: `lab/bin/k3s` is kforge's named stand-in
//! (kforge-k3s-stand-in), which checks the files K3s would read and listens on the
//! mesh — install mechanics only, never a cluster.
//!
//! These tests run one at a time (nextest test group `lab`; a lock here for plain
//! `cargo test`), each with its own lab, torn down even when the test fails.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kforge_lab::LabState;

use crate::util::{Output, TestContext, run};

mod doctor;
mod faults;
mod gitops;
mod hardway;
mod nodes;
mod upgrade;
mod user_data;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The checks of a group run against one lab: each runs whatever the others did, a
/// failure is recorded and the next goes on, and `finish` fails with all of them (one
/// failure must not hide the rest).
#[derive(Default)]
struct Checks {
    ran: usize,
    failed: Vec<String>,
}

impl Checks {
    fn run(&mut self, name: &str, check: impl FnOnce()) {
        self.ran += 1;
        let started = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            Ok(()) => eprintln!("check ok ({:.0} s): {name}", started.elapsed().as_secs_f64()),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("check FAILED ({:.0} s): {name}: {why}", started.elapsed().as_secs_f64());
                self.failed.push(format!("{name}: {why}"));
            }
        }
    }

    fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} checks failed:\n{}",
            self.failed.len(),
            self.ran,
            self.failed.join("\n\n")
        );
    }
}

/// No command a test runs on a machine waits longer than this: a wait the command
/// itself left unbounded (a pod deletion whose kubelet is gone) fails the check
/// instead of hanging the whole group until CI's own limit.
const SSH_BOUND: &str = "600";

struct Lab {
    ctx: TestContext,
    state: LabState,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Lab {
    /// `kforge lab up` with the k3s stand-in placed where the lab example expects k3s.
    fn up(nodes: usize, behind_nat: &[&str]) -> Lab {
        let lab = Lab::up_example("k3s", nodes, behind_nat);
        lab.install_k3s_stand_in();
        lab
    }

    /// kforge's K3s stand-in at lab/bin/k3s, and the cluster file saying it is one (so
    /// no K3s release version is asked of it).
    fn install_k3s_stand_in(&self) {
        std::fs::create_dir_all(self.ctx.path("lab/bin")).unwrap();
        std::fs::copy(stand_in(), self.ctx.path("lab/bin/k3s")).unwrap();
        self.edit_cluster(|c| {
            let k3s = c.spec.artifacts.k3s.as_mut().expect("the K3s lab example names lab/bin/k3s");
            k3s.stand_in = Some("no K3s binary can be obtained on kforge's build machines".into());
        });
    }

    /// `kforge lab up --example EXAMPLE --nodes N`, with exactly `behind_nat` behind NAT.
    fn up_example(example: &str, nodes: usize, behind_nat: &[&str]) -> Lab {
        let n = nodes.to_string();
        let mut args = vec!["--nodes", &n];
        if behind_nat.is_empty() {
            args.push("--all-public");
        }
        for m in behind_nat {
            args.extend(["--behind-nat", m]);
        }
        Lab::start(example, &args)
    }

    /// `kforge lab up --example EXAMPLE ARGS…`: the lab torn down by Drop whatever happens.
    fn start(example: &str, extra: &[&str]) -> Lab {
        let serial = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let ctx = TestContext::new();
        let mut args = vec!["lab", "up", "--example", example];
        args.extend_from_slice(extra);
        if example == "hardway" {
            // Real kubelets: the lab sets their kernel-wide sysctls, and lab down restores them.
            args.push("--host-sysctls");
        }
        let out = ctx.kforge(&args);
        if out.code != 0 {
            let _ = ctx.kforge(&["lab", "down"]);
            panic!("lab up failed:\n{}", out.stderr);
        }
        let state = LabState::load(&ctx.path("lab")).unwrap();
        // From here on, whatever panics, Drop takes the lab down.
        Lab { ctx, state, _serial: serial }
    }

    /// Change the lab's cluster file through its types, as an operator's edit would.
    fn edit_cluster(&self, change: impl FnOnce(&mut kforge_core::spec::Cluster)) {
        let path = "lab/kforge.yaml";
        let mut cluster = kforge_core::spec::parse(path, &self.ctx.read(path)).expect("the lab file is valid").cluster;
        change(&mut cluster);
        self.ctx.write(path, &serde_saphyr::to_string(&cluster).unwrap());
    }

    fn apply(&self, extra: &[&str]) -> Output {
        let mut args = vec!["apply", "-f", "lab/kforge.yaml"];
        args.extend_from_slice(extra);
        self.ctx.kforge(&args)
    }

    fn apply_json(&self) -> serde_json::Value {
        let out = self.apply(&["-o", "json"]);
        assert_eq!(out.code, 0, "apply failed:\n{}\n{}", out.stdout, out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// Run a shell command on a machine over the lab's SSH config.
    fn ssh(&self, node: &str, cmd: &str) -> String {
        let cfg = self.ctx.path("lab/ssh_config");
        run("timeout", &[SSH_BOUND, "ssh", "-F", cfg.to_str().unwrap(), node, cmd])
    }

    /// Run, on every machine, the bootstrap script apply left there (the same script
    /// cloud-init runs) and check it changes nothing on a converged host: no file newer
    /// than before (but its own record that it ran, bootstrap.outcome), no unit
    /// restarted or reloaded.
    fn rerunning_the_bootstrap_changes_nothing(&self) {
        const UNITS: &str = r#"for f in /var/lib/kforge/units/*.inputs; do u=${f##*/}; u=${u%.inputs}; echo "$u $(systemctl show -p InvocationID --value "$u")"; done"#;
        for m in &self.state.machines {
            let before = self.ssh(&m.name, UNITS);
            assert!(before.lines().count() >= 3, "{}: units with recorded inputs: {before}", m.name);
            let out = self.ssh(
                &m.name,
                "touch /run/kforge-before-bootstrap && sleep 1 && bash /var/lib/kforge/bootstrap.sh 2>&1 && \
                 echo NEWER: && for d in /etc /usr/local /opt/cni /var/lib/kforge; do [ ! -d $d ] || find $d -newer /run/kforge-before-bootstrap -type f ! -path /var/lib/kforge/bootstrap.outcome; done",
            );
            let (log, newer) = out.split_once("NEWER:").unwrap_or((&out, "?"));
            assert!(log.contains("bootstrap finished"), "{}: {out}", m.name);
            assert!(!log.contains("KF restarted") && !log.contains("KF reloaded"), "{}: {log}", m.name);
            if !newer.trim().is_empty() {
                // What could have made it redo a step: the kubelet's image garbage
                // collection or disk-pressure eviction (imported images are pinned
                // against both), and how full the image filesystem is.
                let why = self.ssh(
                    &m.name,
                    "df -h /var/lib/containerd; journalctl -u kubelet --no-pager 2>/dev/null | grep -iE 'garbage|evict|disk|remov.*image' | tail -n 20",
                );
                panic!(
                    "{}: the bootstrap changed files:\n{newer}\nbootstrap log:\n{log}\nkubelet and disk:\n{why}",
                    m.name
                );
            }
            assert_eq!(self.ssh(&m.name, UNITS), before, "{}: a unit was restarted", m.name);
        }
    }

    /// Run on a machine; (exit status ok, stdout + stderr) instead of panicking.
    fn ssh_status(&self, node: &str, cmd: &str) -> (bool, String) {
        let cfg = self.ctx.path("lab/ssh_config");
        let out = std::process::Command::new("timeout")
            .args([SSH_BOUND, "ssh", "-F", cfg.to_str().unwrap(), node, cmd])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// kubectl on a controller with its admin kubeconfig.
    fn kubectl(&self, node: &str, args: &str) -> String {
        self.ssh(node, &format!("kubectl --kubeconfig /etc/kforge/admin.kubeconfig {args}"))
    }

    /// Poll `check` every second until it holds or `secs` pass; panics with `what`.
    fn wait_for(&self, secs: u64, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check() {
            assert!(Instant::now() < deadline, "waited {secs} s for {what}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn public_ip(&self, node: &str) -> String {
        self.state.machine(node).unwrap().public_ip.unwrap().to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.ctx.path("lab/lab.json").exists() {
            return; // the test took it down itself
        }
        // The lab as it is now: a test may have added machines.
        let now = LabState::load(&self.ctx.path("lab")).ok();
        let out = self.ctx.kforge(&["lab", "down"]);
        let left = kforge_lab::leftovers(now.as_ref().unwrap_or(&self.state));
        if !std::thread::panicking() {
            assert_eq!(out.code, 0, "lab down failed: {}", out.stderr);
            assert!(left.is_empty(), "lab down left: {left:?}");
        }
    }
}

/// The k3s stand-in, built beside `kforge` by a workspace build (scripts/test).
fn stand_in() -> std::path::PathBuf {
    let kforge = std::path::Path::new(env!("CARGO_BIN_EXE_kforge"));
    let p = kforge.with_file_name("kforge-k3s-stand-in");
    assert!(p.exists(), "{} missing: build the workspace (cargo build --workspace)", p.display());
    p
}

/// Mesh address of every node, from the plan.
fn mesh_ips(lab: &Lab) -> Vec<(String, String)> {
    let plan: serde_json::Value =
        serde_json::from_str(&lab.ctx.kforge(&["plan", "-f", "lab/kforge.yaml", "-o", "json"]).success().stdout)
            .unwrap();
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap().to_string(), n["meshIp"].as_str().unwrap().to_string()))
        .collect()
}

fn totals(report: &serde_json::Value) -> (usize, usize) {
    let hosts = report["hosts"].as_array().unwrap();
    let count = |key: &str| hosts.iter().map(|h| h[key].as_array().unwrap().len()).sum::<usize>();
    (
        count("filesAdded") + count("filesChanged") + count("filesRemoved"),
        count("unitsRestarted") + count("unitsReloaded"),
    )
}

#[test]
fn apply_converges_the_lab_and_a_second_apply_touches_nothing() {
    // Two machines behind NAT: they cannot dial each other, so lab-1 relays between them.
    let lab = Lab::up(4, &["lab-3", "lab-4"]);
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
        assert_eq!(h["userspaceWireguard"], true, "this kernel has no WireGuard module: {h}");
        assert!(h["artifactsUploaded"].as_array().unwrap().iter().any(|a| a == "/usr/local/bin/boringtun-cli"));
    }

    // Every node reaches every other node's mesh address: TCP to its sshd, over the
    // mesh, including lab-3 behind NAT (relayed through lab-1 where needed).
    let ips = mesh_ips(&lab);
    for (from, _) in &ips {
        for (to, ip) in &ips {
            let banner = lab.ssh(from, &format!("timeout 10 bash -c 'exec 3<>/dev/tcp/{ip}/22; head -c 8 <&3'"));
            assert!(banner.starts_with("SSH-2.0"), "{from} cannot reach {to} ({ip}) over the mesh: {banner:?}");
        }
    }

    let relay = lab.ssh("lab-3", "wg show kforge0 allowed-ips");
    let via_lab1 = relay.lines().find(|l| l.contains("10.4.0.1/32")).unwrap_or_default();
    assert!(via_lab1.contains("10.4.0.4/32"), "lab-3 reaches lab-4 through lab-1: {relay}");
    assert!(!relay.lines().any(|l| l.trim_end().ends_with("10.4.0.4/32") && !l.contains("10.4.0.1/32")), "{relay}");

    // K3s install mechanics, through the stand-in: the server listens on its mesh
    // address with kforge's CAs in place, both agents joined it over the mesh.
    let server = lab.ssh("lab-1", "systemctl is-active k3s.service; cat /run/k3s-stand-in/status");
    assert!(
        server.contains("active\n")
            && server.contains("custom-cas=present")
            && server.contains("listening=10.4.0.1:6443"),
        "{server}"
    );
    for agent in ["lab-2", "lab-3", "lab-4"] {
        let status = lab.ssh(agent, "systemctl is-active k3s-agent.service; cat /run/k3s-stand-in/status");
        assert!(status.contains("active\n") && status.contains("joined=10.4.0.1:6443"), "{agent}: {status}");
    }
    let tokens =
        lab.ssh("lab-2", "stat -c %a /etc/kforge/k3s/token /etc/rancher/k3s/config.yaml /etc/wireguard/kforge0.conf");
    assert_eq!(tokens.split_whitespace().collect::<Vec<_>>(), ["600", "600", "600"], "secrets are 0600 on hosts");

    // `kforge status` checks the same for real: every pair over the mesh (relayed pairs
    // included), the firewall, the certificates on disk, the (stand-in) K3s units.
    let status = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(status.contains("12 of 12 node pairs reach each other"), "{status}");
    // The stand-in is named as what it is: no Kubernetes runs in this lab.
    assert!(status.contains("not running   -     k3s (stand-ins, not the real programs; not counted)"), "{status}");
    assert!(status.contains("is kforge-k3s-stand-in, not K3s"), "{status}");
    assert!(status.contains("k3s-agent.service 3/3") && status.contains("k3s.service 1/1"), "{status}");
    assert!(!status.contains("etcd"), "K3s embeds its etcd; kforge does not check it: {status}");
    // Stop one node's firewall and status says so, exits non-zero, names the node.
    lab.ssh("lab-2", "nft delete table inet kforge");
    let broken = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
    assert_eq!(broken.code, 2, "a failed check: exit 2\n{}", broken.stdout);
    assert!(broken.stdout.contains("firewall      FAIL    table inet kforge missing on lab-2"), "{}", broken.stdout);
    lab.ssh("lab-2", "systemctl restart kforge-firewall.service");

    // A second apply writes zero files and restarts zero units, and leaves kforge's own
    // state on the hosts as it was: no file under /var/lib/kforge written (the host's
    // bootstrap script, manifest, digest cache, unit stamps keep mtime and inode).
    let state = "find /var/lib/kforge -type f -printf '%p %T@ %i\\n' | sort";
    let before: Vec<String> = lab.state.machines.iter().map(|m| lab.ssh(&m.name, state)).collect();
    let again = lab.apply_json();
    assert_eq!(totals(&again), (0, 0), "second apply changed something: {again}");
    for (m, before) in lab.state.machines.iter().zip(&before) {
        assert_eq!(&lab.ssh(&m.name, state), before, "a no-op apply wrote kforge's state on {}", m.name);
    }
    lab.rerunning_the_bootstrap_changes_nothing();
    for h in again["hosts"].as_array().unwrap() {
        assert!(h["artifactsUploaded"].as_array().unwrap().is_empty(), "{h}");
    }

    // --dry-run after editing one node's labels, switching IP forwarding off by hand on
    // the relay and inserting a rule into lab-3's loaded firewall table (no file of
    // kforge's changes for either), shows exactly those, and touches nothing.
    lab.edit_cluster(|c| {
        c.spec.nodes[1].labels.insert("tier".into(), "edge".into());
    });
    lab.ssh("lab-1", "sysctl -qw net.ipv4.ip_forward=0");
    lab.ssh("lab-3", "nft insert rule inet kforge input iifname kforge0 ip saddr 10.4.0.2 drop");
    let dry = lab.apply(&["--dry-run"]).success().stdout;
    const FORWARDING: &str = "apply kernel settings (skipped when forwarding is already on)";
    const FIREWALL: &str =
        "reload kforge-firewall.service: table inet kforge differs from the plan (a rule added or removed by hand)";
    assert_eq!(
        dry,
        format!(
            "lab-1: 0 file changes, 0 unit restarts, 1 repair\n  ! {FORWARDING}  (undone outside kforge: repair)\n\
             lab-2: 1 file change, 1 unit restart\n  ~ /etc/rancher/k3s/config.yaml\n  restart k3s-agent.service\n\
             lab-3: 0 file changes, 0 unit restarts, 1 reload, 1 repair\n  ! {FIREWALL}  (undone outside kforge: repair)\n  reload kforge-firewall.service\n\
             lab-4: no changes\ndry run: nothing was changed\n"
        )
    );
    assert!(!lab.ssh("lab-2", "cat /etc/rancher/k3s/config.yaml").contains("tier=edge"), "dry run wrote the file");
    assert_eq!(lab.ssh("lab-1", "sysctl -n net.ipv4.ip_forward").trim(), "0", "dry run repaired");
    assert!(lab.ssh("lab-3", "nft list chain inet kforge input").contains("10.4.0.2 drop"), "dry run reloaded");
    let applied = lab.apply_json();
    assert_eq!(totals(&applied), (1, 2), "the label's file and restart, and lab-3's firewall reload");
    assert!(lab.ssh("lab-2", "cat /etc/rancher/k3s/config.yaml").contains("tier=edge"));
    let repaired: Vec<(&str, &serde_json::Value)> = applied["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["node"].as_str().unwrap(), &h["repaired"]))
        .filter(|(_, r)| r.as_array().is_some_and(|r| !r.is_empty()))
        .collect();
    assert_eq!(repaired, [("lab-1", &serde_json::json!([FORWARDING])), ("lab-3", &serde_json::json!([FIREWALL]))]);
    assert_eq!(lab.ssh("lab-1", "sysctl -n net.ipv4.ip_forward").trim(), "1", "apply turned forwarding back on");
    assert!(
        !lab.ssh("lab-3", "nft list chain inet kforge input").contains("10.4.0.2 drop"),
        "apply reloaded the table"
    );

    // A mesh change is applied with `wg syncconf`: a reload, and a connection that was
    // open across the mesh stays open (its interface was never torn down).
    let held = Command::new("ssh")
        .args(["-F", lab.ctx.path("lab/ssh_config").to_str().unwrap(), "lab-2"])
        .arg("exec 3<>/dev/tcp/10.4.0.1/22; head -c 8 <&3; echo; sleep 8; echo still-open >&3; echo done")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    lab.edit_cluster(|c| c.spec.mesh.keepalive = 20);
    let meshed = lab.apply_json();
    for h in meshed["hosts"].as_array().unwrap() {
        assert_eq!(h["unitsReloaded"], serde_json::json!(["wg-quick@kforge0.service"]), "{h}");
        assert_eq!(h["unitsRestarted"], serde_json::json!([]), "{h}");
    }
    let held = held.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&held.stdout);
    assert!(held.status.success() && said.starts_with("SSH-2.0") && said.trim_end().ends_with("done"), "{said}");
    assert!(lab.ssh("lab-3", "wg show kforge0 persistent-keepalive").contains("20"), "the new setting is live");

    // K3s owns its CA files after the first start: after a rotation (here, the file
    // changed on lab-1 as `k3s certificate rotate-ca` would) apply rewrites none of them
    // and says so, with the K3s command that changes them.
    let ca = "/var/lib/rancher/k3s/server/tls/server-ca.crt";
    lab.ssh("lab-1", &format!("echo '# rotated by K3s' >> {ca}"));
    let dry = lab.apply(&["--dry-run"]).success().stdout;
    assert!(
        dry.starts_with(
            "lab-1: no changes\n  = /var/lib/rancher/k3s/server/tls/server-ca.crt: owned by K3s since its first start"
        ),
        "{dry}"
    );
    assert!(dry.contains("(change it with `k3s certificate rotate-ca --path=<dir with the new CA files>`)"), "{dry}");
    let kept = lab.apply_json();
    assert_eq!(totals(&kept), (0, 0), "a K3s-owned file was rewritten: {kept}");
    let lab1 = &kept["hosts"][0];
    assert_eq!(lab1["kept"].as_array().unwrap().len(), 1, "{lab1}");
    assert!(lab1["kept"][0].as_str().unwrap().starts_with(ca), "{lab1}");
    assert!(lab.ssh("lab-1", &format!("tail -1 {ca}")).contains("rotated by K3s"), "the file is K3s's");

    // A bootstrap whose agent starts before its server answers (a fleet booting from
    // user-data at once) does not fail: it says it waits for the server, and K3s
    // (here its stand-in, which is ready only once a server answers) joins later.
    lab.ssh("lab-1", "systemctl stop k3s.service");
    lab.ssh("lab-2", "systemctl stop k3s-agent.service");
    let (ok, out) = lab.ssh_status("lab-2", "KF_JOIN_WAIT=3 bash /var/lib/kforge/bootstrap.sh 2>&1");
    assert!(ok, "the bootstrap failed while its server was down: {out}");
    assert!(out.contains("k3s-agent.service: waiting for the server at https://10.4.0.1:6443"), "{out}");
    assert!(
        out.contains(
            "k3s-agent.service: still waiting for the server at https://10.4.0.1:6443; it keeps retrying on its own"
        ),
        "{out}"
    );
    lab.ssh("lab-1", "systemctl start k3s.service");
    lab.wait_for(60, "lab-2's agent to join once its server is back", || {
        lab.ssh_status("lab-2", "systemctl is-active -q k3s-agent.service").0
    });
}

/// Where a lab machine records the requests the lab's package mirror answered.
fn mirror_requests(lab: &Lab) -> usize {
    std::fs::read_to_string(lab.ctx.path("lab/mirror.log")).map(|l| l.lines().count()).unwrap_or(0)
}

/// The packages kforge installs, asked of dpkg on a machine: `dpkg -s` fails while any is
/// missing (Debian's nginx and its stream module are two packages).
const KFORGES_PACKAGES: &str = "dpkg -s nginx libnginx-mod-stream wireguard-tools nftables >/dev/null 2>&1";

/// The K3s HA lab, one group: three servers on embedded etcd and an agent at home behind
/// NAT, from bare Debian 13 machines (nothing kforge needs preinstalled; packages from
/// the lab's mirror), then K3s's field defects on the stand-in: the mesh restarted under
/// K3s, a slow first start, the founding server reinstalled.
#[test]
fn the_ha_lab_from_bare_machines_and_k3s_on_real_hosts() {
    // `--example k3s-ha` with no other option: the shape is the example's own.
    let lab = Lab::start("k3s-ha", &[]);
    lab.install_k3s_stand_in();
    let mut checks = Checks::default();
    checks.run("the machines are bare: none of kforge's packages, no route but the lab's", || {
        for m in &lab.state.machines {
            let (installed, _) = lab.ssh_status(&m.name, KFORGES_PACKAGES);
            assert!(!installed, "{} has kforge's packages before any apply", m.name);
            let routes = lab.ssh(&m.name, "ip route");
            // Public machines have no default route; the one at home routes to its router only.
            assert!(!routes.contains("default") || m.public_ip.is_none(), "{}: {routes}", m.name);
        }
    });
    checks.run("three servers on embedded etcd and an agent behind NAT, every image on every node", || {
        ha_lab_converges(&lab)
    });
    checks.run("joiners got nginx and its stream module from the mirror; nginx.service left off", || {
        for node in ["lab-2", "lab-3", "lab-4"] {
            let (ok, out) = lab.ssh_status(node, KFORGES_PACKAGES);
            assert!(ok, "{node}: {out}");
            let units = lab.ssh(node, "systemctl is-enabled nginx.service || true; systemctl is-active nginx.service || true; systemctl is-active kforge-k3s-registration.service");
            assert_eq!(units.split_whitespace().collect::<Vec<_>>(), ["disabled", "inactive", "active"], "{node}");
        }
        // The founder has no balancer, so no nginx: only what its plan needs.
        let (has_nginx, _) = lab.ssh_status("lab-1", "dpkg -s nginx >/dev/null 2>&1");
        assert!(!has_nginx, "lab-1 needs no nginx");
        assert!(lab.ssh_status("lab-1", "dpkg -s wireguard-tools nftables >/dev/null 2>&1").0);
    });
    checks.run("a second apply installs nothing and asks the mirror nothing", || {
        let before = mirror_requests(&lab);
        let again = lab.apply_json();
        assert_eq!(totals(&again), (0, 0), "second apply changed something: {again}");
        for h in again["hosts"].as_array().unwrap() {
            assert_eq!(h["packagesInstalled"], serde_json::json!([]), "{h}");
        }
        assert_eq!(mirror_requests(&lab), before, "apt ran during a second apply");
    });
    checks.run("the mesh restarted under K3s leaves K3s running (ordered after it, not bound to it)", || {
        let id = || lab.ssh("lab-2", "systemctl show -p InvocationID --value k3s.service").trim().to_string();
        let before = id();
        lab.ssh("lab-2", "systemctl restart wg-quick@kforge0.service");
        assert_eq!(id(), before, "restarting the mesh restarted K3s");
        assert!(lab.ssh_status("lab-2", "systemctl is-active -q k3s.service").0);
    });
    checks.run("a slow first start is waited for, never restarted half-way by the bootstrap run again", || {
        a_slow_first_start_is_waited_for(&lab)
    });
    checks.run("the founding server reinstalled joins the running cluster (no second cluster-init)", || {
        the_founder_reinstalled_joins(&lab)
    });
    checks.finish();
}

fn ha_lab_converges(lab: &Lab) {
    let shape: Vec<_> = lab.state.machines.iter().map(|m| (m.name.as_str(), m.public_ip.is_some())).collect();
    assert_eq!(shape, [("lab-1", true), ("lab-2", true), ("lab-3", true), ("lab-4", false)], "lab-4 is at home");
    let file = kforge_core::spec::parse("lab/kforge.yaml", &lab.ctx.read("lab/kforge.yaml")).unwrap().cluster;
    let roles: Vec<String> = file.spec.nodes.iter().map(|n| n.role.to_string()).collect();
    assert_eq!(roles, ["server", "server", "server", "agent"]);

    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
        let packages = h["packagesInstalled"].as_array().unwrap();
        assert!(packages.iter().any(|p| p == "wireguard-tools"), "installed from the mirror: {h}");
    }
    // lab-1 initialises the embedded etcd with kforge's CAs; lab-2 and lab-3 join it over
    // the mesh with none placed on their disks (K3s takes them from the datastore) and
    // serve on their own mesh addresses; the agent behind NAT joins too (stand-in K3s:
    // install mechanics only, see the module comment).
    assert!(lab.ssh("lab-1", "cat /etc/rancher/k3s/config.yaml").contains("cluster-init: true"));
    for (server, ip) in [("lab-2", "10.4.0.2"), ("lab-3", "10.4.0.3")] {
        let status = lab.ssh(server, "systemctl is-active k3s.service; cat /run/k3s-stand-in/status");
        assert!(
            status.contains("active\n")
                && status.contains("custom-cas=from-datastore")
                && status.contains(&format!("listening={ip}:6443"))
                && status.contains("joined=127.0.0.1:6445"),
            "{server}: {status}"
        );
    }
    let agent = lab.ssh("lab-4", "systemctl is-active k3s-agent.service; cat /run/k3s-stand-in/status");
    assert!(agent.contains("active\n") && agent.contains("joined=127.0.0.1:6445"), "{agent}");
    // Joiners register through their own node's balancer over every server: with the
    // first server down, the agent behind NAT still joins (through lab-2 or lab-3).
    lab.ssh("lab-1", "systemctl stop k3s.service");
    let (joined, why) = lab.ssh_status("lab-4", "rm -f /run/k3s-stand-in/status && timeout 60 systemctl restart k3s-agent.service && cat /run/k3s-stand-in/status");
    assert!(joined && why.contains("joined=127.0.0.1:6445"), "no join with lab-1 down: {why}");
    lab.ssh("lab-1", "systemctl start k3s.service");

    // Every node has each image archive in K3s's agent/images/, byte for byte the one
    // `lab up` wrote (uploaded over SSH, the NAT'd agent included).
    for (file, archive) in [("pause.tar", "kforge.lab_pause_busybox.tar"), ("busybox.tar", "kforge.lab_busybox_1.tar")]
    {
        let local =
            kforge_core::hashing::sha256_hex(&std::fs::read(lab.ctx.path(&format!("lab/images/{file}"))).unwrap());
        for m in &lab.state.machines {
            let remote = lab.ssh(&m.name, &format!("sha256sum /var/lib/rancher/k3s/agent/images/{archive}"));
            assert_eq!(remote.split_whitespace().next(), Some(local.as_str()), "{}: {archive}", m.name);
        }
    }

    let status = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(status.contains("12 of 12 node pairs reach each other"), "{status}");
    assert!(status.contains("k3s-agent.service 1/1") && status.contains("k3s.service 3/3"), "{status}");
}

/// lab-1's K3s takes 20 s to be ready, as a real first start on a small host can: the
/// bootstrap told to wait 5 s fails saying K3s is still starting; run again, it waits for
/// that same start (the unit's InvocationID unchanged) instead of restarting it.
fn a_slow_first_start_is_waited_for(lab: &Lab) {
    let invocation = || lab.ssh("lab-1", "systemctl show -p InvocationID --value k3s.service").trim().to_string();
    lab.ssh(
        "lab-1",
        "systemctl stop k3s.service && rm -f /var/lib/kforge/units/k3s.service.inputs && mkdir -p /etc/kforge-lab && echo 20 > /etc/kforge-lab/k3s-stand-in-slow-start",
    );
    let (ok, first) = lab.ssh_status("lab-1", "KF_START_WAIT=5 bash /var/lib/kforge/bootstrap.sh 2>&1");
    assert!(!ok, "a 5 s wait for a 20 s start must fail: {first}");
    assert!(first.contains("k3s.service is still starting after 5 s"), "{first}");
    let starting = invocation();
    assert_eq!(lab.ssh("lab-1", "systemctl is-active k3s.service || true").trim(), "activating");
    let (ok, second) = lab.ssh_status("lab-1", "bash /var/lib/kforge/bootstrap.sh 2>&1");
    lab.ssh("lab-1", "rm -f /etc/kforge-lab/k3s-stand-in-slow-start");
    assert!(ok, "{second}");
    assert!(second.contains("k3s.service is still starting with these inputs"), "{second}");
    assert!(!second.contains("KF restarted k3s.service"), "restarted half-way: {second}");
    assert_eq!(invocation(), starting, "the second run restarted K3s");
    assert_eq!(lab.ssh("lab-1", "systemctl is-active k3s.service").trim(), "active");
}

/// lab-1 founded the cluster; reinstalled (empty disk, new host key) while lab-2 and
/// lab-3 run, it must join them: a second `cluster-init` would found an empty etcd with
/// the same CAs and token, which agents accept.
fn the_founder_reinstalled_joins(lab: &Lab) {
    let out = lab.ctx.kforge(&["lab", "reinstall", "lab-1", "--dir", "lab"]).success().stdout;
    let new_key = out.lines().nth(1).unwrap().trim().to_string();
    let known = lab.ctx.path("lab/known_hosts");
    let ip = lab.public_ip("lab-1");
    crate::util::run("ssh-keygen", &["-q", "-R", &ip, "-f", known.to_str().unwrap()]);
    let mut text = std::fs::read_to_string(&known).unwrap();
    text.push_str(&format!("{new_key}\n"));
    std::fs::write(&known, text).unwrap();
    let dry = lab.apply(&["--dry-run"]);
    assert!(dry.stderr.contains("lab-1: joins the cluster lab-2, lab-3 run"), "{}", dry.stderr);
    let report = lab.apply_json();
    let lab1 = &report["hosts"][0];
    assert_eq!(lab1["converged"], true, "{lab1}");
    let config = lab.ssh("lab-1", "cat /etc/rancher/k3s/config.yaml");
    assert!(!config.contains("cluster-init") && config.contains("server: https://127.0.0.1:6445"), "{config}");
    let status = lab.ssh("lab-1", "cat /run/k3s-stand-in/status");
    assert!(status.contains("custom-cas=from-datastore") && status.contains("joined=127.0.0.1:6445"), "{status}");
    // Now a joiner with its datastore back: the next apply keeps it so.
    let again = lab.apply_json();
    assert_eq!(totals(&again), (0, 0), "the rejoined server was flipped back: {again}");
}

#[test]
fn a_stranger_on_the_internet_sees_only_ssh_and_the_mesh_port() {
    let lab = Lab::up(2, &[]);
    // A real listener on every address, which the firewall must hide.
    lab.ssh("lab-1", "/usr/sbin/sshd -p 2222 -o PidFile=/run/sshd-2222.pid");
    let stranger = Stranger::join(&lab);
    let target = lab.public_ip("lab-1");
    let before = stranger.probe(&target, &[22, 2222], &[9999]);
    assert_eq!(before, ["tcp/22 open", "tcp/2222 open", "udp/9999 refused"], "without kforge everything answers");

    lab.apply(&[]).success();
    for node in ["lab-1", "lab-2"] {
        let ip = lab.public_ip(node);
        let after = stranger.probe(&ip, &[22, 2222, 6443, 10250, 2379, 2380, 80, 443, 8472], &[9999, 8472]);
        let mut expected = vec!["tcp/22 open".to_string()];
        for p in [2222, 6443, 10250, 2379, 2380, 80, 443, 8472] {
            expected.push(format!("tcp/{p} silent"));
        }
        expected.extend(["udp/9999 silent".to_string(), "udp/8472 silent".to_string()]);
        assert_eq!(after, expected, "{node} as seen from the internet");
    }
    // The mesh port is open: the nodes' WireGuard reaches each other over their public addresses.
    let hs = lab.ssh("lab-2", "timeout 10 bash -c 'exec 3<>/dev/tcp/10.4.0.1/2222; head -c 8 <&3'");
    assert!(hs.starts_with("SSH-2.0"), "the same port answers over the mesh: {hs:?}");
}

/// A namespace on the lab bridge with an address of its own: someone on the internet.
struct Stranger {
    ns: String,
}

impl Stranger {
    fn join(lab: &Lab) -> Stranger {
        Stranger::join_as(lab, "stranger", 200)
    }

    /// A namespace called NAME on the bridge at the lab subnet's host number N.
    fn join_as(lab: &Lab, name: &str, n: u32) -> Stranger {
        let ns = format!("kfl{}-{name}", lab.state.id);
        let wan = &lab.state.wan_ns;
        let ip = format!("{}/{}", host(lab.state.subnet, n), lab.state.subnet.prefix_len());
        let port = format!("st{n}");
        run("ip", &["netns", "add", &ns]);
        run("ip", &["-n", wan, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        run("ip", &["-n", wan, "link", "set", &port, "master", "br0", "up"]);
        run("ip", &["-n", &ns, "addr", "add", &ip, "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        Stranger { ns }
    }

    /// "tcp/P open|silent|refused", "udp/P refused|silent" as python3 sees them from here.
    fn probe(&self, ip: &str, tcp: &[u16], udp: &[u16]) -> Vec<String> {
        let script = format!(
            r#"
import socket
ip = "{ip}"
for p in {tcp:?}:
    s = socket.socket(); s.settimeout(1.5)
    try:
        s.connect((ip, p)); print(f"tcp/{{p}} open")
    except ConnectionRefusedError: print(f"tcp/{{p}} refused")
    except OSError: print(f"tcp/{{p}} silent")
    s.close()
for p in {udp:?}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.5); s.connect((ip, p))
    try:
        s.send(b"hello"); s.recv(64); print(f"udp/{{p}} answered")
    except ConnectionRefusedError: print(f"udp/{{p}} refused")
    except OSError: print(f"udp/{{p}} silent")
    s.close()
"#
        );
        run("ip", &["netns", "exec", &self.ns, "python3", "-c", &script]).lines().map(String::from).collect()
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        // Whatever still runs in the namespace (a userspace WireGuard) goes with it.
        let pids = Command::new("ip").args(["netns", "pids", &self.ns]).output().map(|o| o.stdout).unwrap_or_default();
        for pid in String::from_utf8_lossy(&pids).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn host(net: ipnet::Ipv4Net, n: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(net.network()) + n)
}

#[test]
fn only_wireguard_and_ssh_cross_the_lab_bridge() {
    let lab = Lab::up(3, &["lab-3"]);
    lab.apply(&[]).success();
    let capture = Capture::start(&lab);
    // Plaintext over the mesh: the stand-in greets every client with "k3s stand-in".
    for agent in ["lab-2", "lab-3"] {
        let got = lab.ssh(agent, "timeout 10 bash -c 'exec 3<>/dev/tcp/10.4.0.1/6443; head -c 12 <&3'");
        assert_eq!(got, "k3s stand-in", "{agent} talks to the server over the mesh");
    }
    let bytes = capture.stop();
    assert!(!contains(&bytes, b"k3s stand-in"), "plaintext crossed the bridge");
    assert_only_wireguard_and_ssh(&lab, &bytes);
}

/// Every packet on the lab bridge is WireGuard (the mesh port, or a NAT router's
/// rewritten source port) or SSH with the workstation; both were seen.
fn assert_only_wireguard_and_ssh(lab: &Lab, bytes: &[u8]) {
    let packets = crate::pcap::ipv4_packets(bytes);
    let (mut wireguard, mut ssh) = (0, 0);
    for p in &packets {
        match (p.protocol, p.src_port, p.dst_port) {
            (17, 51820, _) | (17, _, 51820) => wireguard += 1,
            (6, 22, _) | (6, _, 22) => {
                assert!(
                    p.src == lab.state.workstation_ip || p.dst == lab.state.workstation_ip,
                    "SSH only with the workstation: {p:?}"
                );
                ssh += 1;
            }
            // NAT rewrites lab-3's source port; the router's address is still WireGuard's peer.
            (17, _, _) if p.src.octets()[3] >= 100 || p.dst.octets()[3] >= 100 => wireguard += 1,
            _ => panic!("unexpected packet on the bridge: {p:?}"),
        }
    }
    assert!(
        wireguard > 4 && ssh > 0,
        "captured {wireguard} WireGuard and {ssh} SSH packets ({} IPv4 of {} bytes)",
        packets.len(),
        bytes.len()
    );
}

/// tcpdump on every port of the lab bridge, from `start` until `stop`.
struct Capture {
    child: std::process::Child,
    pcap: std::path::PathBuf,
}

impl Capture {
    fn start(lab: &Lab) -> Capture {
        let pcap = lab.ctx.path(&format!("bridge-{}.pcap", kforge_core::random::random_hex(4)));
        let mut child = Command::new("ip")
            // Every port of the bridge (unicast between ports never reaches br0 itself).
            .args(["netns", "exec", &lab.state.wan_ns, "tcpdump", "--immediate-mode", "-Z", "root", "-i", "any"])
            .args(["-y", "LINUX_SLL", "-U", "-w"])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // Wait until tcpdump listens.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("listening on") {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("tcpdump did not start: {said}");
            }
            said.push_str(&line);
        }
        Capture { child, pcap }
    }

    /// Stop and return the capture file's bytes.
    fn stop(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        std::fs::read(&self.pcap).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn kill_9_at_any_point_then_apply_again_converges_exactly() {
    let lab = Lab::up(3, &[]);
    for delay_ms in [150, 400, 700, 1000, 1400] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kforge"))
            .args(["apply", "-f", "lab/kforge.yaml"])
            .current_dir(lab.ctx.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    let report = lab.apply_json();
    assert!(report["hosts"].as_array().unwrap().iter().all(|h| h["converged"] == true), "{report}");

    // Every file identical to a clean render, no temp file anywhere kforge writes.
    lab.ctx.kforge(&["render", "-f", "lab/kforge.yaml", "--out", "clean"]).success();
    let out = lab.ctx.path("clean");
    for node in ["lab-1", "lab-2", "lab-3"] {
        let local = crate::util::tree(&out.join(node));
        let paths: Vec<&String> =
            local.keys().filter(|p| *p != "user-data" && !p.starts_with("var/lib/kforge/")).collect();
        let remote = lab.ssh(
            node,
            &format!("cd / && sha256sum {}", paths.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" ")),
        );
        for line in remote.lines() {
            let (sum, path) = line.split_once("  ").unwrap();
            assert_eq!(
                sum,
                kforge_core::hashing::sha256_hex(&local[path].1),
                "{node}:/{path} differs from a clean render"
            );
        }
        let temps =
            lab.ssh(node, "find /etc /var/lib/rancher /var/lib/kforge /usr/local/bin -name '*.kforge-tmp-*' | wc -l");
        assert_eq!(temps.trim(), "0", "{node} has temp files left");
        let pending = lab.ssh(node, "ls /var/lib/kforge/pending | wc -l");
        assert_eq!(pending.trim(), "0", "{node} has restarts still pending");
    }
    assert_eq!(totals(&lab.apply_json()), (0, 0), "converged means a further apply is a no-op");
}

#[test]
fn a_host_that_goes_down_mid_apply_fails_alone_and_reapply_finishes() {
    let lab = Lab::up(3, &[]);
    let ns = lab.state.machine("lab-3").unwrap().ns.clone();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kforge"))
        .args(["apply", "-f", "lab/kforge.yaml"])
        .current_dir(lab.ctx.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Pull lab-3's cable once the firewall phase has begun: the mesh is already on it.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut log = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.ends_with(": firewall") {
            run("ip", &["-n", &ns, "link", "set", "eth0", "down"]);
        }
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{log}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(started.elapsed() < Duration::from_secs(90), "a dead host must not hang the apply");
    assert!(summary.contains("lab-1      converged") && summary.contains("lab-2      converged"), "{summary}\n{log}");
    assert!(summary.contains("lab-3      FAILED"), "{summary}");
    assert!(summary.contains("lab-3: "), "a per-host error explains why: {summary}");

    run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
    let report = lab.apply_json();
    assert!(report["hosts"].as_array().unwrap().iter().all(|h| h["converged"] == true), "{report}");
}

#[test]
fn preflight_and_a_mirror_outage_refuse_before_anything_is_started() {
    let lab = Lab::up(2, &[]);
    let id = lab.ssh("lab-1", "cat /etc/machine-id");
    lab.ssh("lab-2", &format!("echo {} > /etc/machine-id", id.trim()));
    // Something else already serves the kubelet's port.
    lab.ssh("lab-2", "/usr/sbin/sshd -p 10250 -o PidFile=/run/sshd-10250.pid");
    // A re-purposed machine: another kforge cluster's record, listing its owner's file.
    lab.ssh(
        "lab-2",
        r#"mkdir -p /var/lib/kforge && echo mine > /root/precious && printf '%s' '{"cluster":"other-cluster","node":"old-box","files":{"/root/precious":"00"},"by":"apply"}' > /var/lib/kforge/manifest.json"#,
    );
    let dry = lab.apply(&["--dry-run"]);
    assert_ne!(dry.code, 0, "a dry run names what a real apply refuses, and exits non-zero");
    assert!(
        dry.stdout.contains("lab-2: carries the record of kforge cluster `other-cluster`, node `old-box`, 1 files"),
        "{}",
        dry.stdout
    );
    // reset would not take that record's files either.
    let preview = lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", "lab-2"]).success().stdout;
    assert!(preview.contains("kept the 1 files listed by the record of cluster other-cluster"), "{preview}");
    let out = lab.apply(&[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("preflight refused to continue; nothing was changed"), "{}", out.stderr);
    assert!(out.stderr.contains("lab-2: machine-id equals lab-1's (cloned image?)"), "{}", out.stderr);
    // Named with its program; started from an SSH session it runs in sshd's cgroup, and
    // the SSH service kforge reaches the host through is never offered for hand-over.
    assert!(out.stderr.contains("lab-2: tcp/10250 is held by sshd"), "{}", out.stderr);
    assert!(!out.stderr.contains("--hand-over ssh"), "{}", out.stderr);
    assert!(out.stderr.contains("lab-2: carries the record of kforge cluster `other-cluster`"), "{}", out.stderr);
    assert!(out.stderr.contains("kforge apply --replace-foreign-record"), "{}", out.stderr);
    let touched = lab.ssh("lab-1", "find /etc/wireguard /etc/kforge /var/lib/kforge -mindepth 1 2>/dev/null | wc -l");
    assert_eq!(touched.trim(), "0", "lab-1 was touched");
    let touched = lab.ssh("lab-2", "find /etc/wireguard /etc/kforge /var/lib/kforge -mindepth 1 2>/dev/null || true");
    assert_eq!(touched.trim(), "/var/lib/kforge/manifest.json", "lab-2 was touched");

    // Fixed, but the provider's package mirror is down: apply fails at the install step,
    // naming the packages and apt's own words, with no file of the plan written and no
    // unit started on either host.
    lab.ssh("lab-2", "kill $(cat /run/sshd-10250.pid); rm /etc/machine-id && systemd-machine-id-setup >/dev/null 2>&1");
    // What apply would install, per host: --dry-run and plan --observe say it first.
    let dry = lab.apply(&["--dry-run", "--replace-foreign-record"]).success().stdout;
    assert_eq!(dry.matches("  + packages wireguard-tools nftables  (apt-get install)\n").count(), 2, "{dry}");
    let observed = lab.ctx.kforge(&["plan", "--observe", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(observed.contains("lab-1      install packages: wireguard-tools, nftables (apt-get) → "), "{observed}");
    lab.ctx.kforge(&["lab", "mirror", "stop", "--dir", "lab"]).success();
    let out = lab.apply(&["--replace-foreign-record"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    for node in ["lab-1", "lab-2"] {
        assert!(
            out.stdout.contains(&format!("{node}: packages: on {node}: `install packages` failed"))
                && out
                    .stdout
                    .contains("apt-get could not install wireguard-tools nftables: E: Unable to locate package"),
            "{}",
            out.stdout
        );
        assert!(out.stdout.contains("Failed to fetch http://"), "apt's own words: {}", out.stdout);
        let started = lab.ssh(node, "systemctl list-units --all --no-legend 'wg-quick@*' 'kforge-*' 'k3s*' | wc -l");
        assert_eq!(started.trim(), "0", "{node}: a unit of the plan exists");
        let touched = lab.ssh(node, "ls /etc/wireguard /etc/rancher /usr/sbin/policy-rc.d 2>/dev/null | wc -l");
        assert_eq!(touched.trim(), "0", "{node}: the plan's files or kforge's policy-rc.d are there");
    }
    // The mirror back: the same apply — taking lab-2 over from the other cluster's record
    // without removing what that record lists — finishes the job, on lab-1 even after an install
    // killed half-way left dpkg's journal behind ("dpkg was interrupted": apt refuses
    // everything until `dpkg --configure -a`). The journal entry is base-files' own
    // status, so finishing it changes nothing else.
    lab.ctx.kforge(&["lab", "mirror", "start", "--dir", "lab"]).success();
    lab.ssh("lab-1", "dpkg-query -s base-files > /var/lib/dpkg/updates/0000");
    let (ok, why) = lab.ssh_status("lab-1", "apt-get -y install nftables 2>&1");
    assert!(!ok && why.contains("dpkg was interrupted"), "the journal is what a killed install leaves: {why}");
    let out = lab.apply(&["--replace-foreign-record", "-o", "json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
        assert_eq!(h["packagesInstalled"], serde_json::json!(["wireguard-tools", "nftables"]), "{h}");
    }
    assert_eq!(lab.ssh("lab-1", "ls /var/lib/dpkg/updates | wc -l").trim(), "0", "dpkg's journal finished");
    assert_eq!(lab.ssh("lab-2", "cat /root/precious").trim(), "mine", "the other record's file is left alone");
    assert!(lab.ssh("lab-2", "cat /var/lib/kforge/manifest.json").contains("\"cluster\":\"lab\""));
}

#[test]
fn lab_down_all_removes_a_lab_whose_directory_is_gone() {
    let lab = Lab::up(1, &[]);
    let state = lab.state.clone();
    // The lab directory vanishes (its temp dir deleted, say): `down --all` still finds it.
    std::fs::remove_dir_all(lab.ctx.path("lab")).unwrap();
    // `--all` removes every lab on this machine, this test's and any other: one left by
    // an earlier run that was killed, say (every test's own lab is checked gone when
    // the test ends). So this lab must be among those named, not the only one.
    let out = lab.ctx.kforge(&["lab", "down", "--all"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let named = format!("lab {} ({})", state.id, state.dir.display());
    assert!(out.stderr.contains(&named), "`lab down --all` did not name {named}:\n{}", out.stderr);
    let others: Vec<&str> =
        out.stderr.lines().filter(|l| l.starts_with("lab: lab ") && l.ends_with(')') && !l.contains(&named)).collect();
    if !others.is_empty() {
        eprintln!("`lab down --all` also removed labs that were already on this machine: {others:?}");
    }
    let removed = format!("removed {} lab", 1 + others.len());
    assert!(out.stdout.contains(&removed), "{}\n{}", out.stdout, out.stderr);
    assert!(kforge_lab::leftovers(&state).is_empty(), "{:?}", kforge_lab::leftovers(&state));
}

/// A local web server on loopback stands in for a release page.
struct WebServer {
    child: std::process::Child,
    port: u16,
}

impl WebServer {
    fn serve(dir: &std::path::Path) -> WebServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        WebServer { child, port }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_downloaded_artifact_is_verified_cached_by_sha256_and_uploaded_once() {
    let mut lab = Lab::up(2, &[]);
    let site = lab.ctx.path("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::copy(stand_in(), site.join("k3s")).unwrap();
    let sum = kforge_core::hashing::sha256_hex(&std::fs::read(site.join("k3s")).unwrap());
    let web = WebServer::serve(&site);
    let cache = lab.ctx.path("cache");
    lab.ctx.set_env("XDG_CACHE_HOME", cache.to_str().unwrap());

    // A wrong digest: refused before any host gets the file.
    lab.edit_cluster(|c| {
        c.spec.artifacts.k3s = Some(kforge_core::spec::Artifact {
            url: Some(format!("http://127.0.0.1:{}/k3s", web.port)),
            path: None,
            sha256: Some("0".repeat(64)),
            // It is kforge's stand-in: no K3s release, so its version is not checked.
            stand_in: Some("no K3s binary can be obtained here".into()),
            ..Default::default()
        })
    });
    let out = lab.apply(&[]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains(&format!("has sha256 {sum}, expected {}", "0".repeat(64))), "{}", out.stdout);
    assert_eq!(lab.ssh("lab-1", "test -e /usr/local/bin/k3s && echo present || echo absent").trim(), "absent");

    // The right digest: fetched once into the cache, uploaded to both hosts, K3s (stand-in) runs.
    lab.ctx.edit("lab/kforge.yaml", &"0".repeat(64), &sum);
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert!(h["artifactsUploaded"].as_array().unwrap().iter().any(|a| a == "/usr/local/bin/k3s"), "{h}");
    }
    assert!(cache.join("kforge/artifacts").join(&sum).exists(), "cached under its sha256");
    drop(web); // the cache is enough from now on
    assert_eq!(totals(&lab.apply_json()), (0, 0));
    assert_eq!(lab.ssh("lab-2", "sha256sum /usr/local/bin/k3s | cut -d' ' -f1").trim(), sum);
}

#[test]
fn two_applies_at_once_then_the_firewall_turned_off() {
    let lab = Lab::up(2, &[]);
    // Two operators start the first apply together (no secrets bundle yet): one waits
    // for the other's lock beside the cluster file, then finds everything done. One PKI,
    // one set of WireGuard keys: the second writes and restarts nothing.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| lab.apply(&["-o", "json"]));
        let b = s.spawn(|| lab.apply(&["-o", "json"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.code == 0 && b.code == 0, "{}\n{}\n{}\n{}", a.stdout, a.stderr, b.stdout, b.stderr);
    let (waited, first) = if a.stderr.contains("waiting for ") { (&a, &b) } else { (&b, &a) };
    assert!(waited.stderr.contains("kforge.yaml.lock (held by `kforge apply` (pid "), "{}", waited.stderr);
    assert!(!first.stderr.contains("waiting for "), "{}", first.stderr);
    let second: serde_json::Value = serde_json::from_str(&waited.stdout).unwrap();
    assert_eq!(totals(&second), (0, 0), "the second apply found another PKI: {second}");
    let bundle: kforge_core::secrets::SecretsBundle =
        serde_saphyr::from_str(&lab.ctx.read("lab/kforge.secrets.yaml")).unwrap();
    let key = kforge_core::wireguard::PrivateKey::parse(&bundle.wireguard["lab-1"]).unwrap().public_key();
    let key = key.as_base64();
    assert!(lab.ssh("lab-2", "wg show kforge0 peers").contains(key), "lab-2's peer lab-1 has the bundle's key");
    assert!(lab.ssh("lab-1", "nft list tables").contains("table inet kforge"));
    assert!(lab.ssh("lab-1", "nft list tables").contains("table inet kforge"));
    lab.edit_cluster(|c| c.spec.firewall.enabled = false);
    let dry = lab.apply(&["--dry-run"]).success().stdout;
    assert!(dry.contains("  - /etc/kforge/firewall.nft\n  - /etc/systemd/system/kforge-firewall.service\n"), "{dry}");
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["filesRemoved"].as_array().unwrap().len(), 2, "{h}");
    }
    for node in ["lab-1", "lab-2"] {
        let state =
            lab.ssh(node, "systemctl is-active kforge-firewall.service || true; nft list tables; ls /etc/kforge");
        let journal = || lab.ssh(node, "journalctl -u kforge-firewall.service --no-pager -n 20 || true");
        assert!(
            !state.contains("table inet kforge"),
            "{node}: the table must go with the unit: {state}\n{}",
            journal()
        );
        assert!(state.starts_with("inactive"), "{node}: {state}");
        assert!(!state.contains("firewall.nft"), "{node}: {state}");
    }
    assert_eq!(totals(&lab.apply_json()), (0, 0));
}
