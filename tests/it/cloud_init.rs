//! user-data, validated by cloud-init's own schema check, and faithful to the tree.

use base64::Engine;

use crate::util::{TestContext, run};

#[test]
fn cloud_init_accepts_every_user_data_and_it_carries_the_exact_files() {
    for example in kforge_core::spec::examples::names() {
        let ctx = TestContext::with_example(example);
        let out = ctx.render("out");
        let plan: serde_json::Value =
            serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
        for node in plan["nodes"].as_array().unwrap() {
            let name = node["node"].as_str().unwrap();
            let user_data = out.join(format!("{name}/user-data"));
            let said = run("cloud-init", &["schema", "--config-file", user_data.to_str().unwrap()]);
            assert!(said.contains("Valid"), "{example}/{name}: {said}");

            let text = std::fs::read_to_string(&user_data).unwrap();
            assert!(text.starts_with("#cloud-config\n"));
            let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
            let files = doc["write_files"].as_array().unwrap();
            // Every planned file, byte for byte and with its mode, plus the bootstrap script.
            let planned: Vec<&serde_json::Value> =
                node["phases"].as_array().unwrap().iter().flat_map(|p| p["files"].as_array().unwrap()).collect();
            assert_eq!(files.len(), planned.len() + 1, "{example}/{name}");
            for f in files {
                let path = f["path"].as_str().unwrap();
                let content = match f.get("encoding").and_then(|e| e.as_str()) {
                    Some("b64") => {
                        base64::engine::general_purpose::STANDARD.decode(f["content"].as_str().unwrap()).unwrap()
                    }
                    None => f["content"].as_str().unwrap().as_bytes().to_vec(),
                    Some(other) => panic!("unexpected encoding {other}"),
                };
                let on_disk = std::fs::read(out.join(name).join(path.trim_start_matches('/'))).unwrap();
                assert_eq!(content, on_disk, "{example}/{name}: {path} differs from the rendered tree");
                let mode = f["permissions"].as_str().expect("permissions is a quoted string");
                // A file K3s owns after its first start is staged for the bootstrap.
                let staged = |p: &&&serde_json::Value| {
                    p["handedOver"].is_object()
                        && format!("/var/lib/kforge/handover{}", p["path"].as_str().unwrap()) == path
                };
                let planned_mode =
                    planned.iter().find(|p| p["path"] == path || staged(p)).map(|p| p["mode"].as_str().unwrap());
                assert_eq!(planned_mode.unwrap_or("0700"), mode, "{path}");
            }
            assert_eq!(doc["runcmd"][0][1], "/var/lib/kforge/bootstrap.sh");
            // Packages are the bootstrap's job (only what is missing, as over SSH): a host
            // whose image has them boots without a package mirror.
            assert!(doc.get("packages").is_none() && doc.get("package_update").is_none(), "{doc}");
            // The plan's package list, installed where missing before anything needs it:
            // never by command name (Debian's nginx has no stream module).
            let script = std::fs::read_to_string(out.join(name).join("var/lib/kforge/bootstrap.sh")).unwrap();
            let installs: Vec<&str> = script.lines().filter(|l| l.starts_with("kf_install ")).collect();
            assert_eq!(installs.len(), 1, "{example}/{name}: one install step:\n{installs:?}");
            let listed: Vec<&str> = installs[0]
                .split_whitespace()
                .skip(1)
                .map(|a| a.trim_matches('\'').split('=').next().unwrap())
                .collect();
            let packages: Vec<&str> =
                node["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
            assert_eq!(listed, packages, "{example}/{name}");
            assert!(packages.starts_with(&["wireguard-tools"]), "{example}/{name}: {packages:?}");
            assert!(script.find("kf_install ") < script.find("--- phase: "), "{example}/{name}: installed first");
            // Wherever a balancer loads nginx's stream module, its package is installed.
            let balancer = planned.iter().any(|f| {
                let on_disk = out.join(name).join(f["path"].as_str().unwrap().trim_start_matches('/'));
                std::fs::read_to_string(on_disk)
                    .is_ok_and(|t| t.contains("load_module /usr/lib/nginx/modules/ngx_stream_module.so"))
            });
            assert_eq!(
                packages.contains(&"libnginx-mod-stream"),
                balancer,
                "{example}/{name}: a balancer runs here: {balancer}, packages {packages:?}"
            );
        }
    }
}

#[test]
fn bootstrap_script_is_valid_bash_and_orders_the_phases() {
    let ctx = TestContext::with_example("homelab");
    let out = ctx.render("out");
    let script = out.join("cp-1/var/lib/kforge/bootstrap.sh");
    run("bash", &["-n", script.to_str().unwrap()]);
    let text = std::fs::read_to_string(&script).unwrap();
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("bootstrap lacks {needle}"));
    assert!(at("kf_require k3s /usr/local/bin/k3s") < at("kf_restart wg-quick@kforge0.service"));
    assert!(at("kf_restart wg-quick@kforge0.service") < at("kf_restart kforge-firewall.service"));
    assert!(at("kf_restart kforge-firewall.service") < at("kf_restart k3s.service"));
}

