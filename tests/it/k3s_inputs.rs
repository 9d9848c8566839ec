//! kforge's K3s files, read by the programs K3s embeds. No K3s binary can be built or
//! downloaded here, but K3s runs the upstream kube-apiserver and etcd: these tests start
//! the real kube-apiserver v1.37 and v1.36 (K3s's current lines embed both) and etcd
//! 3.6 on the TLS set and encryption config kforge renders for a K3s server, with the
//! flags K3s gives them (pkg/daemons/control/server.go), and the leaf certificates K3s
//! would mint from kforge's CAs minted here by openssl the same way (CN, O, usages and
//! SANs of pkg/daemons/control/deps/deps.go). docs/k3s.md lists each input and what
//! checks it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{TestContext, run, run_with_input};

/// The Kubernetes versions whose kube-apiserver reads kforge's K3s files.
const APISERVERS: [&str; 2] = ["v1.37.2", "v1.36.3"];
const STAGED_TLS: &str = "var/lib/kforge/handover/var/lib/rancher/k3s/server/tls";

/// `scripts/components` puts each release's programs in bin-VERSION/ (v1.37.2 with its
/// etcd and kubectl; v1.36.3 with `--cluster-only v1.36.3`).
fn apiserver(version: &str) -> PathBuf {
    let p = kforge_lab::components_dir(version).join("kube-apiserver");
    assert!(p.exists(), "{} missing: scripts/components --cluster-only {version} builds it", p.display());
    p
}

fn tool(name: &str) -> PathBuf {
    let p = kforge_lab::components_dir(kforge_lab::HARDWAY_VERSION).join(name);
    assert!(p.exists(), "{} missing: scripts/components {} builds it", p.display(), kforge_lab::HARDWAY_VERSION);
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A program this test started: killed when the test ends, however it ends.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(program: &Path, args: &[String], log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        Daemon { child, log }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Waits for the program to exit by itself (it should refuse its input).
    fn exit_within(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A leaf signed by `ca` (a kforge CA's cert and key files) with openssl, as K3s's
/// certutil makes one: an EC P-256 key, the subject, the usages, the SANs.
fn mint(dir: &Path, name: &str, ca: (&Path, &Path), subject: &str, usage: &str, sans: &str) -> (PathBuf, PathBuf) {
    let (crt, key, csr, ext) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.ext")),
    );
    let mut extensions = format!("keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n");
    if !sans.is_empty() {
        extensions.push_str(&format!("subjectAltName={sans}\n"));
    }
    std::fs::write(&ext, extensions).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    run("openssl", &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &s(&key)]);
    run("openssl", &["req", "-new", "-key", &s(&key), "-subj", subject, "-out", &s(&csr)]);
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(ca.0),
            "-CAkey",
            &s(ca.1),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&crt),
        ],
    );
    (crt, key)
}

/// The first server's K3s TLS set of an example, as rendered, and the certificates
/// K3s would make from it.
struct K3sServer {
    _ctx: TestContext,
    staged: PathBuf,
    certs: PathBuf,
    encryption_config: Option<PathBuf>,
    service_cidr: String,
    mesh_ip: String,
    token_hashes: Vec<String>,
}

impl K3sServer {
    fn render(example: &str) -> K3sServer {
        let ctx = TestContext::with_example(example);
        let out = ctx.render("out");
        let plan: serde_json::Value =
            serde_json::from_str(&ctx.kforge(&["plan", "-o", "json"]).success().stdout).unwrap();
        let first = plan["init_server"].as_str().unwrap().to_string();
        let me = plan["nodes"].as_array().unwrap().iter().find(|n| n["node"] == first.as_str()).unwrap();
        let mesh_ip = me["meshIp"].as_str().unwrap().to_string();
        let node = out.join(&first);
        let encryption = node.join("var/lib/kforge/handover/var/lib/rancher/k3s/server/cred/encryption-config.json");
        // Every node's token pins the server CA by the sha256 of the file's bytes: what
        // K3s's /cacerts serves (the server-ca.crt K3s reads, which kforge placed).
        let token_hashes = plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let t = std::fs::read_to_string(out.join(n["node"].as_str().unwrap()).join("etc/kforge/k3s/token"))
                    .unwrap();
                t.trim().strip_prefix("K10").unwrap().split("::").next().unwrap().to_string()
            })
            .collect();
        let config = std::fs::read_to_string(node.join("etc/rancher/k3s/config.yaml")).unwrap();
        let service_cidr = config.lines().find_map(|l| l.strip_prefix("service-cidr: ")).unwrap().trim().to_string();
        let certs = ctx.path("k3s-made");
        std::fs::create_dir_all(&certs).unwrap();
        K3sServer {
            staged: node.join(STAGED_TLS),
            certs,
            encryption_config: encryption.exists().then_some(encryption),
            service_cidr,
            mesh_ip,
            token_hashes,
            _ctx: ctx,
        }
    }

    fn ca(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.staged.join(format!("{name}.crt")), self.staged.join(format!("{name}.key")))
    }

    fn mint(&self, name: &str, ca: &str, subject: &str, usage: &str, sans: &str) -> (PathBuf, PathBuf) {
        let (crt, key) = self.ca(ca);
        mint(&self.certs, name, (&crt, &key), subject, usage, sans)
    }
}

