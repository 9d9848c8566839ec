//! GitOps for real: the hardway lab with its forge (`lab up --example hardway --forge`),
//! Flux's source-controller and kustomize-controller built from their Go modules and
//! imported from image archives, and one `kforge apply` that ends with Flux following
//! the forge's repository. Then what an operator relies on: a push reaches the cluster
//! without kforge, SOPS secrets arrive decrypted, a wrong host key is refused, re-apply
//! is a no-op, and no private key shows in any output.

use std::time::{Duration, Instant};

use super::{Lab, totals};

const APP: &str = "clusters/lab/app.yaml";
const SECRET_VALUE: &str = "kforge-sops-plaintext-7f3a";

impl Lab {
    /// git on the workstation's clone of the forge's repository (the lab's key may push).
    fn git(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(self.ctx.path("fleet"))
            .env("GIT_SSH_COMMAND", format!("ssh -F {}", self.ctx.path("lab/ssh_config").display()))
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "git {}: {text}", args.join(" "));
        text
    }
}

fn app(greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: greeting, namespace: default}}\ndata: {{greeting: {greeting}}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: hello, namespace: default}}\n\
         spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: hello}}}}\n  template:\n    metadata: {{labels: {{app: hello}}}}\n    spec:\n      containers:\n        - {{name: hello, image: \"kforge.lab/busybox:1\", imagePullPolicy: Never, command: [sleep, \"3600\"]}}\n"
    )
}

/// The test's own timestamps from the API (RFC 3339, UTC, seconds): compared as text.
fn field(json: &str, pointer: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v.pointer(pointer).and_then(|x| x.as_str()).unwrap_or_else(|| panic!("{pointer} in {json}")).to_string()
}

