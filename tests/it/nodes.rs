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
    // The dropped node is deployed, so its keys stay: the bundle is not behind and
    // render delivered the other nodes' files.
    assert!(ctx.path("out/worker-0/user-data").exists() && !ctx.path("out/worker-1").exists());
    // kubeconfig hands out the admin certificate and CA, which did not change.
    assert!(ctx.read("admin.kubeconfig").contains("client-certificate-data"));

    // A new node: plan makes its keys in memory and says apply records them; render,
    // which would hand them out, refuses and names the command that records them.
    ctx.edit_spec("  nodes:\n", "  nodes:\n    - {name: worker-9, role: worker, endpoint: 198.51.100.39}\n");
    let plan = ctx.kforge(&["plan"]).success();
    assert!(plan.stderr.contains("apply will record created 1 WireGuard keys, 1 mesh addresses, 1 pod networks, 2 certificates (plan changes nothing)"), "{}", plan.stderr);
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