/// etcd 3.6 as K3s runs it embedded: client TLS from etcd/server-ca (server-client.crt,
/// CN etcd-server), peer TLS from etcd/peer-ca (peer-server-client.crt), client
/// certificates required on both.
struct Etcd {
    daemon: Daemon,
    url: String,
    client: (PathBuf, PathBuf),
    ca: PathBuf,
}

impl Etcd {
    fn start(k3s: &K3sServer) -> Etcd {
        let sans = "IP:127.0.0.1,DNS:localhost,DNS:kine.sock";
        let server = k3s.mint("etcd-server-client", "etcd/server-ca", "/CN=etcd-server", "serverAuth,clientAuth", sans);
        let peer = k3s.mint("etcd-peer-server-client", "etcd/peer-ca", "/CN=etcd-peer", "serverAuth,clientAuth", sans);
        let client = k3s.mint("etcd-client", "etcd/server-ca", "/CN=etcd-client", "clientAuth", "");
        let (c, p) = (free_port(), free_port());
        let url = format!("https://127.0.0.1:{c}");
        let peer_url = format!("https://127.0.0.1:{p}");
        let s = |p: &Path| p.display().to_string();
        let args: Vec<String> = [
            "--name=k3s-input-test".into(),
            format!("--data-dir={}", s(&k3s.certs.join("etcd-data"))),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=k3s-input-test={peer_url}"),
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", s(&k3s.ca("etcd/server-ca").0)),
            format!("--cert-file={}", s(&server.0)),
            format!("--key-file={}", s(&server.1)),
            "--peer-client-cert-auth".into(),
            format!("--peer-trusted-ca-file={}", s(&k3s.ca("etcd/peer-ca").0)),
            format!("--peer-cert-file={}", s(&peer.0)),
            format!("--peer-key-file={}", s(&peer.1)),
        ]
        .into();
        let daemon = Daemon::start(&tool("etcd"), &args, k3s.certs.join("etcd.log"));
        let etcd = Etcd { daemon, url, client, ca: k3s.ca("etcd/server-ca").0 };
        wait_until(
            30,
            "etcd healthy with kforge's etcd CAs",
            || etcd.ctl(&["endpoint", "health"]).is_ok(),
            || etcd.daemon.log(),
        );
        etcd
    }

    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(tool("etcdctl"));
        cmd.args([
            format!("--endpoints={}", self.url),
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.client.0.display()),
            format!("--key={}", self.client.1.display()),
        ])
        .args(args);
        stdout_or_stderr(cmd)
    }
}

fn wait_until(secs: u64, what: &str, mut ready: impl FnMut() -> bool, log: impl Fn() -> String) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < until, "not {what} within {secs} s; its log:\n{}", tail(&log(), 40));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last `lines` lines of a program's log, after its error lines (klog's `E…`,
/// `Error:`): what a failure report needs first.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let errors: Vec<&str> =
        all.iter().copied().filter(|l| l.starts_with('E') || l.contains("Error:")).take(10).collect();
    format!("{}\n…\n{}", errors.join("\n"), all[all.len().saturating_sub(lines)..].join("\n"))
}