#[test]
fn one_apply_ends_with_flux_following_the_lab_forge() {
    let lab = Lab::start("hardway", &["--forge"]);
    let sops = lab.ctx.path("lab/bin/sops");

    // The operator gives the forge the cluster's deploy key (read-only) and fills the
    // repository: an app, and a Secret encrypted to the cluster's age recipient. The keys
    // are made once, by the command that says it writes the bundle.
    let made = lab.ctx.kforge(&["secrets", "update", "-f", "lab/kforge.yaml"]).success().stderr;
    assert!(made.contains("new secrets bundle"), "{made}");
    let public = lab.ctx.kforge(&["gitops", "deploy-key", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(lab.ssh("forge", &format!("echo '{}' | forge-add-deploy-key", public.trim())).contains("read-only"));
    let recipient = lab.ctx.kforge(&["gitops", "recipient", "-f", "lab/kforge.yaml"]).success().stdout;
    let ws = lab.ctx.path("").display().to_string();
    let ssh = format!("ssh -F {}", lab.ctx.path("lab/ssh_config").display());
    let clone = std::process::Command::new("git")
        .args(["clone", "-q", "ssh://git@forge/srv/git/fleet.git", "fleet"])
        .current_dir(&ws)
        .env("GIT_SSH_COMMAND", &ssh)
        .output()
        .unwrap();
    assert!(clone.status.success(), "{}", String::from_utf8_lossy(&clone.stderr));
    lab.ctx.write("fleet/clusters/lab/kustomization.yaml", "resources: [app.yaml, secret.yaml]\n");
    lab.ctx.write(&format!("fleet/{APP}"), &app("hello"));
    lab.ctx.write(
        "secret.plain.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: app-secret, namespace: default}}\nstringData: {{password: {SECRET_VALUE}}}\n"),
    );
    let encrypted = std::process::Command::new(&sops)
        .args(["--encrypt", "--age", recipient.trim(), "--encrypted-regex", "^(data|stringData)$"])
        .arg(lab.ctx.path("secret.plain.yaml"))
        .output()
        .unwrap();
    assert!(encrypted.status.success(), "sops: {}", String::from_utf8_lossy(&encrypted.stderr));
    let encrypted = String::from_utf8(encrypted.stdout).unwrap();
    assert!(encrypted.contains("ENC[AES256_GCM") && !encrypted.contains(SECRET_VALUE), "{encrypted}");
    lab.ctx.write("fleet/clusters/lab/secret.yaml", &encrypted);
    lab.git(&["add", "."]);
    lab.git(&["-c", "user.name=ops", "-c", "user.email=ops@lab", "commit", "-q", "-m", "hello app and its secret"]);
    lab.git(&["push", "-q", "origin", "main"]);

    // The deploy key itself may fetch but never push (as a forge's read-only key).
    let bundle: serde_json::Value = serde_saphyr::from_str(&lab.ctx.read("lab/kforge.secrets.yaml")).unwrap();
    let deploy_key = bundle["gitops"]["deployKey"].as_str().unwrap().to_string();
    let age_key = bundle["gitops"]["sopsAgeKey"].as_str().unwrap().to_string();
    let key_file = lab.ctx.path("deploy_key");
    std::fs::write(&key_file, &deploy_key).unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let as_deploy_key = format!("{ssh} -o IdentityFile={} -o IdentitiesOnly=yes", key_file.display());
    let push = std::process::Command::new("git")
        .args(["push", "-q", "ssh://git@forge/srv/git/fleet.git", "main:refs/heads/intruder"])
        .current_dir(lab.ctx.path("fleet"))
        .env("GIT_SSH_COMMAND", format!("{as_deploy_key} -o IdentityFile=/dev/null"))
        .output()
        .unwrap();
    assert!(!push.status.success(), "the deploy key pushed");
    assert!(
        String::from_utf8_lossy(&push.stderr).contains("a deploy key may only fetch"),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );

    // Flux's controllers deliberately slow to become Available (minReadySeconds): the
    // GitRepository and Kustomization must still come only after them.
    let install = lab.ctx.read("lab/bin/flux-install.yaml");
    let slow = install.replace("\nspec:\n  replicas: 1\n", "\nspec:\n  minReadySeconds: 30\n  replicas: 1\n");
    assert_eq!(slow.matches("minReadySeconds: 30").count(), 2, "both controllers' Deployments");
    lab.ctx.write("lab/flux-install-slow.yaml", &slow);
    lab.edit_cluster(|c| c.spec.gitops.as_mut().unwrap().install[0].path = Some("./flux-install-slow.yaml".into()));

    // One apply on bare machines.
    let first = lab.apply(&[]);
    assert_eq!(first.code, 0, "apply failed:\n{}\n{}", first.stdout, first.stderr);
    // The long phase says what it waits for.
    assert!(
        first.stderr.contains("lab-1: gitops: apply Flux's install manifests; wait until Flux's CRDs are Established"),
        "{}",
        first.stderr
    );
    for secret in [&deploy_key.lines().nth(2).unwrap()[..40], &age_key[..]] {
        assert!(!first.stdout.contains(secret) && !first.stderr.contains(secret), "apply printed a private key");
    }
    let ns = "-n flux-system";
    for c in ["source-controller", "kustomize-controller"] {
        let deploy = lab.kubectl("lab-1", &format!("{ns} get deployment {c} -o json"));
        let available = serde_json::from_str::<serde_json::Value>(&deploy).unwrap()["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Available" && c["status"] == "True")
            .map(|c| c["lastTransitionTime"].as_str().unwrap().to_string())
            .expect("available");
        for kind in ["gitrepositories.source.toolkit.fluxcd.io", "kustomizations.kustomize.toolkit.fluxcd.io"] {
            let created = field(
                &lab.kubectl("lab-1", &format!("{ns} get {kind} flux-system -o json")),
                "/metadata/creationTimestamp",
            );
            assert!(created >= available, "{kind} created {created}, before {c} was Available at {available}");
        }
    }

    // Flux follows the repository: the app, its ConfigMap and the decrypted Secret.
    let applied = |lab: &Lab| {
        let get = "kubectl --kubeconfig /etc/kforge/admin.kubeconfig get deployment/hello configmap/greeting";
        lab.ssh_status("lab-1", get).0
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !applied(&lab) {
        assert!(Instant::now() < deadline, "Flux did not apply the repository in 180 s:\n{}", flux_diagnostics(&lab));
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(lab.kubectl("lab-1", "get configmap greeting -o jsonpath={.data.greeting}"), "hello");
    let password = lab.kubectl("lab-1", "get secret app-secret -o jsonpath={.data.password} | base64 -d");
    assert_eq!(password, SECRET_VALUE, "decrypted by kustomize-controller with the cluster's age key");
    let in_git = lab.ssh("forge", &format!("git -C /srv/git/fleet.git log -p --all | grep -c {SECRET_VALUE} || true"));
    assert_eq!(in_git.trim(), "0", "the repository never held the plaintext");
    let status = lab.ctx.kforge(&["gitops", "status", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(status.contains("source         ok    fetched main@sha1:"), "{status}");
    assert!(status.contains("kustomization  ok    applied main@sha1:"), "{status}");
    let whole = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
    assert!(whole.stdout.contains("gitops        ok      source fetched main@sha1:"), "{}", whole.stdout);

    // A push reaches the cluster within the interval (20 s), without kforge.
    lab.ctx.write(&format!("fleet/{APP}"), &app("bonjour"));
    lab.git(&["-c", "user.name=ops", "-c", "user.email=ops@lab", "commit", "-q", "-am", "greet in French"]);
    lab.git(&["push", "-q", "origin", "main"]);
    let pushed = Instant::now();
    lab.wait_for(90, "the pushed ConfigMap", || {
        lab.kubectl("lab-1", "get configmap greeting -o jsonpath={.data.greeting}") == "bonjour"
    });
    let took = pushed.elapsed();
    assert!(took < Duration::from_secs(60), "a push took {took:?} to arrive with a 20 s interval");

    // Re-apply: nothing written, nothing restarted, no step re-run; no key in any output.
    let again = lab.apply(&["-o", "json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let report: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(totals(&report), (0, 0), "second apply changed something: {report}");
    assert!(
        !again.stderr.contains("apply Flux") && !again.stdout.contains("KF ran"),
        "a GitOps step re-ran:\n{}",
        again.stderr
    );
    for out in [&again.stdout, &again.stderr, &status, &whole.stdout] {
        assert!(!out.contains(&deploy_key.lines().nth(2).unwrap()[..40]) && !out.contains(&age_key));
    }

    // Argo CD, the second engine: the objects kforge plans for `engine: argocd` are
    // accepted by this real API server with Argo CD's own CRDs (v3.5.7, from its Go
    // module) — a server-side dry run; Argo CD itself is not run here (docs/gitops.md).
    let crds = lab.ctx.read("lab/bin/argocd-crds.yaml");
    let kubectl = "kubectl --kubeconfig /etc/kforge/admin.kubeconfig";
    let (ok, out) = ssh_with_input(
        &lab,
        &format!("{kubectl} apply --server-side -f - && {kubectl} create namespace argocd"),
        &crds,
    );
    assert!(ok, "{out}");
    lab.kubectl(
        "lab-1",
        "wait --for=condition=Established --timeout=60s crd/applications.argoproj.io crd/appprojects.argoproj.io",
    );
    let mut argo = kforge_core::spec::parse("lab/kforge.yaml", &lab.ctx.read("lab/kforge.yaml")).unwrap().cluster;
    let g = argo.spec.gitops.as_mut().unwrap();
    g.engine = kforge_core::spec::GitOpsEngine::Argocd;
    g.controllers = None;
    lab.ctx.write("lab/argocd.yaml", &serde_saphyr::to_string(&argo).unwrap());
    lab.ctx.kforge(&["render", "-f", "lab/argocd.yaml", "--out", "argocd-out"]).success();
    let objects = format!(
        "{}---\n{}",
        lab.ctx.read("argocd-out/lab-1/etc/kforge/gitops/secrets.yaml"),
        lab.ctx.read("argocd-out/lab-1/var/lib/kforge/gitops/sync.yaml")
    );
    let dry_run = format!("{kubectl} apply --server-side --field-manager=kforge --dry-run=server -f -");
    let (ok, out) = ssh_with_input(&lab, &dry_run, &objects);
    assert!(ok, "the API server refused kforge's Argo CD objects:\n{out}");
    for accepted in
        ["secret/kforge-repository", "configmap/argocd-ssh-known-hosts-cm", "application.argoproj.io/kforge"]
    {
        assert!(out.contains(&format!("{accepted} serverside-applied (server dry run)")), "{out}");
    }
    // The dry run is a real check: an Application the CRD's schema forbids is refused.
    let (ok, out) = ssh_with_input(&lab, &dry_run, &objects.replace("prune: true", "prune: sometimes"));
    assert!(!ok && out.contains("prune"), "{out}");

    // The helper that fetches a host key to pin prints the forge's real key, labelled
    // unverified with its fingerprint (and kforge itself never used it).
    let scanned = lab.ctx.kforge(&["gitops", "host-key", &forge_ip(&lab)]).success();
    assert!(scanned.stderr.contains("UNVERIFIED") && scanned.stderr.contains("SHA256:"), "{}", scanned.stderr);
    let pinned = lab.ctx.read("lab/known_hosts");
    let pinned: Vec<&str> = pinned
        .lines()
        .find(|l| l.starts_with(&format!("{} ", forge_ip(&lab))))
        .unwrap()
        .split_whitespace()
        .take(3)
        .collect();
    assert!(
        scanned.stdout.lines().any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == pinned),
        "{}",
        scanned.stdout
    );

    // A forge whose host key is not the pinned one is refused, and status says so.
    let other_key = lab
        .ctx
        .read("lab/known_hosts")
        .lines()
        .find(|l| !l.contains(&forge_ip(&lab)))
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1
        .to_string();
    lab.edit_cluster(|c| c.spec.gitops.as_mut().unwrap().known_hosts = vec![format!("{} {other_key}", forge_ip(&lab))]);
    lab.apply(&[]).success();
    lab.wait_for(120, "source-controller to refuse the forge's host key", || {
        let s = lab.ctx.kforge(&["gitops", "status", "-f", "lab/kforge.yaml"]);
        s.code == 1 && s.stdout.contains("key mismatch")
    });
    let refused = lab.ctx.kforge(&["status", "-f", "lab/kforge.yaml"]);
    assert_eq!(refused.code, 2, "a failed check: exit 2\n{}", refused.stdout);
    assert!(
        refused.stdout.contains("gitops        FAIL    source not Ready:") && refused.stdout.contains("key mismatch"),
        "{}",
        refused.stdout
    );
}

fn forge_ip(lab: &Lab) -> String {
    lab.state.machines.iter().find(|m| m.forge).unwrap().ssh_ip.to_string()
}

/// What Flux says, for a failure message: kforge's view, the objects, the controllers' logs.
fn flux_diagnostics(lab: &Lab) -> String {
    let status = lab.ctx.kforge(&["gitops", "status", "-f", "lab/kforge.yaml"]);
    let k = "kubectl --kubeconfig /etc/kforge/admin.kubeconfig -n flux-system";
    let cluster = lab.ssh_status(
        "lab-1",
        &format!(
            "{k} get pods -o wide; {k} get gitrepositories,kustomizations -o yaml | grep -A6 'conditions:'; \
             {k} logs deploy/source-controller --tail=15; {k} logs deploy/kustomize-controller --tail=15"
        ),
    );
    format!("{}{}\n{}", status.stdout, status.stderr, cluster.1)
}

/// Run `cmd` on lab-1 with `input` on its standard input: (succeeded, stdout + stderr).
fn ssh_with_input(lab: &Lab, cmd: &str, input: &str) -> (bool, String) {
    use std::io::Write;
    let cfg = lab.ctx.path("lab/ssh_config");
    let mut child = std::process::Command::new("ssh")
        .args(["-F", cfg.to_str().unwrap(), "lab-1", cmd])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
