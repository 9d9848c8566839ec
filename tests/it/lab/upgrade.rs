//! An upgrade for real, on the hard-way lab's cluster before its other checks: brought
//! up at v1.36 (the newest v1.36 patch `scripts/components` builds), loaded with a
//! 2-replica Deployment behind a PodDisruptionBudget and a Service, 1000 etcd keys, and a
//! host changed by hand — then the cluster file says v1.37.2 and `kforge apply` moves
//! everything there, stopped at one of its boundaries (the fault matrix's round a seed
//! picks: tests/it/lab/faults.rs) and finished by a plain apply, under a client on two
//! nodes sending 40 requests a second to the Service. Then etcd a patch up and back, and
//! back a minor the documented way (the snapshot restored) and forward again.

use std::time::{Duration, Instant};

use super::hardway::ETCDCTL;
use super::{Checks, Lab};

/// The release the cluster starts at, and the one it is upgraded to.
pub(super) const FROM: &str = "v1.36.3";
pub(super) const TO: &str = kforge_lab::HARDWAY_VERSION;
/// etcd's next patch, which the lab moves to and back (`scripts/components --etcd-only`):
/// a patch upgrade and a patch rollback on the same path as any release change.
const ETCD_NEXT_PATCH: &str = "v3.6.17";

/// The lab's cluster file at `version`: the Kubernetes programs from that release's
/// components (`lab/bin-VERSION`, linked to the cache `scripts/components` fills), as
/// an operator's edit of version and artifacts would be.
pub(super) fn set_release(lab: &Lab, version: &str) {
    let dir = if version == TO { "bin".to_string() } else { format!("bin-{version}") };
    let link = lab.ctx.path(&format!("lab/{dir}"));
    if !link.exists() {
        let cache = kforge_lab::components_dir(version);
        assert!(
            cache.join("kubelet").exists(),
            "{} missing: scripts/components --cluster-only {version}",
            cache.display()
        );
        std::os::unix::fs::symlink(cache, &link).unwrap();
    }
    lab.edit_cluster(|c| {
        c.spec.distribution.version = version.into();
        let a = &mut c.spec.artifacts;
        for (name, artifact) in [
            ("kube-apiserver", &mut a.kube_apiserver),
            ("kube-controller-manager", &mut a.kube_controller_manager),
            ("kube-scheduler", &mut a.kube_scheduler),
            ("kubectl", &mut a.kubectl),
            ("kubelet", &mut a.kubelet),
            ("kube-proxy", &mut a.kube_proxy),
        ] {
            artifact.as_mut().expect("the lab names every program").path = Some(format!("./{dir}/{name}"));
        }
    });
}

const WORKLOAD: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: upgrade-web}
spec:
  replicas: 2
  selector: {matchLabels: {app: upgrade-web}}
  template:
    metadata: {labels: {app: upgrade-web}}
    spec:
      terminationGracePeriodSeconds: 15
      containers:
        - name: web
          image: kforge.lab/busybox:1
          imagePullPolicy: Never
          command: [/bin/sh, -c, "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
          ports: [{containerPort: 8080}]
          readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
          # Endpoints leave every kube-proxy a moment after a pod starts terminating:
          # serving on through that moment is how a workload loses no request.
          lifecycle: {preStop: {exec: {command: [sleep, "5"]}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: upgrade-web}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: upgrade-web}}
