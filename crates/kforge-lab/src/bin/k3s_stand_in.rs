//! STAND-IN for the k3s binary — NOT Kubernetes.
//!
//! No k3s binary can be obtained on the machines kforge is developed on, so the lab
//! tests install this at /usr/local/bin/k3s to exercise kforge's install mechanics:
//! the unit starts it (`k3s server` / `k3s agent`), it checks the files K3s would read
//! (config.yaml, token file, custom CAs on the initialising server and none on a
//! joining one), a server listens on its mesh address :6443,
//! an agent waits until it can reach its server's :6443 over the mesh, then it tells
//! systemd it is ready (Type=notify) and idles. What it verified is written to
//! /run/k3s-stand-in/status. It never claims to be a cluster.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONFIG: &str = "/etc/rancher/k3s/config.yaml";
const TLS: &str = "/var/lib/rancher/k3s/server/tls";
const DATASTORE: &str = "/var/lib/rancher/k3s/server/db";
/// Seconds to wait before telling systemd it is ready (absent: none).
const SLOW_START: &str = "/etc/kforge-lab/k3s-stand-in-slow-start";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-v") => println!("k3s version v0.0.0-kforge-stand-in (NOT Kubernetes)"),
        Some(role @ ("server" | "agent")) => {
            if let Err(e) = run(role) {
                eprintln!("k3s stand-in: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("k3s stand-in (kforge test double): usage: k3s server|agent|--version");
            std::process::exit(2);
        }
    }
}

fn run(role: &str) -> Result<(), String> {
    eprintln!("k3s STAND-IN ({role}): kforge's test double, not Kubernetes");
    let config = read_config()?;
    let get = |k: &str| config.get(k).cloned().ok_or_else(|| format!("{CONFIG} has no `{k}`"));
    let token_file = get("token-file")?;
    let token = std::fs::read_to_string(&token_file).map_err(|e| format!("{token_file}: {e}"))?;
    if !token.starts_with("K10") {
        return Err(format!("{token_file} does not hold a CA-pinned K10 token"));
    }
    let node_ip = get("node-ip")?;
    let mut verified = vec![format!("role={role}"), format!("node-ip={node_ip}"), "token=K10".into()];
    let listener = if role == "server" {
        // K3s's own custom-CA file names, listed here as K3s documents them (not taken
        // from kforge's list), so the stand-in checks what K3s would read. The server
        // that initialises the cluster reads them from disk; a joining server gets them
        // from the datastore, and K3s writes them only where tls/ is empty: placed by
        // anyone else, a later rotation would make them differ and stop K3s.
        let joining = config.contains_key("server");
        for ca in ["server-ca", "client-ca", "request-header-ca", "etcd/server-ca", "etcd/peer-ca"] {
            for ext in ["crt", "key"] {
                let p = format!("{TLS}/{ca}.{ext}");
                match (std::fs::metadata(&p), joining) {
                    (Ok(_), false) | (Err(_), true) => {}
                    (Err(e), false) => return Err(format!("custom CA file {p}: {e}")),
                    (Ok(_), true) => {
                        return Err(format!("{p} is on a joining server's disk: K3s takes it from the datastore"));
                    }
                }
            }
        }
        verified.push(if joining { "custom-cas=from-datastore" } else { "custom-cas=present" }.into());
        // K3s keeps a server's datastore (embedded etcd) here once it founded or joined
        // a cluster: what kforge reads to tell a running server from a reinstalled one.
        std::fs::create_dir_all(DATASTORE).map_err(|e| format!("{DATASTORE}: {e}"))?;
        // Binding the mesh address proves the mesh interface is up before we start.
        let l = TcpListener::bind((node_ip.as_str(), 6443)).map_err(|e| format!("listen {node_ip}:6443: {e}"))?;
        verified.push(format!("listening={node_ip}:6443"));
        Some(l)
    } else {
        None
    };
    if let Ok(server) = get("server") {
        // Joiners reach a server over the mesh before they are ready: directly, or
        // through kforge's registration balancer on 127.0.0.1, which accepts a
        // connection even with no server up, so only a server's banner counts.
        let hostport = server.trim_start_matches("https://").trim_end_matches('/').to_string();
        let addr = hostport.to_socket_addrs().map_err(|e| format!("{hostport}: {e}"))?.next().ok_or("no address")?;
        let mut tries = 0;
        while !answers_as_server(&addr) {
            tries += 1;
            if tries > 150 {
                return Err(format!("server {hostport} not reachable"));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        verified.push(format!("joined={hostport}"));
    }
    std::fs::create_dir_all("/run/k3s-stand-in").map_err(|e| e.to_string())?;
    std::fs::write("/run/k3s-stand-in/status", verified.join("\n") + "\n").map_err(|e| e.to_string())?;
    // A slow first start, as K3s's on a small host (importing images, founding etcd):
    // the tests put seconds here to see a bootstrap wait instead of restarting it.
    if let Some(secs) = std::fs::read_to_string(SLOW_START).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        eprintln!("k3s stand-in: starting slowly ({secs} s, {SLOW_START})");
        std::thread::sleep(Duration::from_secs(secs));
    }
    notify_ready();
    match listener {
        Some(l) => {
            for conn in l.incoming().flatten() {
                let mut c = conn;
                let _ = c.write_all(b"k3s stand-in\n");
            }
        }
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
    Ok(())
}

/// A server stand-in greets every connection with its banner.
fn answers_as_server(addr: &std::net::SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut c) = TcpStream::connect_timeout(addr, Duration::from_secs(2)) else { return false };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 12];
    c.read_exact(&mut banner).is_ok() && &banner == b"k3s stand-in"
}

fn read_config() -> Result<HashMap<String, String>, String> {
    let text = std::fs::read_to_string(CONFIG).map_err(|e| format!("{CONFIG}: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.starts_with('-'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect())
}

/// sd_notify(READY=1) without libsystemd.
fn notify_ready() {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let path = path.to_string_lossy().into_owned();
    let _ = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
}