/// kube-apiserver with the flags K3s gives it, pointed at kforge's files.
fn apiserver_args(k3s: &K3sServer, etcd: &Etcd, service_key: &Path, port: u16) -> Vec<String> {
    let s = |p: &Path| p.display().to_string();
    let proxy = k3s.mint("client-auth-proxy", "request-header-ca", "/CN=system:auth-proxy", "clientAuth", "");
    let kubelet_client =
        k3s.mint("client-kube-apiserver", "client-ca", "/O=system:masters/CN=system:apiserver", "clientAuth", "");
    // K3s mints its API serving certificate from the server CA kforge placed (kforge
    // writes none: K3s re-issues it in its own renewal window).
    let serving = k3s.mint(
        "serving-kube-apiserver",
        "server-ca",
        "/CN=kube-apiserver",
        "serverAuth",
        &format!("DNS:localhost,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:{}", k3s.mesh_ip),
    );
    let cert_dir = k3s.certs.join(format!("temporary-certs-{port}"));
    let mut args: Vec<String> = vec![
        format!("--cert-dir={}", s(&cert_dir)),
        "--allow-privileged=true".into(),
        "--anonymous-auth=false".into(),
        "--authorization-mode=Node,RBAC".into(),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        // K3s advertises the node IP (kforge: the mesh address); the API server only
        // writes it into the kubernetes Endpoints, so it need not exist here.
        format!("--advertise-address={}", k3s.mesh_ip),
        format!("--service-cluster-ip-range={}", k3s.service_cidr),
        format!("--etcd-servers={}", etcd.url),
        format!("--etcd-cafile={}", s(&etcd.ca)),
        format!("--etcd-certfile={}", s(&etcd.client.0)),
        format!("--etcd-keyfile={}", s(&etcd.client.1)),
        // kforge's files:
        format!("--tls-cert-file={}", s(&serving.0)),
        format!("--tls-private-key-file={}", s(&serving.1)),
        format!("--client-ca-file={}", s(&k3s.ca("client-ca").0)),
        format!("--requestheader-client-ca-file={}", s(&k3s.ca("request-header-ca").0)),
        "--requestheader-allowed-names=system:auth-proxy".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!("--proxy-client-cert-file={}", s(&proxy.0)),
        format!("--proxy-client-key-file={}", s(&proxy.1)),
        format!("--kubelet-certificate-authority={}", s(&k3s.ca("server-ca").0)),
        format!("--kubelet-client-certificate={}", s(&kubelet_client.0)),
        format!("--kubelet-client-key={}", s(&kubelet_client.1)),
        // K3s passes service.key to verify tokens and a copy of its first key
        // (service.current.key, the same key re-encoded by client-go) to sign them.
        format!("--service-account-key-file={}", s(service_key)),
        format!("--service-account-signing-key-file={}", s(service_key)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--api-audiences=https://kubernetes.default.svc.cluster.local,k3s".into(),
    ];
    if let Some(enc) = &k3s.encryption_config {
        args.push(format!("--encryption-provider-config={}", s(enc)));
    }
    args
}

/// A kubeconfig for the admin certificate K3s makes (CN system:admin, O system:masters,
/// from the client CA), trusting the server CA: the serving certificate must verify.
fn kubeconfig(k3s: &K3sServer, port: u16) -> PathBuf {
    let admin = k3s.mint("client-admin", "client-ca", "/O=system:masters/CN=system:admin", "clientAuth", "");
    let path = k3s.certs.join(format!("admin-{port}.kubeconfig"));
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k3s\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\n\
         users:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: k3s\n  context: {{cluster: k3s, user: admin}}\ncurrent-context: k3s\n",
        k3s.ca("server-ca").0.display(),
        admin.0.display(),
        admin.1.display()
    );
    std::fs::write(&path, cfg).unwrap();
    path
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(tool("kubectl"));
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display())).args(args);
    stdout_or_stderr(cmd)
}