---
apiVersion: v1
kind: Service
metadata: {name: upgrade-web}
spec:
  selector: {app: upgrade-web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// GET / from the Service, paced to RATE requests a second (`perl client.pl IP RATE NODE`),
/// one line per request, `MILLIS ok` or `MILLIS FAIL what`, until /tmp/client.stop exists.
/// Perl because a machine as a provider hands it out has perl-base and no curl: one process
/// for the whole run, where a shell forks per request and manages 6 to 8 a second.
const CLIENT: &str = r#"use strict;
use warnings;
use IO::Socket::INET;
my ($ip, $rate, $node) = @ARGV;
$| = 1;
# Milliseconds since the epoch from gettimeofday(2) (96 on x86_64): perl-base has no Time::HiRes.
sub now_ms {
    my $tv = pack("q q", 0, 0);
    syscall(96, $tv, 0) == 0 or die "gettimeofday: $!";
    my ($s, $us) = unpack("q q", $tv);
    return $s * 1000 + int($us / 1000);
}
my $next = now_ms();
until (-e "/tmp/client.stop") {
    my $t = now_ms();
    my $answer = eval {
        local $SIG{ALRM} = sub { die "no answer within 3 s\n" };
        alarm 3;
        my $s = IO::Socket::INET->new(PeerAddr => $ip, PeerPort => 80, Proto => "tcp", Timeout => 3)
            or die "connect: $@\n";
        print $s "GET / HTTP/1.0\r\n\r\n";
        local $/;
        my $r = <$s>;
        alarm 0;
        $r // "";
    };
    alarm 0;
    if (defined $answer && $answer =~ m{^HTTP/1\.[01] 200}) {
        print "$t ok\n";
    } else {
        my $why = $@ || ("answered: " . substr($answer // "", 0, 60));
        # What this node's kube-proxy routes the Service to at that moment (its iptables rules).
        my $rules = `iptables-save 2>/dev/null | grep -E 'default/upgrade-web' | grep -oE 'has no endpoints|-j KUBE-SEP-[A-Z0-9]+|--to-destination [0-9.:]+' | sort | uniq -c`;
        $why .= " | ${node}'s rules then: " . ($rules || "none");
        $why =~ s/\s+/ /g;
        print "$t FAIL $why\n";
    }
    $next += 1000 / $rate;
    my $wait = $next - now_ms();
    if ($wait > 0) { select(undef, undef, undef, $wait / 1000) } else { $next = now_ms() }
}
"#;

/// Where the client runs, and how fast: two nodes at 20 requests a second each. The
/// judgement asks for at least [`FLOOR`] a second from each node, every one answered
/// (20 a second from the two).
pub(super) const CLIENT_NODES: &[&str] = &["lab-1", "lab-2"];
const RATE: u32 = 20;
const FLOOR: f64 = 10.0;

/// Every check of the upgrade, in the order an operator lives it.
pub(super) fn the_cluster_upgrades_under_load(lab: &Lab, checks: &mut Checks) {
    checks.run("the v1.36 cluster runs the workload, its budget and 1000 etcd keys", || load(lab));
    checks.run("a release changed by hand shows in plan --observe, status and doctor", || mixed_by_hand(lab));
    checks.run("a file asking for two minors at once is refused at its line, touching no host", || {
        refused_touching_nothing(lab, "v1.38.0", "skips a minor")
    });
    // The upgrade stopped at one of its boundaries (the fault matrix's round a seed
    // picks), then finished by a plain apply, under the client and the quorum watch.
    let binary = super::faults::failpoints_binary();
    let round = super::faults::rounds("upgrade", super::faults::UPGRADE.len())[0];
    let fault = super::faults::UPGRADE[round];
    checks.run(
        &format!("the upgrade stopped ({}), then finished by a plain apply; a hand cordon kept", fault.says()),
        || super::faults::upgraded_under(lab, &binary, fault),
    );
    checks.run("etcd a patch up and back, member by member behind its gate, every key kept, no request lost", || {
        let client = Client::start(lab);
        etcd_patch_up_and_back(lab);
        client.stop_and_judge(lab)
    });
    checks.run("every node runs v1.37.2, nothing is cordoned, the keys are there, status and doctor are clean", || {
        everything_moved(lab)
    });
    checks.run("a file going back a minor is refused at its line, touching no host", || {
        refused_touching_nothing(lab, FROM, "is a downgrade across minors")
    });
    checks.run(
        "back a minor the documented way: the upgrade's snapshot restored, every node back at v1.36, then forward",
        || a_minor_rollback_through_the_snapshot(lab),
    );
    checks.run("a budget that allows no disruption stops a drain before any cordon", || strict_budget(lab));
}

fn load(lab: &Lab) {
    deploy_workload(lab);
    // 1000 keys in 8 transactions of 125 puts.
    lab.ssh(
        "lab-1",
        &format!(
            "for b in $(seq 0 7); do {{ echo; for i in $(seq $((b*125+1)) $((b*125+125))); do echo \"put upgrade-key$i value$i\"; done; echo; echo; }} | ({ETCDCTL} txn >/dev/null); done"
        ),
    );
    assert_eq!(keys(lab, "lab-3"), 1000);
    let nodes = lab.kubectl("lab-1", "get nodes -o jsonpath='{.items[*].status.nodeInfo.kubeletVersion}'");
    assert_eq!(nodes.trim(), format!("{FROM} {FROM} {FROM}"));
}

/// upgrade-web (2 replicas, its budget, its Service), rolled out; on failure, why.
pub(super) fn deploy_workload(lab: &Lab) {
    lab.ssh("lab-1", &format!("cat > /tmp/upgrade-web.yaml <<'EOF'\n{WORKLOAD}EOF"));
    lab.kubectl("lab-1", "apply -f /tmp/upgrade-web.yaml");
    let (rolled_out, said) = lab.ssh_status(
        "lab-1",
        "kubectl --kubeconfig /etc/kforge/admin.kubeconfig rollout status deploy/upgrade-web --timeout=120s",
    );
    if !rolled_out {
        // Why the pods never became available, for the log: where they are, what the
        // cluster said about them, and what each node's kubelet logged lately.
        let (_, pods) = lab.ssh_status(
            "lab-1",
            "k='kubectl --kubeconfig /etc/kforge/admin.kubeconfig'; $k get nodes -o wide; $k get sa,cm; $k get pods -A -o wide; $k describe pods -l app=upgrade-web; $k get events -A --sort-by=.lastTimestamp | tail -40",
        );
        let kubelets = ["lab-1", "lab-2", "lab-3"]
            .map(|n| format!("{n}:\n{}", lab.ssh_status(n, "journalctl -u kubelet -u containerd --no-pager -n 30").1));
        panic!("{said}\n{pods}\n{}", kubelets.join("\n"));
    }
}

fn keys(lab: &Lab, node: &str) -> usize {
    lab.ssh(node, &format!("{ETCDCTL} get --prefix upgrade-key --keys-only | grep -c .")).trim().parse().unwrap()
}

/// lab-3's kube-proxy swapped for the v1.37.2 binary by hand, as an impatient operator
/// would: plan, status and doctor say so; the upgrade then moves it with the rest.
fn mixed_by_hand(lab: &Lab) {
    let cfg = lab.ctx.path("lab/ssh_config");
    let binary = lab.ctx.path("lab/bin/kube-proxy");
    crate::util::run(
        "scp",
        &["-q", "-F", cfg.to_str().unwrap(), binary.to_str().unwrap(), "lab-3:/usr/local/bin/kube-proxy-by-hand"],
    );
    lab.ssh(
        "lab-3",
        "sed -i 's|^ExecStart=.*/kube-proxy |ExecStart=/usr/local/bin/kube-proxy-by-hand |' /etc/systemd/system/kube-proxy.service && systemctl daemon-reload && systemctl restart kube-proxy",
    );
    let mixed = format!("kube-proxy versions are mixed: {} on lab-1, lab-2; {} on lab-3", &FROM[1..], &TO[1..]);
    // A unit file changed by hand: the host's digest cache is stale now, and reading it
    // (plan --observe, a dry run) must leave it so — they write nothing on a host.
    let cache = || lab.ssh("lab-3", "sha256sum /var/lib/kforge/hash-cache");
    let was = cache();
    let plan = lab.ctx.kforge(&["plan", "--observe", "-f", "lab/kforge.yaml"]).success().stdout;
    let dry = lab.apply(&["--dry-run"]);
    assert_eq!(cache(), was, "plan --observe or apply --dry-run rewrote lab-3's digest cache: {}", dry.stderr);
    assert!(plan.contains(&format!("versions: {mixed}")), "{plan}");
    assert!(plan.contains(&format!("kube-proxy {}", &TO[1..])), "{plan}");
    let status = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
    assert_ne!(status.code, 0, "{}", status.stdout);
    assert!(
        status.stdout.lines().any(|l| l.contains("versions") && l.contains("FAIL") && l.contains(&mixed)),
        "{}",
        status.stdout
    );
    let doctor = lab.ctx.kforge(&["doctor", "-f", "lab/kforge.yaml"]).stdout;
    assert!(doctor.lines().any(|l| l.contains("WARN    versions") && l.contains(&mixed)), "{doctor}");
}

/// The file asks for `version`; apply refuses with `why` at the version's line and
/// touches no host (each host's record of what kforge wrote is unchanged).
fn refused_touching_nothing(lab: &Lab, version: &str, why: &str) {
    let before = lab.ctx.read("lab/kforge.yaml");
    let manifests = || {
        ["lab-1", "lab-2", "lab-3"]
            .map(|n| lab.ssh(n, "sha256sum /var/lib/kforge/manifest.json /etc/systemd/system/*.service"))
    };
    let was = manifests();
    if version == FROM {
        set_release(lab, FROM);
    } else {
        lab.edit_cluster(|c| c.spec.distribution.version = version.into());
    }
    let out = lab.apply(&[]);
    lab.ctx.write("lab/kforge.yaml", &before);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains(why), "{}", out.stderr);
    // Pointing at the version's line: `--> lab/kforge.yaml:L:C`, then that line.
    let at = out.stderr.lines().skip_while(|l| !l.contains("--> lab/kforge.yaml:")).nth(2).unwrap_or_default();
    assert!(at.contains(&format!("version: {version}")), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    assert_eq!(manifests(), was, "a refused apply touched a host");
}

/// The request loops against `upgrade-web`'s Service, one per node, started before a
/// change that must not lose a request (the upgrade; nodes joining and leaving).
pub(super) struct Client {
    nodes: Vec<String>,
    started: Instant,
    stopped: std::cell::Cell<Option<Instant>>,
}

impl Client {
    /// On [`CLIENT_NODES`].
    pub(super) fn start(lab: &Lab) -> Client {
        Client::start_on(lab, CLIENT_NODES)
    }

    pub(super) fn start_on(lab: &Lab, nodes: &[&str]) -> Client {
        let ip = lab.kubectl("lab-1", "get svc upgrade-web -o jsonpath={.spec.clusterIP}");
        for node in nodes {
            lab.ssh(node, &format!("cat > /tmp/client.pl <<'EOF'\n{CLIENT}EOF"));
            lab.ssh(
                node,
                &format!(
                    "rm -f /tmp/client.stop /tmp/client.log; nohup perl /tmp/client.pl {} {RATE} {node} >/tmp/client.log 2>&1 </dev/null &",
                    ip.trim()
                ),
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        Client {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            started: Instant::now(),
            stopped: Default::default(),
        }
    }

    /// Stop the loops; every request answered, at least [`FLOOR`] a second from each node, the
    /// longest gap between two answers printed.
    pub(super) fn stop_and_judge(&self, lab: &Lab) {
        self.stop(lab);
        self.judge(lab);
    }

    /// The clients' last requests done (a request times out after 3 s).
    pub(super) fn stop(&self, lab: &Lab) {
        self.stopped.set(Some(Instant::now()));
        for node in &self.nodes {
            lab.ssh(node, "touch /tmp/client.stop");
        }
        std::thread::sleep(Duration::from_secs(4));
    }

    pub(super) fn judge(&self, lab: &Lab) {
        let ran = self.stopped.get().unwrap_or_else(Instant::now) - self.started;
        let (mut ok, mut failed, mut rate) = (0usize, Vec::new(), 0.0);
        for node in &self.nodes {
            let log = lab.ssh(node, "cat /tmp/client.log");
            let (mut answered, mut gap, mut last) = (0usize, 0u64, None::<u64>);
            let (mut first, mut end) = (None::<u64>, 0u64);
            for line in log.lines() {
                let (t, rest) = line.split_once(' ').unwrap_or((line, ""));
                let Ok(t) = t.parse::<u64>() else {
                    failed.push(format!("{node}: {line}"));
                    continue;
                };
                first.get_or_insert(t);
                end = t;
                if rest == "ok" {
                    answered += 1;
                    if let Some(prev) = last {
                        gap = gap.max(t - prev);
                    }
                    last = Some(t);
                } else {
                    failed.push(format!("{node}: {line}"));
                }
            }
            // The client's own clock: from its first request to its last.
            let secs = (end - first.unwrap_or(end)) as f64 / 1000.0;
            assert!(secs + 10.0 >= ran.as_secs_f64(), "the client on {node} stopped early ({secs:.0} s of {ran:?})");
            eprintln!(
                "client of upgrade-web on {node}: {answered} requests answered over {secs:.0} s; longest gap between answers {gap} ms"
            );
            ok += answered;
            rate += answered as f64 / secs.max(1.0);
        }
        eprintln!("{}", programming_delays(lab));
        if !failed.is_empty() {
            eprintln!(
                "upgrade-web now:\n{}",
                lab.kubectl(
                    "lab-1",
                    "get pods,endpointslices -l 'app=upgrade-web' -o wide; kubectl --kubeconfig /etc/kforge/admin.kubeconfig get endpointslices -l kubernetes.io/service-name=upgrade-web -o yaml | grep -E 'addresses:|- [0-9]|nodeName|ready|serving|terminating'"
                )
            );
        }
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(10)]
        );
        let floor = FLOOR * self.nodes.len() as f64;
        assert!(rate >= floor, "{ok} requests answered, {rate:.1} a second in all: fewer than {floor}");
    }
}

/// How long endpoint changes took to reach lab-1's rules (kube-proxy's own
/// `network_programming_duration` histogram, since it last started): a pod stops serving
/// at the end of its preStop sleep, so a change slower than that sleep loses requests.
fn programming_delays(lab: &Lab) -> String {
    let metrics = lab.ssh(
        "lab-1",
        "exec 3<>/dev/tcp/127.0.0.1/10249 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && grep '^kubeproxy_network_programming_duration_seconds_bucket' <&3; true",
    );
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, count))
        })
        .collect();
    let total = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
    let within = |secs: f64| buckets.iter().filter(|b| b.0 <= secs).map(|b| b.1).fold(0.0, f64::max);
    format!(
        "lab-1's kube-proxy since it started: {total} endpoint changes programmed; over 2 s: {}, over 5 s: {}, over 10 s: {}",
        total - within(2.0),
        total - within(5.0),
        total - within(10.0)
    )
}

