//! Day 2 on the cluster's shape, offline: a node dropped from the file is a removal to
//! apply, not a reason for any command to forget it.

use crate::util::TestContext;

/// A hardway cluster whose bundle records its nodes as deployed (what `apply` records
/// before it touches a host), with every node's SSH pointed at a closed local port:
/// the commands that ask hosts fail fast instead of waiting on TEST-NET addresses.
fn deployed_hardway() -> TestContext {
    let ctx = TestContext::with_example("hardway");
    ctx.write("ssh_config", "Host *\n  HostName 127.0.0.1\n");
    let mut bundle = ctx.bundle();
    let spec = kforge_core::spec::parse("kforge.yaml", &ctx.read("kforge.yaml")).unwrap();
    assert!(bundle.record_deployed(&spec.cluster));
    ctx.write("kforge.secrets.yaml", &serde_saphyr::to_string(&bundle).unwrap());
    ctx
}

#[test]
fn dropping_a_node_and_running_every_read_command_leaves_the_bundle_byte_identical() {
    let ctx = deployed_hardway();
    ctx.edit_spec("    - {name: worker-1, role: worker, endpoint: 198.51.100.31, location: ams}\n", "");
    let before = std::fs::read(ctx.path("kforge.secrets.yaml")).unwrap();
    let reads: [&[&str]; 12] = [
        &["check"],
        &["plan"],
        &["plan", "-o", "json"],
        &["explain"],
        &["explain", "controller-0"],
        &["kubeconfig", "--out", "admin.kubeconfig"],
        &["certs", "check"],
        &["lint"],
        &["status"],
        &["doctor"],
        &["etcd", "health"],
        &["render", "--out", "out"],
    ];
    for args in reads {
        let out = ctx.kforge(args);
        assert_eq!(
            std::fs::read(ctx.path("kforge.secrets.yaml")).unwrap(),
            before,
            "`kforge {}` wrote the bundle",
            args.join(" ")
        );
        assert!(!out.stderr.contains("secrets bundle updated"), "`kforge {}`: {}", args.join(" "), out.stderr);
    }
    // status says the cluster is not the file yet.
    let status = ctx.kforge(&["status"]).stdout;
    assert!(
        status.lines().any(|l| l.contains("removals")
            && l.contains("FAIL")
            && l.contains("worker-1 dropped from the file but still in the cluster")),
        "{status}"
    );
    // The dropped node is deployed, so its keys stay: the bundle is not behind and
    // render delivered the other nodes' files.
    assert!(ctx.path("out/worker-0/user-data").exists() && !ctx.path("out/worker-1").exists());
    // kubeconfig hands out the admin certificate and CA, which did not change.
    assert!(ctx.read("admin.kubeconfig").contains("client-certificate-data"));

    // A new node: plan makes its keys in memory and says apply records them; render,
    // which would hand them out, refuses and names the command that records them.
    ctx.edit_spec("  nodes:\n", "  nodes:\n    - {name: worker-9, role: worker, endpoint: 198.51.100.39}\n");
    let plan = ctx.kforge(&["plan"]).success();
    assert!(plan.stderr.contains("apply will record created 1 WireGuard keys, 1 mesh addresses, 1 pod networks, 2 certificates, 1 revoked certificates (plan changes nothing)"), "{}", plan.stderr);
    let out = ctx.kforge(&["render", "--out", "out2"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("is behind kforge.yaml"), "{}", out.stderr);
    assert!(out.stderr.contains("kforge secrets update"), "{}", out.stderr);
    assert!(!ctx.path("out2").exists(), "nothing rendered");
    assert_eq!(std::fs::read(ctx.path("kforge.secrets.yaml")).unwrap(), before);
    ctx.kforge(&["secrets", "update"]).success();
    ctx.kforge(&["render", "--out", "out2"]).success();
    assert!(ctx.path("out2/worker-9/user-data").exists());
}

/// What plan shows for each kind of removal: a worker's steps in order, its kubelet
/// certificate's id; a controller's, its etcd member removed before its host is reset.
#[test]
fn a_dropped_worker_and_a_dropped_controller_are_removals_in_the_plan() {
    let ctx = deployed_hardway();
    ctx.edit_spec("    - {name: worker-1, role: worker, endpoint: 198.51.100.31, location: ams}\n", "");
    let plan = ctx.kforge(&["plan"]).success().stdout;
    let section: Vec<&str> = plan.lines().skip_while(|l| !l.starts_with("worker-1  worker  REMOVED")).take(7).collect();
    assert_eq!(section.len(), 7, "{plan}");
    assert!(section[1].contains("1. cordon and drain"), "{section:?}");
    assert!(section[2].contains("2. revoke its kubelet certificate in the API (X509SHA256="), "{section:?}");
    assert!(section[3].contains("3. reset the host over SSH (root@198.51.100.31)"), "{section:?}");
    assert!(section[4].contains("4. delete Node worker-1"), "{section:?}");
    assert!(section[5].contains("every other host drops its mesh peer"), "{section:?}");
    // The revocation the plan names is the bundle's own kubelet certificate, and the
    // addon that carries it goes to the API with the other addons.
    let bundle = ctx.bundle();
    let id = kforge_core::pki::credential_id(&bundle.certificates["kubelet-client/worker-1"].pair.cert).unwrap();
    assert!(section[2].contains(&id[..23]), "{section:?}");
    let json: serde_json::Value = serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
    assert_eq!(json["removals"][0]["node"], "worker-1");
    let addon = json["nodes"][0]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["files"].as_array().unwrap())
        .find(|f| f["path"] == "/etc/kforge/addons/30-revoked-credentials.yaml");
    assert!(addon.is_some(), "the revocation addon is planned on the first controller");

    // A controller: its etcd member goes before its host is wiped, and every other
    // host's balancer drops its API server.
    ctx.edit_spec("    - {name: controller-2, role: controller, endpoint: 203.0.113.22, location: par}\n", "");
    let plan = ctx.kforge(&["plan"]).success().stdout;
    let section: Vec<&str> =
        plan.lines().skip_while(|l| !l.starts_with("controller-2  controller  REMOVED")).take(6).collect();
    assert!(
        section[1].contains(
            "1. remove its etcd member (https://10.4.0.3:2380), refused if the members left would lose quorum"
        ),
        "{section:?}"
    );
    assert!(section[2].contains("2. reset the host over SSH (root@203.0.113.22)"), "{section:?}");
    assert!(
        section[3].contains("drops its mesh peer, firewall entries and API server from the balancer"),
        "{section:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
    let members: Vec<&str> =
        json["etcd"]["members"].as_array().unwrap().iter().map(|m| m[0].as_str().unwrap()).collect();
    assert_eq!(members, ["controller-0", "controller-1"], "the etcd apply keeps: the file's controllers");
}

/// K3s: an agent's removal drains it, resets the host and deletes its Node, and says its
/// kubelet certificate is K3s's (kforge cannot revoke it); a server's is refused.
#[test]
fn k3s_removals_are_planned_too() {
    let ctx = TestContext::with_example("ha");
    let mut bundle = ctx.bundle();
    let spec = kforge_core::spec::parse("kforge.yaml", &ctx.read("kforge.yaml")).unwrap();
    bundle.record_deployed(&spec.cluster);
    ctx.write("kforge.secrets.yaml", &serde_saphyr::to_string(&bundle).unwrap());
    let agent = "agent-1";
    ctx.edit_spec("    - {name: agent-1, role: agent, endpoint: 198.51.100.21, location: fra}\n", "");
    for _ in 0..2 {
        ctx.edit_spec("nodes: [agent-1, agent-2, agent-3]", "nodes: [agent-2, agent-3]");
    }
    let plan = ctx.kforge(&["plan"]).success().stdout;
    assert!(plan.contains(&format!("{agent}  agent  REMOVED from the file")), "{plan}");
    assert!(plan.contains("1. cordon and drain"), "{plan}");
    assert!(plan.contains("its kubelet certificate is K3s's own: K3s cannot revoke it"), "{plan}");
    assert!(plan.contains(&format!("delete Node {agent}")), "{plan}");
    assert!(!plan.contains("30-revoked-credentials"), "no revocation addon on K3s");

    // A K3s server holds a member of K3s's embedded etcd: refused, nothing written.
    ctx.edit_spec("    - {name: server-3, role: server, endpoint: 203.0.113.13, location: par}\n", "");
    let plan = ctx.kforge(&["plan"]).success().stdout;
    assert!(
        plan.contains("refused: server-3 is a K3s server: kforge does not remove a member of K3s's embedded etcd"),
        "{plan}"
    );
    let before = std::fs::read(ctx.path("kforge.secrets.yaml")).unwrap();
    let out = ctx.kforge(&["apply"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("server-3 is a K3s server no longer in kforge.yaml"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    assert_eq!(std::fs::read(ctx.path("kforge.secrets.yaml")).unwrap(), before, "the refusal wrote nothing");
}

/// A worker dropped from the file has its kubelet certificate revoked the moment its
/// removal is recorded; put back before (or after) the removal is applied, it must not
/// come back with that certificate — the API would refuse its kubelet for good while
/// apply reported every host converged. It gets a new one, and the old stays refused.
#[test]
fn a_worker_put_back_after_its_revocation_gets_a_new_kubelet_certificate() {
    let ctx = deployed_hardway();
    let line = "    - {name: worker-1, role: worker, endpoint: 198.51.100.31, location: ams}\n";
    let before = ctx.bundle();
    let old = kforge_core::pki::credential_id(&before.certificates["kubelet-client/worker-1"].pair.cert).unwrap();
    ctx.edit_spec(line, "");
    let out = ctx.kforge(&["secrets", "update"]).success();
    assert!(out.stderr.contains("1 revoked certificates"), "{}", out.stderr);
    assert!(ctx.bundle().revoked.contains_key(&old));
    // Back in the file.
    ctx.edit_spec("  nodes:\n", &format!("  nodes:\n{line}"));
    let out = ctx.kforge(&["secrets", "update"]).success();
    assert!(out.stderr.contains("re-issued kubelet-client/worker-1"), "{}", out.stderr);
    let after = ctx.bundle();
    let new = kforge_core::pki::credential_id(&after.certificates["kubelet-client/worker-1"].pair.cert).unwrap();
    assert_ne!(new, old);
    assert!(after.revoked.contains_key(&old), "the old certificate stays refused");
    assert!(!after.revoked.contains_key(&new));
    // Nothing else was re-issued, and the next update changes nothing.
    for (id, cert) in &before.certificates {
        assert_eq!(id == "kubelet-client/worker-1", cert != &after.certificates[id], "{id}");
    }
    let again = ctx.kforge(&["secrets", "update"]).success();
    assert!(!again.stderr.contains("re-issued"), "{}", again.stderr);
}
