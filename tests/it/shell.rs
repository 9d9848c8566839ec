//! kforge's shell, linted: the step functions every script starts with, the probes
//! kept as `.sh` files, the project's scripts, and what kforge renders — the
//! bootstrap script of every node of every example, and every kind of step an apply
//! sends over SSH. All through one renderer (`kforge_core::render::steps`).

use std::path::{Path, PathBuf};
use std::process::Command;

use kforge_core::plan::{PlannedCommand, PlannedFile};
use kforge_core::render::steps::{Step, to_shell};

use crate::util::{TestContext, files_with_extension};

/// shellcheck at its default severity (style included): every finding fails.
fn shellcheck(files: &[PathBuf]) {
    assert!(!files.is_empty());
    let out = Command::new("shellcheck")
        .args(["--shell=bash", "--external-sources"])
        .args(files)
        .output()
        .expect("shellcheck runs (scripts/deps installs it)");
    assert!(
        out.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shell_kept_as_files_passes_shellcheck() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        files_with_extension(&krate.unwrap().path().join("src"), "sh", &mut files);
    }
    let count = files.len();
    assert!(count >= 4, "the step functions, probes and lab scripts: {files:?}");
    for script in std::fs::read_dir(root.join("scripts")).unwrap() {
        files.push(script.unwrap().path());
    }
    shellcheck(&files);
}

#[test]
fn every_rendered_bootstrap_script_passes_shellcheck() {
    let mut scripts = Vec::new();
    let ctxs: Vec<TestContext> = kforge_core::spec::examples::ALL
        .iter()
        .map(|(name, _)| {
            let ctx = TestContext::with_example(name);
            let out = ctx.render("out");
            for node in std::fs::read_dir(&out).unwrap() {
                let script = node.unwrap().path().join("var/lib/kforge/bootstrap.sh");
                if script.exists() {
                    scripts.push(script);
                }
            }
            ctx
        })
        .collect();
    assert!(scripts.len() >= 2 * ctxs.len(), "every example's nodes: {scripts:?}");
    shellcheck(&scripts);
}

