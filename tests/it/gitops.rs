//! `spec.gitops` without a cluster: the keys kept in the bundle, what the operator is
//! shown (public halves only), and the order the plan installs Flux in.

use crate::util::{TestContext, tree};

/// The deploy key's secret part, as the bundle stores it (the base64 body of the
/// OpenSSH private key): it must never appear in any output.
fn private_key_body(ctx: &TestContext) -> String {
    let bundle = ctx.read("kforge.secrets.yaml");
    let v: serde_json::Value = serde_saphyr::from_str(&bundle).unwrap();
    let key = v["gitops"]["deployKey"].as_str().expect("the bundle holds the deploy key").to_string();
    key.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[test]
fn the_keys_are_created_once_and_only_their_public_halves_are_printed() {
    let ctx = TestContext::with_example("hardway");
    let key = ctx.kforge(&["gitops", "deploy-key"]).success();
    let public = key.stdout.trim().to_string();
    assert!(
        public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") && public.ends_with(" kforge-hardway-deploy"),
        "{public}"
    );
    let recipient = ctx.kforge(&["gitops", "recipient"]).success().stdout.trim().to_string();
    assert!(recipient.starts_with("age1") && recipient.len() == 62, "{recipient}");

    // Kept: asked again, the same keys; nothing is re-created.
    let again = ctx.kforge(&["gitops", "deploy-key"]).success();
    assert_eq!(again.stdout.trim(), public);
    assert!(again.stderr.is_empty(), "nothing new in the bundle: {}", again.stderr);
    assert_eq!(ctx.kforge(&["gitops", "recipient"]).success().stdout.trim(), recipient);

    // The bundle is 0600 and the private halves appear in no command's output.
    let secret = private_key_body(&ctx);
    let age_secret = {
        let v: serde_json::Value = serde_saphyr::from_str(&ctx.read("kforge.secrets.yaml")).unwrap();
        v["gitops"]["sopsAgeKey"].as_str().unwrap().to_string()
    };
    for args in [&["plan"][..], &["plan", "-o", "json"], &["render", "--out", "out"], &["explain", "controller-0"]] {
        let out = ctx.kforge(args).success();
        for s in [&secret[..40], &age_secret[..]] {
            assert!(
                !out.stdout.contains(s) && !out.stderr.contains(s),
                "`kforge {}` printed a private key",
                args.join(" ")
            );
        }
    }
    let explain = ctx.kforge(&["explain", "controller-0", "/etc/kforge/gitops/secrets.yaml"]);
    assert!(!explain.stdout.contains(&secret[..40]), "explain shows no secret file's content");
}

#[test]
fn a_cluster_without_gitops_has_no_keys_and_says_how_to_add_them() {
    let ctx = TestContext::with_example("homelab");
    let out = ctx.kforge(&["gitops", "deploy-key"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("has no spec.gitops") && out.stderr.contains("help: add spec.gitops"),
        "{}",
        out.stderr
    );
    assert!(!ctx.read("kforge.secrets.yaml").contains("deployKey"));
}

#[test]
fn flux_is_installed_then_waited_for_then_given_its_secrets_and_sync_objects() {
    let ctx = TestContext::with_example("hardway");
    let t = tree(&ctx.render("out"));
    let text = |p: &str| String::from_utf8(t[p].1.clone()).unwrap();

    // Only the initialising controller runs the GitOps steps.
    for node in ["controller-1", "controller-2", "worker-0"] {
        assert!(!t.contains_key(&format!("{node}/etc/kforge/gitops/secrets.yaml")), "{node}");
    }
    let secrets = "controller-0/etc/kforge/gitops/secrets.yaml";
    assert_eq!(t[secrets].0, 0o600, "the Secrets' manifest is root-only");
    let s = text(secrets);
    let public = ctx.kforge(&["gitops", "deploy-key"]).success().stdout;
    assert!(s.contains(&private_key_body(&ctx)[..40]), "the flux-system Secret carries the deploy key");
    assert!(s.contains(public.split_whitespace().nth(1).unwrap()), "and its public half");
    assert!(
        s.contains("github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"),
        "and the pinned host key: {s}"
    );
    assert!(s.contains("age.agekey") && s.contains("AGE-SECRET-KEY-1"), "the SOPS Secret");

    let sync = text("controller-0/var/lib/kforge/gitops/sync.yaml");
    for want in [
        "kind: GitRepository",
        "url: ssh://git@github.com/example/fleet.git",
        "branch: main",
        "kind: Kustomization",
        "path: ./clusters/hardway",
        "provider: sops",
        "name: sops-age",
    ] {
        assert!(sync.contains(want), "sync.yaml lacks {want}:\n{sync}");
    }

    // The order, in the script a host boots with: install, CRDs Established,
    // controllers Available, and only then the custom resources.
    let script = text("controller-0/var/lib/kforge/bootstrap.sh");
    let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("bootstrap lacks {needle}"));
    let install = at("-f /var/lib/kforge/gitops/install-0.yaml >/dev/null");
    let crds = at(
        "wait --for=condition=Established --timeout=120s crd/gitrepositories.source.toolkit.fluxcd.io crd/kustomizations.kustomize.toolkit.fluxcd.io",
    );
    let controllers = at(
        "-n flux-system wait --for=condition=Available --timeout=600s deployment/source-controller deployment/kustomize-controller",
    );
    let objects = at("-f /etc/kforge/gitops/secrets.yaml -f /var/lib/kforge/gitops/sync.yaml");
    // The example names no install: kforge's own is written, with Flux's published
    // images by tag (and no digest kforge could not check).
    let default = text("controller-0/var/lib/kforge/gitops/install-0.yaml");
    assert_eq!(default, kforge_core::gitops::FLUX_DEFAULT_INSTALL);
    for image in ["ghcr.io/fluxcd/source-controller:v1.9.3", "ghcr.io/fluxcd/kustomize-controller:v1.9.6"] {
        assert!(default.contains(&format!("image: {image}\n")), "{image}");
    }
    assert!(!default.contains("kforge.lab") && !default.contains("@sha256:"));
    assert!(install < crds && crds < controllers && controllers < objects, "out of order");
    assert!(
        at("kubectl --kubeconfig /etc/kforge/admin.kubeconfig get --raw=/readyz") < install,
        "after the API answers"
    );

    // A changed branch changes only the sync objects (and so the digest the steps
    // are stamped with); the keys and the Secrets stay.
    ctx.edit_spec("    branch: main", "    branch: production");
    let t2 = tree(&ctx.render("out"));
    assert_eq!(t2[secrets].1, t[secrets].1, "the Secrets are unchanged");
    assert!(
        String::from_utf8_lossy(&t2["controller-0/var/lib/kforge/gitops/sync.yaml"].1).contains("branch: production")
    );
}

#[test]
fn argo_cd_gets_the_same_deploy_key_and_pinned_host_keys_and_waits_for_its_statefulset() {
    let ctx = TestContext::with_example("hardway");
    ctx.edit_spec("    engine: flux", "    engine: argocd\n    install: [{path: ./argocd-install.yaml}]");
    let t = tree(&ctx.render("out"));
    let text = |p: &str| String::from_utf8(t[p].1.clone()).unwrap();
    let secrets = text("controller-0/etc/kforge/gitops/secrets.yaml");
    assert!(secrets.contains("argocd.argoproj.io/secret-type: repository"), "{secrets}");
    assert!(
        secrets.contains("sshPrivateKey:") && secrets.contains(&private_key_body(&ctx)[..40]),
        "the same deploy key"
    );
    assert!(!secrets.contains("AGE-SECRET-KEY"), "Argo CD has no SOPS decryption: the age key is not handed to it");
    let sync = text("controller-0/var/lib/kforge/gitops/sync.yaml");
    assert!(sync.contains("name: argocd-ssh-known-hosts-cm"), "{sync}");
    assert!(
        sync.contains("github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
    );
    assert!(
        sync.contains("kind: Application")
            && sync.contains("targetRevision: main")
            && sync.contains("path: ./clusters/hardway")
    );
    let script = text("controller-0/var/lib/kforge/bootstrap.sh");
    let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("bootstrap lacks {needle}"));
    let crds =
        at("wait --for=condition=Established --timeout=120s crd/applications.argoproj.io crd/appprojects.argoproj.io");
    let deployments = at(
        "-n argocd wait --for=condition=Available --timeout=600s deployment/argocd-repo-server deployment/argocd-server deployment/argocd-redis",
    );
    let statefulset = at("-n argocd rollout status --timeout=600s statefulset/argocd-application-controller");
    let objects = at("-f /etc/kforge/gitops/secrets.yaml -f /var/lib/kforge/gitops/sync.yaml");
    assert!(crds < deployments && deployments < statefulset && statefulset < objects, "out of order");
    let status = ctx.kforge(&["gitops", "status"]);
    assert_eq!(status.code, 1);
    assert!(status.stderr.contains("argocd app get kforge"), "{}", status.stderr);
}

/// The default Flux install is what `scripts/components` assembles from Flux's Go
/// modules (built by scripts/test before the tests), with only the image names changed
/// from the lab's archives to Flux's published images.
#[test]
fn the_default_flux_install_is_the_assembly_from_fluxs_modules() {
    let assembled = kforge_lab::components_dir(kforge_lab::HARDWAY_VERSION).join("flux-install.yaml");
    let text = std::fs::read_to_string(&assembled)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/components v1.37.2 assembles it)", assembled.display()));
    let vendored = kforge_core::gitops::FLUX_DEFAULT_INSTALL;
    let body: String = vendored.lines().skip(3).map(|l| format!("{l}\n")).collect();
    assert_eq!(body, text.replace("kforge.lab/fluxcd/", "ghcr.io/fluxcd/"), "run scripts/vendor-flux-install");
}

/// Argo CD has no default install: left out, the file is refused at its line.
#[test]
fn argo_cd_without_an_install_manifest_is_refused() {
    let ctx = TestContext::with_example("hardway");
    ctx.edit_spec("    engine: flux", "    engine: argocd");
    let out = ctx.kforge(&["plan"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Argo CD's install manifest is missing (only Flux has a default)"), "{}", out.stderr);
}