#[test]
fn a_pinned_download_is_fetched_and_verified_by_sha256() {
    let ctx = TestContext::with_example("homelab");
    let (sum, arm) = ("a".repeat(64), "b".repeat(64));
    ctx.edit_spec("amd64: {path: ./k3s}", &format!("amd64: {{url: \"https://example.invalid/k3s\", sha256: {sum}}}"));
    ctx.edit_spec(
        "arm64: {path: ./k3s-arm64}",
        &format!("arm64: {{url: \"https://example.invalid/k3s-arm64\", sha256: {arm}}}"),
    );
    let out = ctx.render("out");
    // edge-1's architecture is not in the file: its bootstrap fetches the one for `uname -m`.
    let text = std::fs::read_to_string(out.join("edge-1/var/lib/kforge/bootstrap.sh")).unwrap();
    assert!(
        text.contains(&format!(
            "kf_arch_is amd64 && kf_fetch k3s https://example.invalid/k3s {sum} /usr/local/bin/k3s 755"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "kf_arch_is arm64 && kf_fetch k3s https://example.invalid/k3s-arm64 {arm} /usr/local/bin/k3s 755"
        )),
        "{text}"
    );
    let plan = ctx.kforge(&["plan"]).success().stdout;
    assert!(!plan.contains("cloud-init user-data cannot carry"), "a URL artifact travels fine");
}

/// A provider's size limit: render refuses (writing nothing) with the way out, and
/// with `--gzip` the same user-data fits, compressed byte for byte from the plain one.
#[test]
fn user_data_over_a_size_limit_is_refused_and_fits_gzipped() {
    let ctx = TestContext::with_example("homelab");
    let plain = ctx.render("plain");
    let over = ctx.kforge(&["render", "--out", "limited", "--user-data-limit", "ec2"]);
    assert_eq!(over.code, 1, "{}", over.stdout);
    assert!(
        over.stderr.contains("user-data over --user-data-limit on 3 nodes; nothing was written"),
        "{}",
        over.stderr
    );
    assert!(
        over.stderr.contains("cp-1: user-data is ") && over.stderr.contains("KiB but the limit is 16.0 KiB"),
        "{}",
        over.stderr
    );
    assert!(over.stderr.contains("help: render with --gzip: compressed it is"), "{}", over.stderr);
    assert!(!ctx.path("limited").exists(), "nothing is written over the limit");
    let bad = ctx.kforge(&["render", "--out", "x", "--user-data-limit", "lots"]);
    assert!(bad.code != 0 && bad.stderr.contains("give bytes (16384), KiB (16K), or `ec2`"), "{}", bad.stderr);

    let fits = ctx.kforge(&["render", "--out", "gz", "--gzip", "--user-data-limit", "16K"]).success();
    assert!(fits.stdout.contains("gzipped") && !fits.stdout.contains("over EC2"), "{}", fits.stdout);
    for node in ["cp-1", "edge-1", "pi-1"] {
        let gz = ctx.path(&format!("gz/{node}/user-data.gz"));
        assert!(std::fs::metadata(&gz).unwrap().len() <= 16 * 1024, "{node}");
        assert!(!ctx.path(&format!("gz/{node}/user-data")).exists());
        let text = run("gzip", &["-dc", gz.to_str().unwrap()]);
        assert_eq!(text, std::fs::read_to_string(plain.join(node).join("user-data")).unwrap(), "{node}");
    }
}