#[test]
fn every_kind_of_apply_step_renders_to_clean_shell() {
    let file = PlannedFile::new("/etc/kforge/example.conf", 0o644, "key = 'value'\n");
    let steps = vec![
        Step::Comment("what follows".into()),
        Step::Log("node: phase mesh".into()),
        Step::Install(vec![kforge_core::packages::Package::Nftables, kforge_core::packages::Package::NginxStream]),
        Step::Fetch {
            name: "k3s".into(),
            url: "https://example.invalid/k3s?x=1&y=2".into(),
            sha256: "a".repeat(64),
            dest: "/usr/local/bin/k3s".into(),
            mode: 0o755,
        },
        Step::Require {
            name: "etcd".into(),
            dest: "/usr/local/bin/etcd".into(),
            sha256: None,
            hint: "it's local".into(),
        },
        Step::CleanTemp("/etc/kforge/.x.kforge-tmp-1".into()),
        Step::MarkPending("wg-quick@kforge0.service".into()),
        Step::Receive { dest: "/usr/local/bin/k3s".into(), sha256: "b".repeat(64), mode: 0o755 },
        Step::ArchCheck {
            name: "k3s".into(),
            setting: "artifacts.k3s".into(),
            archs: vec!["amd64".into(), "arm64".into()],
        },
        Step::OnArch {
            arch: "arm64".into(),
            step: Box::new(Step::Require {
                name: "k3s".into(),
                dest: "/usr/local/bin/k3s".into(),
                sha256: None,
                hint: "arm64's".into(),
            }),
        },
        Step::WriteOnce(file.clone()),
        Step::PlaceOnce {
            staged: "/var/lib/kforge/handover/etc/kforge/example.conf".into(),
            dest: "/etc/kforge/example.conf".into(),
            mode: 0o600,
            owner: "root:root".into(),
        },
        Step::Write(file.clone()),
        Step::Ensure(file),
        Step::Remove { path: "/etc/systemd/system/old.service".into(), unit: Some("old.service".into()) },
        Step::DaemonReload,
        Step::Run(PlannedCommand {
            description: "apply kernel settings".into(),
            run: "sysctl -q -p /etc/sysctl.d/90-kforge.conf".into(),
            unless: Some("[ \"$(sysctl -n net.ipv4.ip_forward)\" = 1 ]".into()),
            recheck: None,
        }),
        Step::Enable("wg-quick@kforge0.service".into()),
        Step::Restart {
            unit: "wg-quick@kforge0.service".into(),
            inputs: "0123456789abcdef".into(),
            reload: Some("wg syncconf kforge0 <(wg-quick strip kforge0)".into()),
            when_changed: true,
            no_block: false,
            joins: None,
        },
        Step::Restart {
            unit: "k3s-agent.service".into(),
            inputs: "0123456789abcdef".into(),
            reload: None,
            when_changed: true,
            no_block: false,
            joins: Some("https://127.0.0.1:6445".into()),
        },
        Step::Restart {
            unit: "etcd.service".into(),
            inputs: "0123456789abcdef".into(),
            reload: None,
            when_changed: false,
            no_block: true,
            joins: None,
        },
        Step::ClearPending("wg-quick@kforge0.service".into()),
        Step::RecordDigests(vec![
            ("/usr/local/bin/k3s".into(), "c".repeat(64)),
            ("/etc/kforge/example.conf".into(), "d".repeat(64)),
        ]),
        Step::RecordManifest {
            path: "/var/lib/kforge/manifest.json".into(),
            json: "{\"files\":{}}".into(),
            unless_same: false,
        },
        Step::RecordOutcome("/var/lib/kforge/bootstrap.outcome".into()),
        Step::Branch {
            test: "kf_wg_kernel".into(),
            then: vec![Step::Log("kernel WireGuard".into())],
            otherwise: vec![Step::RecordManifest {
                path: "/var/lib/kforge/manifest.json".into(),
                json: "{\"files\":{},\"by\":\"bootstrap\"}".into(),
                unless_same: true,
            }],
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phase.sh");
    std::fs::write(&path, to_shell(&["every step".into()], &steps)).unwrap();
    shellcheck(&[path]);
}

/// `kf_node_labels`, run by bash against a kubectl that records what it was asked (the
/// Kubernetes side is the real API server's in the hard-way lab): every mark of the list
/// set, and of the marks last applied exactly those the list dropped taken off — a
/// label by its key, a taint by key and effect — an applied list from before taints
/// were listed included.
#[test]
fn kf_node_labels_sets_the_list_and_takes_off_only_what_it_dropped() {
    let ctx = TestContext::new();
    let log = ctx.path("kubectl.log");
    ctx.write("kubectl", &format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()));
    std::fs::set_permissions(ctx.path("kubectl"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let list = ctx.path("node-labels");
    let applied = ctx.path("state/node-labels.applied");
    let run = |list_text: &str| -> Vec<String> {
        ctx.write("node-labels", list_text);
        let _ = std::fs::remove_file(&log);
        // The step functions without their last line (which makes kforge's state
        // directory on a host: not on this workstation).
        let prelude = kforge_core::render::steps::PRELUDE.replace("mkdir -p \"$KF_STATE/pending\"\n", "");
        let script = format!(
            "{prelude}\nkf_node_labels '{} --kubeconfig x' {} {}\n",
            ctx.path("kubectl").display(),
            list.display(),
            applied.display()
        );
        let out = Command::new("bash").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains(" get "))
            .map(String::from)
            .collect()
    };
    let first = "edge-1 label svccontroller.k3s.cattle.io/enablelb=true\nedge-1 label tier=edge\npi-1 taint dedicated=home:NoSchedule\n";
    assert_eq!(
        run(first),
        [
            "--kubeconfig x label node edge-1 svccontroller.k3s.cattle.io/enablelb=true --overwrite",
            "--kubeconfig x label node edge-1 tier=edge --overwrite",
            "--kubeconfig x taint node pi-1 dedicated=home:NoSchedule --overwrite",
        ]
    );
    assert_eq!(std::fs::read_to_string(&applied).unwrap(), first, "applied as listed");
    // edge-1 stops publishing (its ServiceLB label goes), tier changes value (kept by
    // key), the taint's effect changes (the old one goes).
    let second = "edge-1 label tier=core\npi-1 taint dedicated=home:NoExecute\n";
    let calls = run(second);
    assert_eq!(
        calls,
        [
            "--kubeconfig x label node edge-1 tier=core --overwrite",
            "--kubeconfig x taint node pi-1 dedicated=home:NoExecute --overwrite",
            "--kubeconfig x label node edge-1 svccontroller.k3s.cattle.io/enablelb-",
            "--kubeconfig x taint node pi-1 dedicated:NoSchedule-",
        ]
    );
    // The applied list of an earlier kforge (`NODE KEY=VALUE`, labels only).
    std::fs::write(&applied, "edge-1 zone=a\nedge-1 tier=core\n").unwrap();
    let calls = run(second);
    assert!(calls.contains(&"--kubeconfig x label node edge-1 zone-".to_string()), "{calls:?}");
    assert!(!calls.iter().any(|c| c.contains("tier-")), "{calls:?}");
}

/// An apply that would restart a running control plane takes an etcd snapshot first. Of
/// a member that is stopped (nothing listens) or hung (it accepts and never answers),
/// etcdctl's snapshot waited for good — an apply printed "etcd snapshot first" and
/// nothing more for 14 minutes. `kf_snapshot_save` asks the member first and gives up
/// in seconds, saying why, so the apply tries the next member or stops with a reason.
#[test]
fn a_snapshot_of_a_member_that_does_not_answer_fails_in_seconds_saying_why() {
    let etcdctl = kforge_lab::components_dir(kforge_lab::HARDWAY_VERSION).join("etcdctl");
    assert!(etcdctl.exists(), "{} missing: scripts/components builds it", etcdctl.display());
    let ctx = TestContext::new();
    let run = || {
        let script = format!(
            "{}\nKF_ETCD_ENV=/dev/null\nexport PATH={}:$PATH\nkf_snapshot_save {}\n",
            kforge_ssh::etcd::ETCD_SH,
            etcdctl.parent().unwrap().display(),
            ctx.path("snap.db").display()
        );
        let started = std::time::Instant::now();
        let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
        (out.status.success(), started.elapsed(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Stopped: nothing on the member's client port (this workstation runs no etcd).
    assert!(std::net::TcpStream::connect("127.0.0.1:2379").is_err(), "an etcd runs on this workstation");
    let (ok, took, said) = run();
    assert!(!ok && took < std::time::Duration::from_secs(25), "{took:?}: {said}");
    assert!(said.contains("the etcd member here does not answer, so it takes no snapshot"), "{said}");
    // Hung: the port accepts connections and never says a word.
    let hung = std::net::TcpListener::bind("127.0.0.1:2379").unwrap();
    let (ok, took, said) = run();
    drop(hung);
    assert!(!ok && took < std::time::Duration::from_secs(25), "{took:?}: {said}");
    assert!(said.contains("does not answer"), "{said}");
    assert!(!ctx.path("snap.db").exists());
}
