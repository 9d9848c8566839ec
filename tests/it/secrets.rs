//! The secrets bundle: created once, never regenerated, never printed.

use std::os::unix::fs::PermissionsExt;

use crate::util::TestContext;

/// Every secret as text that would give it away if printed: whole tokens and keys,
/// and each base64 line of every PEM private key.
fn needles(ctx: &TestContext) -> Vec<String> {
    let bundle = ctx.bundle();
    let mut v = Vec::new();
    for s in bundle.secret_values() {
        if s.contains("-----BEGIN") {
            v.extend(s.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(String::from));
        } else {
            v.push(s.to_string());
        }
    }
    assert!(v.len() > 20, "the bundle holds many secrets");
    v
}

#[test]
fn no_command_prints_a_secret() {
    let ctx = TestContext::new();
    let init = ctx.kforge(&["init", "--example", "homelab", "."]).success();
    let mut outputs = vec![("init".to_string(), init.stdout + &init.stderr)];
    for args in [
        vec!["check"],
        vec!["plan"],
        vec!["plan", "-o", "json"],
        vec!["render", "--out", "out"],
        vec!["kubeconfig", "--out", "admin.kubeconfig"],
        vec!["schema"],
        vec!["--help"],
    ] {
        let out = ctx.kforge(&args).success();
        outputs.push((args.join(" "), out.stdout + &out.stderr));
    }
    // Failures must not quote secrets either: a broken bundle, a broken spec.
    let bundle_text = ctx.read("kforge.secrets.yaml");
    let needles = needles(&ctx);
    ctx.write("kforge.secrets.yaml", &bundle_text.replacen("cluster: homelab", "cluster: homelab\nbogus: [", 1));
    let out = ctx.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    outputs.push(("plan (corrupt bundle)".into(), out.stdout + &out.stderr));
    for (cmd, text) in &outputs {
        for n in &needles {
            assert!(!text.contains(n.as_str()), "`kforge {cmd}` printed a secret");
        }
    }
    assert_eq!(
        ctx.read("kforge.secrets.yaml").len(),
        bundle_text.len() + "\nbogus: [".len(),
        "a corrupt bundle is left as it is"
    );
}

#[test]
fn bundle_is_0600_and_a_readable_one_is_refused() {
    let ctx = TestContext::with_example("homelab");
    let path = ctx.path("kforge.secrets.yaml");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ctx.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("readable by group or others (mode 0644)"), "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
}

#[test]
fn the_bundle_is_never_silently_regenerated() {
    let ctx = TestContext::with_example("homelab");
    let original = ctx.read("kforge.secrets.yaml");
    ctx.kforge(&["render", "--out", "out"]).success();
    assert_eq!(ctx.read("kforge.secrets.yaml"), original, "nothing new was needed, nothing changed");

    // A bundle from another cluster is refused, not replaced.
    ctx.edit_spec("name: homelab", "name: otherlab");
    let out = ctx.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("belongs to cluster `homelab`"), "{}", out.stderr);
    assert_eq!(ctx.read("kforge.secrets.yaml"), original);

    // init refuses to overwrite.
    let out = ctx.kforge(&["init", "--example", "homelab", "."]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
}

#[test]
fn age_passphrase_bundle_round_trips_and_needs_the_passphrase() {
    let ctx = TestContext::new().env("KFORGE_AGE_PASSPHRASE", "correct horse battery staple");
    ctx.kforge(&["init", "--example", "homelab", "."]).success();
    assert!(!ctx.path("kforge.secrets.yaml").exists());
    let sealed = ctx.read("kforge.secrets.age");
    assert!(sealed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"), "armored, so it can be committed");
    assert!(!sealed.contains("PRIVATE KEY"));
    let first = ctx.kforge(&["kubeconfig"]).success().stdout;
    let second = ctx.kforge(&["kubeconfig"]).success().stdout;
    assert_eq!(first, second, "the same bundle is read back each time");

    let without = TestContext::new();
    std::fs::copy(ctx.path("kforge.yaml"), without.path("kforge.yaml")).unwrap();
    std::fs::copy(ctx.path("kforge.secrets.age"), without.path("kforge.secrets.age")).unwrap();
    let out = without.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("KFORGE_AGE_PASSPHRASE"), "{}", out.stderr);
    let wrong = without.env("KFORGE_AGE_PASSPHRASE", "wrong");
    let out = wrong.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot decrypt"), "{}", out.stderr);
}