/// What a client printed: its output when it succeeded, its error when not.
fn stdout_or_stderr(mut cmd: Command) -> Result<String, String> {
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_real_kube_apiserver_and_etcd_accept_kforges_k3s_server_files() {
    // Every check is recorded and the test goes on: one failure must not hide the rest.
    let mut failures: Vec<String> = Vec::new();
    let mut check = |what: String, ok: Result<(), String>| {
        if let Err(e) = ok {
            failures.push(format!("{what}: {e}"));
        }
    };
    for example in ["homelab", "ha"] {
        let k3s = K3sServer::render(example);
        let server_ca = std::fs::read(k3s.ca("server-ca").0).unwrap();
        let hash = kforge_core::hashing::sha256_hex(&server_ca);
        check(
            format!("{example}: every token pins the server-ca.crt K3s serves at /cacerts"),
            k3s.token_hashes
                .iter()
                .all(|h| *h == hash)
                .then_some(())
                .ok_or(format!("{:?} vs {hash}", k3s.token_hashes)),
        );
        let etcd = Etcd::start(&k3s);
        for version in APISERVERS {
            let what = |s: &str| format!("{example}, kube-apiserver {version}: {s}");
            let port = free_port();
            let service_key = k3s.staged.join("service.key");
            let mut daemon = Daemon::start(
                &apiserver(version),
                &apiserver_args(&k3s, &etcd, &service_key, port),
                k3s.certs.join(format!("apiserver-{version}.log")),
            );
            let kc = kubeconfig(&k3s, port);
            let started = Instant::now();
            let mut ready = false;
            while started.elapsed() < Duration::from_secs(90) {
                if kubectl(&kc, &["get", "--raw", "/readyz"]).is_ok_and(|o| o.trim() == "ok") {
                    ready = true;
                    break;
                }
                if daemon.exit_within(1).is_some() {
                    break;
                }
            }
            if !ready {
                check(what("/readyz ok with kforge's TLS set"), Err(tail(&daemon.log(), 30)));
                continue;
            }
            // The admin certificate K3s makes from kforge's client CA is system:masters.
            let who = kubectl(
                &kc,
                &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"],
            );
            check(
                what("client-ca: K3s's admin certificate is authenticated and authorised"),
                match &who {
                    Ok(w) if w.starts_with("system:admin ") && w.contains("system:masters") => {
                        kubectl(&kc, &["get", "namespaces", "-o", "name"]).map(|_| ())
                    }
                    other => Err(format!("{other:?}")),
                },
            );
            // Service-account tokens: signed with service.key, verified with its public half.
            let token = kubectl(&kc, &["create", "serviceaccount", &format!("probe-{port}")])
                .and_then(|_| kubectl(&kc, &["create", "token", &format!("probe-{port}")]));
            check(
                what("service.key signs and verifies service-account tokens"),
                token
                    .and_then(|t| {
                        // Only the token: no client certificate to fall back on.
                        let empty = k3s.certs.join("empty.kubeconfig");
                        std::fs::write(&empty, "").unwrap();
                        let server = format!("--server=https://127.0.0.1:{port}");
                        let ca = format!("--certificate-authority={}", k3s.ca("server-ca").0.display());
                        let who = ["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"];
                        kubectl(&empty, &[&[server.as_str(), ca.as_str(), "--token", t.trim()][..], &who[..]].concat())
                    })
                    .and_then(
                        |u| if u == format!("system:serviceaccount:default:probe-{port}") { Ok(()) } else { Err(u) },
                    ),
            );
            // The request-header CA: K3s's auth proxy (CN system:auth-proxy) may assert users.
            let proxy = k3s.certs.join("client-auth-proxy");
            let review = run_with_input(
                "curl",
                &[
                    "-sS",
                    "--cacert",
                    k3s.ca("server-ca").0.to_str().unwrap(),
                    "--cert",
                    proxy.with_extension("crt").to_str().unwrap(),
                    "--key",
                    proxy.with_extension("key").to_str().unwrap(),
                    "-H",
                    "X-Remote-User: alice",
                    "-H",
                    "Content-Type: application/json",
                    "-X",
                    "POST",
                    "--data-binary",
                    "@-",
                    &format!("https://127.0.0.1:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews"),
                ],
                r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
            );
            check(
                what("request-header-ca: the auth proxy's certificate asserts a user"),
                match serde_json::from_str::<serde_json::Value>(&review) {
                    Ok(r) if r["status"]["userInfo"]["username"] == "alice" => Ok(()),
                    _ => Err(review),
                },
            );
            // Secrets encrypted at rest with kforge's key (aescbc, key name aescbckey).
            let secret = format!("kforge-probe-{port}");
            let stored = kubectl(&kc, &["create", "secret", "generic", &secret, "--from-literal=k=v"])
                .and_then(|_| etcd.ctl(&["get", &format!("/registry/secrets/default/{secret}"), "--print-value-only"]));
            let expected = if k3s.encryption_config.is_some() { "k8s:enc:aescbc:v1:aescbckey:" } else { "k8s\0" };
            check(
                what("encryption-config.json: Secrets stored encrypted with kforge's key"),
                stored.and_then(|v| {
                    if v.starts_with(expected) { Ok(()) } else { Err(format!("stored as {:?}", &v[..v.len().min(40)])) }
                }),
            );
        }
    }
    assert!(failures.is_empty(), "{} check(s) failed:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn the_real_kube_apiserver_refuses_a_pkcs8_ec_service_key() {
    // What kforge wrote before: the bundle's PKCS#8 form. Every K3s server would stop.
    let k3s = K3sServer::render("homelab");
    let sec1 = std::fs::read_to_string(k3s.staged.join("service.key")).unwrap();
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
    let pkcs8 = k3s.certs.join("service-pkcs8.key");
    run(
        "openssl",
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            k3s.staged.join("service.key").to_str().unwrap(),
            "-out",
            pkcs8.to_str().unwrap(),
        ],
    );
    let etcd = Etcd::start(&k3s);
    let port = free_port();
    let mut daemon = Daemon::start(
        &apiserver(kforge_lab::HARDWAY_VERSION),
        &apiserver_args(&k3s, &etcd, &pkcs8, port),
        k3s.certs.join("apiserver-pkcs8.log"),
    );
    let status = daemon.exit_within(60).expect("kube-apiserver kept running with a PKCS#8 EC service key");
    assert!(!status.success());
    let log = daemon.log();
    assert!(log.contains("data does not contain any valid RSA or ECDSA public keys"), "{}", tail(&log, 20));
}