/// A patch upgrade of etcd (the lab's v3.6.16 → v3.6.17), then its rollback, each one
/// `kforge apply` of the file's changed artifact: the snapshot first, then each member
/// restarted alone behind its gate (healthy, a leader, at the new release), no worker
/// drained, and the 1000 keys there after each.
fn etcd_patch_up_and_back(lab: &Lab) {
    let cache = kforge_lab::components_dir(TO).parent().unwrap().join(format!("etcd-{ETCD_NEXT_PATCH}/release"));
    let tarball = format!("etcd-{ETCD_NEXT_PATCH}-linux-amd64.tar.gz");
    assert!(
        cache.join(&tarball).exists(),
        "{} missing: scripts/components --etcd-only {ETCD_NEXT_PATCH}",
        cache.display()
    );
    let link = lab.ctx.path(&format!("lab/{tarball}"));
    if !link.exists() {
        std::os::unix::fs::symlink(cache.join(&tarball), &link).unwrap();
    }
    let mut current = String::new();
    lab.edit_cluster(|c| current = c.spec.artifacts.etcd.as_ref().unwrap().path.clone().unwrap());
    let was = current.trim_start_matches("./bin/etcd-").trim_end_matches("-linux-amd64.tar.gz").to_string();
    for (version, path) in [(ETCD_NEXT_PATCH, format!("./{tarball}")), (was.as_str(), current.clone())] {
        lab.edit_cluster(|c| c.spec.artifacts.etcd.as_mut().unwrap().path = Some(path.clone()));
        let out = lab.apply(&["-o", "json"]);
        assert_eq!(out.code, 0, "etcd to {version}:\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("etcd snapshot saved to lab/snapshots/"), "{}", out.stderr);
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let gate = format!("gate: this etcd member healthy, with a leader at {}", &version[1..]);
        for h in report["hosts"].as_array().unwrap() {
            let steps: Vec<&str> = h["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
            assert!(steps.contains(&gate.as_str()), "{}: {steps:?}", h["node"]);
            assert!(!steps.iter().any(|s| s.starts_with("cordon")), "a new etcd drains no worker: {steps:?}");
        }
        // One member at a time: the progress lines wait on each member's gate in turn.
        let waits: Vec<&str> = out.stderr.lines().filter(|l| l.contains("waiting for this etcd member")).collect();
        assert_eq!(waits.len(), 3, "{}", out.stderr);
        let status = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint status --cluster -w json"));
        assert_eq!(status.matches(&format!("\"version\":\"{}\"", &version[1..])).count(), 3, "{status}");
        assert_eq!(keys(lab, "lab-3"), 1000, "after etcd {version}");
    }
}

fn everything_moved(lab: &Lab) {
    let nodes = lab.kubectl(
        "lab-1",
        "get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion} {.spec.unschedulable}{\"\\n\"}{end}'",
    );
    assert_eq!(nodes.trim(), format!("lab-1 {TO} \nlab-2 {TO} \nlab-3 {TO}"), "every kubelet moved, none cordoned");
    for n in ["lab-1", "lab-2", "lab-3"] {
        let v = lab.ssh(n, "kubectl --kubeconfig /etc/kforge/admin.kubeconfig get --raw=/version");
        assert!(v.contains(&format!("\"gitVersion\": \"{TO}\"")), "{n}'s API server: {v}");
    }
    assert_eq!(keys(lab, "lab-2"), 1000);
    let status = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    let v = &TO[1..];
    for c in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"] {
        assert!(status.stdout.contains(&format!("{c} {v}")), "{c}: {}", status.stdout);
    }
    let doctor = lab.ctx.kforge(&["doctor", "-f", "lab/kforge.yaml"]).stdout;
    assert!(doctor.contains("ok      versions"), "{doctor}");
    assert!(!doctor.contains("FAIL"), "{doctor}");
    // The old release stays beside the new one, for a patch rollback.
    lab.ssh(
        "lab-1",
        &format!(
            "test -x /opt/kforge/kubernetes/{FROM}/bin/kubelet && test -x /opt/kforge/kubernetes/{TO}/bin/kubelet"
        ),
    );
}

/// The way back a minor that the refusal names: v1.36.3 in the file, the snapshot the
/// upgrade's apply took before any API server moved restored (`kforge etcd restore`
/// leaves the v1.37 API servers stopped rather than let them write their schema into
/// it), then `kforge apply` starts v1.36.3's and moves every node back; the 1000 keys
/// are there, and the snapshot's hand cordon. Then forward to v1.37.2 again, for the
/// checks after this one.
fn a_minor_rollback_through_the_snapshot(lab: &Lab) {
    let mut snapshots: Vec<std::path::PathBuf> = std::fs::read_dir(lab.ctx.path("lab/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "db"))
        .collect();
    // Named by the time they were taken: the first is the upgrade's, before it moved anything.
    snapshots.sort();
    let before_upgrade = snapshots.first().expect("the upgrade took a snapshot");
    set_release(lab, FROM);
    let out = lab.ctx.kforge(&["etcd", "restore", "-f", "lab/kforge.yaml", before_upgrade.to_str().unwrap(), "--yes"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "kube-apiserver left stopped on every controller: they ran {} and the cluster file asks for {}",
            &TO[1..],
            &FROM[1..]
        )),
        "{}",
        out.stdout
    );
    for n in ["lab-1", "lab-2", "lab-3"] {
        assert_eq!(lab.ssh(n, "systemctl is-active kube-apiserver || true").trim(), "inactive", "{n}");
    }
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    let nodes = lab.kubectl("lab-1", "get nodes -o jsonpath='{.items[*].status.nodeInfo.kubeletVersion}'");
    assert_eq!(nodes.trim(), format!("{FROM} {FROM} {FROM}"));
    for n in ["lab-1", "lab-2", "lab-3"] {
        let v = lab.ssh(
            n,
            "kubectl --kubeconfig /etc/kforge/admin.kubeconfig --server https://127.0.0.1:6443 get --raw=/version",
        );
        assert!(v.contains(&format!("\"gitVersion\": \"{FROM}\"")), "{n}'s API server: {v}");
    }
    assert_eq!(keys(lab, "lab-2"), 1000);
    // The snapshot's own state: taken while lab-3 was cordoned by hand (the upgrade's
    // round), so lab-3 is cordoned again, kept so by the apply, and no other node.
    let cordoned =
        lab.kubectl("lab-1", "get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.spec.unschedulable} {end}'");
    assert_eq!(cordoned.trim(), "lab-1= lab-2= lab-3=true");
    lab.kubectl("lab-1", "uncordon lab-3");

    set_release(lab, TO);
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    let nodes = lab.kubectl("lab-1", "get nodes -o jsonpath='{.items[*].status.nodeInfo.kubeletVersion}'");
    assert_eq!(nodes.trim(), format!("{TO} {TO} {TO}"));
}

/// A budget allowing no disruption (minAvailable: 2 of 2) and a change that restarts
/// lab-1's kubelet (a node label): the preflight names the budget, nothing is cordoned,
/// the apply fails; with the budget gone the same apply drains lab-1 and finishes.
fn strict_budget(lab: &Lab) {
    let strict = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: upgrade-web-strict}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: upgrade-web}}\n";
    lab.ssh("lab-1", &format!("cat > /tmp/strict.yaml <<'EOF'\n{strict}EOF"));
    lab.kubectl("lab-1", "apply -f /tmp/strict.yaml");
    // Both replicas on lab-1 would be a budget problem on any node: put one elsewhere.
    let on = lab.kubectl("lab-1", "get pods -l app=upgrade-web -o jsonpath='{.items[*].spec.nodeName}'");
    let node = on.split_whitespace().next().unwrap().to_string();
    lab.edit_cluster(|c| {
        let n = c.spec.nodes.iter_mut().find(|n| n.name == node).unwrap();
        n.labels.insert("kforge.dev/test".into(), "upgraded".into());
    });
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let out = lab.apply(&[]);
        assert_ne!(out.code, 0, "{}", out.stdout);
        assert!(
            out.stdout.contains("PodDisruptionBudget default/upgrade-web-strict allows no disruption now"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
        let cordoned = lab.kubectl("lab-1", "get nodes -o jsonpath='{.items[*].spec.unschedulable}'");
        assert_eq!(cordoned.trim(), "", "nothing was cordoned");
    }));
    // The budget goes whatever the refusal looked like: left, it blocks every later drain.
    lab.kubectl("lab-1", "delete pdb upgrade-web-strict");
    if let Err(failed) = refused {
        std::panic::resume_unwind(failed);
    }
    let report = lab.apply_json();
    let h = report["hosts"].as_array().unwrap().iter().find(|h| h["node"] == node.as_str()).unwrap();
    assert_eq!(h["converged"], true, "{h}");
    assert!(h["steps"].as_array().unwrap().iter().any(|s| s["step"] == "uncordon"), "{h}");
}