#[test]
fn age_identity_bundle_is_sealed_to_the_identity() {
    let ctx = TestContext::new();
    let identity = age::x25519::Identity::generate();
    use age::secrecy::ExposeSecret;
    ctx.write("id.txt", &format!("{}\n", identity.to_string().expose_secret()));
    let id_path = ctx.path("id.txt").display().to_string();
    let ctx = ctx.env("KFORGE_AGE_IDENTITY", &id_path);
    ctx.kforge(&["init", "--example", "ha", "."]).success();
    let sealed = std::fs::read(ctx.path("kforge.secrets.age")).unwrap();
    let plain = age::decrypt(&identity, &age_dearmor(&sealed)).expect("sealed to the identity's recipient");
    assert!(String::from_utf8(plain).unwrap().contains("kind: SecretsBundle"));
    // Adding a node re-seals the updated bundle to the same identity.
    ctx.edit_spec("  nodes:\n", "  nodes:\n    - {name: agent-9, role: agent, endpoint: 198.51.100.99}\n");
    ctx.kforge(&["secrets", "update"]).success();
    let plain = age::decrypt(&identity, &age_dearmor(&std::fs::read(ctx.path("kforge.secrets.age")).unwrap())).unwrap();
    assert!(String::from_utf8(plain).unwrap().contains("agent-9"));
}

fn age_dearmor(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    age::armor::ArmoredReader::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// A newcomer keeps the real bundle elsewhere and links to it: kforge writes through
/// the link, so the link and the bundle never diverge.
#[test]
fn a_symlinked_bundle_is_updated_through_the_link() {
    let ctx = TestContext::with_example("ha");
    std::fs::create_dir(ctx.path("vault")).unwrap();
    std::fs::rename(ctx.path("kforge.secrets.yaml"), ctx.path("vault/cluster.secrets.yaml")).unwrap();
    std::os::unix::fs::symlink("vault/cluster.secrets.yaml", ctx.path("kforge.secrets.yaml")).unwrap();

    ctx.edit_spec("  nodes:\n", "  nodes:\n    - {name: agent-9, role: agent, endpoint: 198.51.100.99}\n");
    ctx.kforge(&["secrets", "update"]).success();

    let link = std::fs::symlink_metadata(ctx.path("kforge.secrets.yaml")).unwrap();
    assert!(link.file_type().is_symlink(), "the link is still a link");
    let target = ctx.read("vault/cluster.secrets.yaml");
    assert!(target.contains("agent-9"), "the new node's keys went into the linked bundle");
    let mode = std::fs::metadata(ctx.path("vault/cluster.secrets.yaml")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(ctx.path("vault")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temp file beside the target: {leftovers:?}");
}

/// A link whose bundle is gone (an unmounted vault, a moved file) must not become a
/// brand-new PKI: that would silently replace every CA of a running cluster.
#[test]
fn a_dangling_bundle_link_is_refused_and_no_new_pki_is_made() {
    let ctx = TestContext::with_example("homelab");
    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/vault/kforge.secrets.yaml", ctx.path("kforge.secrets.yaml")).unwrap();
    for args in [&["plan"][..], &["render", "--out", "out"], &["kubeconfig"]] {
        let out = ctx.kforge(args);
        assert_eq!(out.code, 1, "kforge {args:?}");
        assert!(
            out.stderr.contains("is a symbolic link to /nonexistent/vault/kforge.secrets.yaml, which does not exist"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("does not create a new PKI"), "{}", out.stderr);
    }
    assert!(!ctx.path("out").exists(), "nothing was rendered");
    assert!(std::fs::read_link(ctx.path("kforge.secrets.yaml")).is_ok(), "the link is left as it was");
    assert!(!ctx.path("kforge.secrets.age").exists());
}

/// kforge never blocks on, or reads from, a FIFO or a device, linked or not, and a
/// directory in the bundle's place is not "no bundle".
#[test]
fn a_bundle_that_is_not_a_regular_file_is_refused() {
    let ctx = TestContext::with_example("homelab");
    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    crate::util::run("mkfifo", &["-m", "0600", ctx.path("secrets.fifo").to_str().unwrap()]);
    std::os::unix::fs::symlink("secrets.fifo", ctx.path("kforge.secrets.yaml")).unwrap();
    let started = std::time::Instant::now();
    let out = ctx.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is a FIFO (named pipe), not a regular file"), "{}", out.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "no hang on the FIFO");

    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", ctx.path("kforge.secrets.yaml")).unwrap();
    let out = ctx.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is a device, not a regular file"), "{}", out.stderr);

    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    std::fs::create_dir(ctx.path("kforge.secrets.yaml")).unwrap();
    let out = ctx.kforge(&["plan"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is a directory, not a regular file"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(ctx.path("kforge.secrets.yaml")).unwrap().count(), 0, "nothing written into it");
}
