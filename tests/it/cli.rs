//! The command surface: summaries, schema, completions, help.

use crate::util::TestContext;

#[test]
fn check_summarises_the_cluster_and_touches_nothing() {
    let ctx = TestContext::with_example("homelab");
    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    let out = ctx.kforge(&["check"]).success();
    assert!(out.stdout.contains("nodes     3 (1 server, 2 agents); behind NAT: pi-1"), "{}", out.stdout);
    assert!(out.stdout.contains("API on mesh only; peers: laptop"), "{}", out.stdout);
    assert!(!ctx.path("kforge.secrets.yaml").exists(), "check creates no secrets");
}

#[test]
fn a_missing_cluster_file_says_how_to_make_one() {
    let ctx = TestContext::new();
    let out = ctx.kforge(&["plan"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("kforge init"), "{}", out.stderr);
}

#[test]
fn schema_describes_the_cluster_file() {
    let ctx = TestContext::new();
    let schema: serde_json::Value = serde_json::from_str(&ctx.kforge(&["schema"]).success().stdout).unwrap();
    assert_eq!(schema["title"], "kforge cluster file");
    let props = &schema["properties"];
    for key in ["apiVersion", "kind", "metadata", "spec"] {
        assert!(props.get(key).is_some(), "schema lacks {key}");
    }
    assert_eq!(schema["additionalProperties"], false, "unknown keys are errors in editors too");
    let text = serde_json::to_string(&schema).unwrap();
    for key in ["podCIDR", "meshIP", "allowFrom", "apiOnPublic", "keyAlgorithm", "rsa-4096"] {
        assert!(text.contains(key), "schema lacks {key}");
    }
}

#[test]
fn completions_and_help_teach_the_commands() {
    let ctx = TestContext::new();
    let bash = ctx.kforge(&["completions", "bash"]).success().stdout;
    assert!(bash.contains("kforge") && bash.contains("render"));
    let help = ctx.kforge(&["--help"]).success().stdout;
    for cmd in ["init", "check", "plan", "render", "kubeconfig", "schema", "completions"] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    let init = ctx.kforge(&["init", "--help"]).success().stdout;
    assert!(init.contains("homelab") && init.contains("ha") && init.contains("lab"), "{init}");
}

#[test]
fn init_writes_every_example_and_the_plan_covers_every_node() {
    for example in kforge_core::spec::examples::names() {
        let ctx = TestContext::with_example(example);
        let plan: serde_json::Value =
            serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
        let spec: serde_json::Value = serde_saphyr::from_str(&ctx.read("kforge.yaml")).unwrap();
        assert_eq!(plan["nodes"].as_array().unwrap().len(), spec["spec"]["nodes"].as_array().unwrap().len());
        for node in plan["nodes"].as_array().unwrap() {
            for phase in node["phases"].as_array().unwrap() {
                for f in phase["files"].as_array().unwrap() {
                    assert!(f.get("content").is_none(), "plan output never carries content");
                    assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
                }
            }
        }
    }
}

#[test]
fn a_warning_repeated_across_a_fleet_is_counted_not_flooded() {
    let ctx = TestContext::with_example("homelab");
    let many: String = (1..=12).map(|i| format!("    - {{name: nat-{i}, role: agent}}\n")).collect();
    ctx.edit_spec("  nodes:\n", &format!("  nodes:\n{many}"));
    let out = ctx.kforge(&["check"]).success();
    assert_eq!(out.stderr.matches("has neither an endpoint nor ssh.host").count(), 3, "{}", out.stderr);
    assert!(out.stderr.contains("warning: 9 more like the above"), "{}", out.stderr);
}

/// A fresh `init` of the hard way names local binaries the operator has not fetched
/// yet: apply lists each missing file once and contacts no host.
#[test]
fn apply_names_each_missing_local_artifact_once_before_contacting_a_host() {
    let ctx = TestContext::with_example("hardway");
    let out = ctx.kforge(&["apply", "--dry-run"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("local artifacts are missing; no host was contacted"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("./bin/kube-apiserver (kube-apiserver)").count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("./bin/etcd-v3.6.16-linux-amd64.tar.gz (etcd)"), "{}", out.stderr);
    assert!(!out.stderr.contains("ssh"), "no host was dialled: {}", out.stderr);
}
