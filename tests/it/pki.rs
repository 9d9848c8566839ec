//! The PKI, checked by openssl and rustls-webpki — not by kforge's own code.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::util::{TestContext, run};

const TLS: &str = "var/lib/rancher/k3s/server/tls";
/// K3s owns its CA files after the first server's first start: a rendered tree stages
/// them (on the initialising server only) for the bootstrap to put in place once.
const CA_DIR: &str = "var/lib/kforge/handover/var/lib/rancher/k3s/server/tls";

fn openssl_text(cert: &Path) -> String {
    run("openssl", &["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"])
}

fn openssl_verify(ca: &Path, cert: &Path) {
    let out = run("openssl", &["verify", "-CAfile", ca.to_str().unwrap(), cert.to_str().unwrap()]);
    assert!(out.trim_end().ends_with(": OK"), "{out}");
}

/// Expires after `min_days` but before `max_days`, according to openssl.
fn assert_validity(cert: &Path, min_days: u64, max_days: u64) {
    let c = cert.to_str().unwrap();
    let still_valid = |days: u64| {
        std::process::Command::new("openssl")
            .args(["x509", "-in", c, "-noout", "-checkend", &(days * 86400).to_string()])
            .status()
            .unwrap()
            .success()
    };
    assert!(still_valid(min_days), "{c} expires before {min_days} days");
    assert!(!still_valid(max_days), "{c} is still valid after {max_days} days");
}

#[test]
fn openssl_verifies_every_chain_with_the_expected_names() {
    let ctx = TestContext::with_example("ha");
    let out = ctx.render("out");
    for ca in kforge_core::pki::Ca::ALL {
        let crt = out.join(format!("server-1/{CA_DIR}/{ca}.crt"));
        openssl_verify(&crt, &crt);
        let text = openssl_text(&crt);
        assert!(text.contains("CA:TRUE"), "{ca}: {text}");
        assert!(text.contains("ASN1 OID: prime256v1"), "{ca} is ECDSA P-256 by default");
        assert_validity(&crt, 3649, 3651);
    }
    // K3s mints its API serving certificate from the server CA itself (and re-issues it
    // in its own renewal window): kforge writes none, and never removes one.
    for server in ["server-1", "server-2", "server-3"] {
        for f in ["serving-kube-apiserver.crt", "serving-kube-apiserver.key"] {
            assert!(!out.join(format!("{server}/{TLS}/{f}")).exists(), "{server}: kforge wrote {f}");
        }
    }
    let plan: serde_json::Value = serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
    for node in plan["nodes"].as_array().unwrap().iter().filter(|n| n["controlPlane"] == true) {
        let released: Vec<&str> = node["released"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert!(released.contains(&"/var/lib/rancher/k3s/server/tls/serving-kube-apiserver.crt"), "{released:?}");
    }
}

#[test]
fn admin_kubeconfig_carries_a_system_masters_client_cert_for_the_mesh_api() {
    let ctx = TestContext::with_example("homelab");
    ctx.kforge(&["kubeconfig", "--out", "admin.kubeconfig"]).success();
    let kubeconfig: serde_json::Value = serde_saphyr::from_str(&ctx.read("admin.kubeconfig")).unwrap();
    assert_eq!(
        kubeconfig["clusters"][0]["cluster"]["server"], "https://10.4.0.1:6443",
        "first server's mesh address, not 127.0.0.1"
    );
    let b64 = |v: &serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()
    };
    let ca = b64(&kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]);
    let client = b64(&kubeconfig["users"][0]["user"]["client-certificate-data"]);
    ctx.write("admin.crt", std::str::from_utf8(&client).unwrap());
    ctx.write("ca.crt", std::str::from_utf8(&ca).unwrap());

    let out = ctx.render("out");
    assert_eq!(
        ca,
        std::fs::read(out.join(format!("cp-1/{CA_DIR}/server-ca.crt"))).unwrap(),
        "embedded CA is the server CA"
    );
    openssl_verify(&out.join(format!("cp-1/{CA_DIR}/client-ca.crt")), &ctx.path("admin.crt"));
    let text = openssl_text(&ctx.path("admin.crt"));
    assert!(text.contains("Subject: O = system:masters, CN = admin"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");

    // The client key in the kubeconfig belongs to the certificate.
    let key = b64(&kubeconfig["users"][0]["user"]["client-key-data"]);
    ctx.write("admin.key", std::str::from_utf8(&key).unwrap());
    let pub_from_cert = run("openssl", &["x509", "-in", ctx.path("admin.crt").to_str().unwrap(), "-noout", "-pubkey"]);
    let pub_from_key = run("openssl", &["pkey", "-in", ctx.path("admin.key").to_str().unwrap(), "-pubout"]);
    assert_eq!(pub_from_cert, pub_from_key);
}

#[test]
fn webpki_accepts_the_api_server_certificate_for_every_name_a_client_uses() {
    let ctx = TestContext::with_example("hardway");
    let out = ctx.render("out");
    let ca_der = CertificateDer::from_pem_file(out.join("controller-0/var/lib/kubernetes/ca.crt")).unwrap();
    let anchors = [webpki::anchor_from_trusted_cert(&ca_der).unwrap()];
    let now = UnixTime::now();
    for (controller, own) in
        [("controller-0", ["10.4.0.1", "203.0.113.20"]), ("controller-1", ["10.4.0.2", "203.0.113.21"])]
    {
        let der =
            CertificateDer::from_pem_file(out.join(format!("{controller}/var/lib/kubernetes/kube-apiserver.crt")))
                .unwrap();
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap_or_else(|e| panic!("{controller}: chain rejected: {e:?}"));
        // Every controller's names (one certificate behind the balancers), and the
        // in-cluster ones, the fully qualified Service name included.
        for name in
            ["kubernetes", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "10.32.0.1", "127.0.0.1"]
                .into_iter()
                .chain(own)
                .chain(["10.4.0.3", "203.0.113.22"])
        {
            let sn = ServerName::try_from(name).unwrap();
            cert.verify_is_valid_for_subject_name(&sn)
                .unwrap_or_else(|e| panic!("{controller} not valid for {name}: {e:?}"));
        }
        assert!(cert.verify_is_valid_for_subject_name(&ServerName::try_from("10.4.0.99").unwrap()).is_err());
        // A server certificate must not pass as a client certificate.
        assert!(
            cert.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None
            )
            .is_err()
        );
    }
    // K3s servers: the names K3s puts in the certificates it mints (tls-san).
    let ctx = TestContext::with_example("ha");
    let out = ctx.render("out");
    for (server, names) in [
        ("server-1", vec!["10.4.0.1", "server-1", "203.0.113.11"]),
        ("server-2", vec!["10.4.0.2", "server-2", "203.0.113.12", "10.4.0.1"]),
    ] {
        let config = std::fs::read_to_string(out.join(format!("{server}/etc/rancher/k3s/config.yaml"))).unwrap();
        for san in &names {
            assert!(
                config.contains(&format!("\"{san}\"")) || config.contains(&format!("- {san}")),
                "{server} tls-san lacks {san}"
            );
        }
    }
}

