//! `kforge lint`: the corpus of manifests and cluster files, good and bad, each with
//! its exact findings as a snapshot, plus what the output formats promise.
//!
//! A case file starts with `# expect: RULE, …` (or `clean`) and, for manifests linted
//! against a topology, `# with: NAME` (a cluster file under `lint/clusters/`). A case
//! that is itself a kforge cluster file is linted with `-f`.

use crate::util::TestContext;

/// The day the end-of-life table is read against, so snapshots do not age.
const TODAY: &str = "2026-11-24";

struct Case {
    expect: Vec<String>,
    with: Option<String>,
}

fn header(text: &str) -> Case {
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    Case {
        expect: field("# expect:").expect("every case says what it expects").split(", ").map(String::from).collect(),
        with: field("# with:").map(String::from),
    }
}

fn lint_case(path: &std::path::Path) -> (i32, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let case = header(&text);
    let ctx = TestContext::new().env("KFORGE_TODAY", TODAY);
    let name = path.file_name().unwrap().to_str().unwrap();
    ctx.write(name, &text);
    let mut args = vec!["lint"];
    if text.contains("apiVersion: kforge.dev/") {
        args.extend(["-f", name]);
    } else {
        if let Some(with) = &case.with {
            let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/it/lint/clusters")
                .join(format!("{with}.yaml"));
            std::fs::copy(base, ctx.path("kforge.yaml")).unwrap();
            args.extend(["-f", "kforge.yaml"]);
        }
        args.push(name);
    }
    let out = ctx.kforge(&args);
    assert!(!ctx.path("kforge.secrets.yaml").exists(), "{name}: lint must write nothing");
    let rules: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once("]: "))
        .filter_map(|(h, _)| h.split_once('['))
        .map(|(_, r)| r)
        .collect();
    if case.expect == ["clean"] {
        assert_eq!(out.code, 0, "{name}: expected no finding\n{}{}", out.stdout, out.stderr);
        assert!(rules.iter().all(|r| r.contains("random-nodeport")), "{name}: {rules:?}");
    } else {
        for e in &case.expect {
            assert!(rules.contains(&e.as_str()), "{name}: expected a `{e}` finding, got {rules:?}\n{}", out.stdout);
        }
        let has = |level: &str| out.stdout.lines().any(|l| l.starts_with(&format!("{level}[")));
        let want = if has("error") {
            2
        } else if has("warning") {
            3
        } else {
            0
        };
        assert_eq!(out.code, want, "{name}: exit code by severity\n{}", out.stdout);
        assert!(
            out.stdout.contains(&format!("--> {name}:")) || out.stdout.contains("--> kforge.yaml:"),
            "{name}: file:line:column\n{}",
            out.stdout
        );
        assert!(out.stdout.contains("= fix: "), "{name}: every finding says how to fix it\n{}", out.stdout);
    }
    (out.code, out.stdout)
}

#[test]
fn every_corpus_case_has_its_exact_findings() {
    let mut seen = 0;
    insta::glob!("lint/cases/*.yaml", |path| {
        seen += 1;
        let (code, stdout) = lint_case(path);
        insta::assert_snapshot!(format!("exit {code}\n{stdout}"));
    });
    assert!(seen >= 40, "the lint corpus has {seen} cases; keep at least 40");
}

fn corpus(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/lint/cases").join(name))
        .unwrap()
}

/// The same findings as JSON and as SARIF 2.1.0 (what code-scanning tools read):
/// rule, level, file, line and column agree with the text output.
#[test]
fn json_and_sarif_carry_the_same_findings() {
    let ctx = TestContext::new().env("KFORGE_TODAY", TODAY);
    ctx.write("ingress.yaml", &corpus("11-ingress-allowlist-bad-cidr.yaml"));
    let json = ctx.kforge(&["lint", "-o", "json", "ingress.yaml"]);
    assert_eq!(json.code, 2, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let bad =
        v["findings"].as_array().unwrap().iter().find(|f| f["rule"] == "ingress-nginx/invalid-annotation").unwrap();
    assert_eq!(
        (bad["level"].as_str(), bad["line"].as_u64(), bad["column"].as_u64()),
        (Some("error"), Some(9), Some(57))
    );
    assert!(bad["message"].as_str().unwrap().contains("`192.168.1.0/33` is not a CIDR"));

    let sarif = ctx.kforge(&["lint", "-o", "sarif", "ingress.yaml"]);
    assert_eq!(sarif.code, 2);
    let s: serde_json::Value = serde_json::from_str(&sarif.stdout).unwrap();
    assert_eq!(s["version"], "2.1.0");
    let run = &s["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "kforge");
    let rules: Vec<&str> =
        run["tool"]["driver"]["rules"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(rules, ["ingress-nginx/invalid-annotation", "ingress-nginx/retired"]);
    let result = run["results"].as_array().unwrap().iter().find(|r| r["level"] == "error").unwrap();
    let loc = &result["locations"][0]["physicalLocation"];
    assert_eq!(loc["artifactLocation"]["uri"], "ingress.yaml");
    assert_eq!((loc["region"]["startLine"].as_u64(), loc["region"]["startColumn"].as_u64()), (Some(9), Some(57)));
    assert!(result["message"]["text"].as_str().unwrap().contains("Fix: list CIDRs"));
}

/// `kustomize build | kforge lint -`, and a directory walked for *.yaml; the
/// GitOps path beside the cluster file when no PATHS are given.
#[test]
fn manifests_come_from_stdin_directories_and_the_gitops_path() {
    use std::io::Write;
    let ctx = TestContext::with_example("hardway").env("KFORGE_TODAY", TODAY);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kforge"))
        .args(["lint", "-"])
        .current_dir(ctx.path(""))
        .env("KFORGE_TODAY", TODAY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(corpus("04-removed-cronjob-v1beta1.yaml").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("--> <stdin>:3:13"), "{stdout}");
    assert!(stdout.contains("this cluster runs v1.37.2"), "the cluster file beside is the target: {stdout}");

    // The example's spec.gitops.path is ./clusters/hardway: a checkout beside the file.
    std::fs::create_dir_all(ctx.path("clusters/hardway/apps")).unwrap();
    ctx.write("clusters/hardway/apps/web.yaml", &corpus("13-ingress-bool-yes.yaml"));
    ctx.write("clusters/hardway/.hidden.yaml", "apiVersion: batch/v1beta1\nkind: CronJob\n");
    ctx.write("clusters/hardway/README.md", "not a manifest");
    let out = ctx.kforge(&["lint"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stdout.contains("clusters/hardway/apps/web.yaml:9:"), "{}", out.stdout);
    assert!(!out.stdout.contains("CronJob"), "hidden files are skipped: {}", out.stdout);
}

/// kforge's own rendered manifests (CoreDNS, RBAC) pass its own lint.
#[test]
fn the_examples_and_their_rendered_manifests_lint_clean() {
    for example in ["hardway", "homelab"] {
        let ctx = TestContext::with_example(example).env("KFORGE_TODAY", TODAY);
        let out = ctx.kforge(&["lint", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let bad: Vec<_> = v["findings"].as_array().unwrap().iter().filter(|f| f["level"] != "note").collect();
        assert!(bad.is_empty(), "{example}: {bad:#?}");
    }
}
