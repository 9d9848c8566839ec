//! A binary that is not the cluster file's release is refused before anything starts:
//! the check kforge renders, run against the real kube-apiserver and kubectl.

use std::path::Path;

use crate::util::TestContext;

/// The rendered check for the binary at `path` at `version` in `script`, run with that
/// path pointing at `real` (the line's path is rewritten to a temporary copy's: this
/// machine has no /opt/kforge and its /usr/local/bin stays as it is).
fn run_check(script: &str, path: &str, version: &str, real: &Path) -> (bool, String) {
    let marker = format!("# check that {path} is {version}");
    let line = script.lines().skip_while(|l| *l != marker).nth(1);
    let line = line.unwrap_or_else(|| panic!("no version check for {path} in the bootstrap"));
    assert!(real.exists(), "{} missing: scripts/test builds it", real.display());
    let bin = tempfile::tempdir().unwrap();
    let name = path.rsplit('/').next().unwrap();
    let here = bin.path().join(name);
    std::os::unix::fs::symlink(real, &here).unwrap();
    let shell = format!(
        "fail() {{ echo \"kforge: error: $*\" >&2; exit 1; }} && {}",
        line.replace(path, here.to_str().unwrap())
    );
    let out = std::process::Command::new("bash").args(["-c", &shell]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).replace(here.to_str().unwrap(), path))
}

fn real(binary: &str) -> std::path::PathBuf {
    kforge_lab::components_dir(kforge_lab::HARDWAY_VERSION).join(binary)
}

fn bootstrap(ctx: &TestContext, node: &str) -> String {
    let out = ctx.render("out");
    std::fs::read_to_string(out.join(node).join(Path::new("var/lib/kforge/bootstrap.sh"))).unwrap()
}

#[test]
fn a_binary_of_another_release_is_refused_before_any_unit_starts() {
    let ctx = TestContext::with_example("hardway");
    let script = bootstrap(&ctx, "controller-0");
    // The checks come in the artifacts phase, before the first unit is (re)started.
    let first_start = script.find("\nkf_unchanged ").expect("units start in the bootstrap");
    // Each release's programs in a directory of their own; kubectl at its stable path.
    let path = |binary: &str, version: &str| match binary {
        "kubectl" => "/usr/local/bin/kubectl".to_string(),
        _ => format!("/opt/kforge/kubernetes/{version}/bin/{binary}"),
    };
    for binary in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"] {
        let at = script.find(&format!("# check that {} is v1.37.2", path(binary, "v1.37.2"))).unwrap();
        assert!(at < first_start, "{binary} is checked after a unit starts");
    }
    // The right release passes; the same binaries under a file saying v1.36.3 do not.
    for binary in ["kube-apiserver", "kubectl"] {
        let (ok, said) = run_check(&script, &path(binary, "v1.37.2"), "v1.37.2", &real(binary));
        assert!(ok, "{binary} v1.37.2 refused: {said}");
    }
    ctx.edit_spec("version: v1.37.2", "version: v1.36.3");
    let older = bootstrap(&ctx, "controller-0");
    let (ok, said) = run_check(&older, &path("kube-apiserver", "v1.36.3"), "v1.36.3", &real("kube-apiserver"));
    assert!(!ok);
    assert_eq!(
        said.trim_end(),
        "kforge: error: /opt/kforge/kubernetes/v1.36.3/bin/kube-apiserver reports 'Kubernetes v1.37.2', but the cluster file says v1.36.3 \
         (spec.distribution.version): install the v1.36.3 binary (spec.artifacts.kube-apiserver) or change the version; \
         nothing was started"
    );
    let (ok, said) = run_check(&older, &path("kubectl", "v1.36.3"), "v1.36.3", &real("kubectl"));
    assert!(!ok && said.contains("reports 'Client Version: v1.37.2', but the cluster file says v1.36.3"), "{said}");
}

#[test]
fn the_k3s_check_reads_k3s_version_line() {
    // K3s prints `k3s version v1.36.4+k3s1 (abcdef12)` then `go version …`
    // (pkg/cli/cmds/root.go); kforge's stand-in prints its line in that form, with a
    // version no K3s release has: refused, and the message quotes what it said.
    let ctx = TestContext::with_example("homelab");
    let script = bootstrap(&ctx, "cp-1");
    let stand_in = Path::new(env!("CARGO_BIN_EXE_kforge")).with_file_name("kforge-k3s-stand-in");
    let (ok, said) = run_check(&script, "/usr/local/bin/k3s", "v1.36.4+k3s1", &stand_in);
    assert!(!ok);
    assert!(
        said.contains(
            "/usr/local/bin/k3s reports 'k3s version v0.0.0-kforge-stand-in', but the cluster file says v1.36.4+k3s1"
        ),
        "{said}"
    );
}