#[test]
fn join_tokens_pin_the_sha256_of_the_rendered_server_ca() {
    let ctx = TestContext::with_example("homelab");
    let out = ctx.render("out");
    let ca = out.join(format!("cp-1/{CA_DIR}/server-ca.crt"));
    let sum = run("sha256sum", &[ca.to_str().unwrap()]);
    let sum = sum.split_whitespace().next().unwrap();
    let server_token = std::fs::read_to_string(out.join("cp-1/etc/kforge/k3s/token")).unwrap();
    assert!(server_token.starts_with(&format!("K10{sum}::server:")), "server token does not pin the CA");
    for agent in ["edge-1", "pi-1"] {
        let token = std::fs::read_to_string(out.join(format!("{agent}/etc/kforge/k3s/token"))).unwrap();
        assert!(token.starts_with(&format!("K10{sum}::node:")), "{agent} token does not pin the CA");
        let secret = token.trim_end().rsplit(':').next().unwrap();
        let server_side = std::fs::read_to_string(out.join("cp-1/etc/kforge/k3s/agent-token")).unwrap();
        assert_eq!(secret, server_side.trim_end(), "agent joins with the server's agent token");
        assert!(
            !token.contains(server_token.trim_end().rsplit(':').next().unwrap()),
            "agents never hold the server token"
        );
    }
}

#[test]
fn rsa_keys_on_request() {
    let ctx = TestContext::new();
    ctx.kforge(&["init", "--example", "homelab", "."]).success();
    // A fresh cluster asking for RSA from the start (CAs are never re-keyed later).
    std::fs::remove_file(ctx.path("kforge.secrets.yaml")).unwrap();
    ctx.edit_spec("  secretsEncryption: true\n", "  secretsEncryption: true\n  pki: {keyAlgorithm: rsa-2048}\n");
    let out = ctx.render("out");
    let ca = out.join(format!("cp-1/{CA_DIR}/client-ca.crt"));
    // The admin's client certificate, as its kubeconfig carries it.
    let kubeconfig: serde_json::Value = serde_saphyr::from_str(&ctx.kforge(&["kubeconfig"]).success().stdout).unwrap();
    use base64::Engine;
    let cert = base64::engine::general_purpose::STANDARD
        .decode(kubeconfig["users"][0]["user"]["client-certificate-data"].as_str().unwrap())
        .unwrap();
    ctx.write("admin.crt", std::str::from_utf8(&cert).unwrap());
    let leaf = ctx.path("admin.crt");
    openssl_verify(&ca, &leaf);
    assert!(openssl_text(&leaf).contains("Public-Key: (2048 bit)"));
    assert!(openssl_text(&ca).contains("Public-Key: (2048 bit)"));
}
