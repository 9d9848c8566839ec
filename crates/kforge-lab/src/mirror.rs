//! The lab's package mirror: a provider's apt mirror on the lab's internet.
//!
//! The `.deb` files every package kforge installs needs on an image (with their
//! dependencies, as that image's own apt resolved them) are fetched once and cached
//! beside the image (`rootfs::ensure`). `lab up` serves them as a flat apt repository
//! over HTTP from [`ADDRESS`] on the lab's bridge, and each machine's apt sources name
//! it — as a VPS names its provider's mirror. Machines have no route anywhere else.
//!
//! The server is a small static HTTP/1.1 server in a process of its own (`kforge lab
//! serve-mirror`, started by `lab up` inside the lab's "wan" namespace), logging one
//! line per request, so tests see exactly when a host ran apt. `kforge lab mirror
//! stop|start` takes it away and back, as a mirror outage would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::sh::run;
use crate::{LabError, LabState};

/// Host number of the mirror's address on the lab's subnet (the workstation is .1,
/// machines start at .11).
pub const HOST: u32 = 5;
/// The repository's path on the mirror.
pub const PATH: &str = "/debian";
/// Bump to rebuild every cached mirror (part of its cache key).
pub const FORMAT: &str = "flat-1";
/// Where a machine's apt finds the mirror.
pub const SOURCES_FILE: &str = "etc/apt/sources.list.d/kforge-lab-mirror.list";

/// What the mirror carries: every package kforge installs on a host, and git for the
/// lab's forge.
pub fn packages() -> Vec<&'static str> {
    let mut v: Vec<&str> = kforge_core::packages::Package::ALL.iter().map(|p| p.name()).collect();
    v.push("git");
    v
}

/// The running mirror of a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MirrorState {
    pub ip: Ipv4Addr,
    /// The cached repository it serves.
    pub root: PathBuf,
    /// One line per request: `UNIX_TIME CLIENT METHOD PATH STATUS BYTES`.
    pub log: PathBuf,
    /// The server process (`None`: stopped).
    pub pid: Option<u32>,
}

/// The apt source line of a machine (an unsigned local repository, so `trusted=yes`).
pub fn sources_line(ip: Ipv4Addr) -> String {
    format!("# kforge lab: the lab's package mirror, as a provider's\ndeb [trusted=yes] http://{ip}{PATH} ./\n")
}

/// Write the flat repository's `Packages` index for the `.deb` files in `dir`: each
/// package's control fields (`dpkg-deb -f`), then where it is, its size and sha256.
pub fn write_index(dir: &Path) -> Result<(), LabError> {
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| LabError::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    if debs.is_empty() {
        return Err(LabError::Setup(format!("no packages were fetched into {}", dir.display())));
    }
    let mut index = String::new();
    for deb in &debs {
        let control = run("dpkg-deb", &["-f", &deb.display().to_string()])?;
        let bytes = std::fs::read(deb).map_err(|e| LabError::io(deb, e))?;
        let name = deb.file_name().expect("a file").to_string_lossy();
        index.push_str(control.trim_end());
        index.push_str(&format!(
            "\nFilename: ./{name}\nSize: {}\nSHA256: {}\n\n",
            bytes.len(),
            kforge_core::hashing::sha256_hex(&bytes)
        ));
    }
    std::fs::write(dir.join("Packages"), index).map_err(|e| LabError::io(dir, e))
}

/// Serve `root` under [`PATH`] on `listen` until killed, one line per request in `log`.
pub fn serve(root: &Path, listen: SocketAddr, log: &Path) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let log = Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(log)?));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (root, log) = (root.to_path_buf(), Arc::clone(&log));
        std::thread::spawn(move || {
            let _ = connection(conn, &root, &log);
        });
    }
    Ok(())
}

/// One client connection: requests answered in order until it closes (apt pipelines).
fn connection(stream: TcpStream, root: &Path, log: &Mutex<std::fs::File>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let peer = stream.peer_addr()?.ip();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let h = header.trim().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            close |= h.starts_with("connection:") && h.contains("close");
        }
        let words: Vec<&str> = request.split_whitespace().collect();
        let (method, target, version) = match words.as_slice() {
            [m, t, v] => (*m, *t, *v),
            _ => return Ok(()),
        };
        close |= version == "HTTP/1.0";
        let (status, bytes) = respond(&mut out, method, target, root)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let _ = writeln!(log.lock().unwrap(), "{now} {peer} {method} {target} {status} {bytes}");
        if close {
            return Ok(());
        }
    }
}

fn respond(out: &mut TcpStream, method: &str, target: &str, root: &Path) -> std::io::Result<(u16, u64)> {
    let file = resolve(root, target).filter(|_| method == "GET" || method == "HEAD");
    let Some(path) = file.filter(|p| p.is_file()) else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        return Ok((404, 0));
    };
    let mut f = std::fs::File::open(&path)?;
    let len = f.metadata()?.len();
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")?;
    if method == "HEAD" {
        return Ok((200, 0));
    }
    let sent = std::io::copy(&mut (&mut f).take(len), out)?;
    Ok((200, sent))
}

/// The file a request path names under [`PATH`], if it stays inside `root`.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let rest = target.split('?').next()?.strip_prefix(PATH)?.strip_prefix('/')?;
    let decoded = percent_decode(rest)?;
    let mut path = root.to_path_buf();
    for part in decoded.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." || part.contains('\0') {
            return None;
        }
        path.push(part);
    }
    Some(path)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Start the lab's mirror: its address on the lab's bridge (once), then the server, in
/// the lab's wan namespace, outliving this process until `lab down` or `mirror stop`.
/// The server is this very program (`kforge lab serve-mirror`, hidden from --help).
pub fn start(state: &LabState, mirror: &mut MirrorState) -> Result<(), LabError> {
    let prefix = state.subnet.prefix_len();
    let addr = format!("{}/{prefix}", mirror.ip);
    let present = run("ip", &["-n", &state.wan_ns, "-o", "addr", "show", "dev", "br0"])?;
    if !present.contains(&format!(" {addr} ")) {
        run("ip", &["-n", &state.wan_ns, "addr", "add", &addr, "dev", "br0"])?;
    }
    let exe = std::env::current_exe().map_err(|e| LabError::Setup(format!("where is kforge? {e}")))?;
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mirror.log.with_extension("stderr"))
        .map_err(|e| LabError::io(&mirror.log, e))?;
    let child = Command::new("setsid")
        .args(["ip", "netns", "exec", &state.wan_ns])
        .arg(exe)
        .args(["lab", "serve-mirror", "--root"])
        .arg(&mirror.root)
        .arg("--listen")
        .arg(format!("{}:80", mirror.ip))
        .arg("--log")
        .arg(&mirror.log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| LabError::Setup(format!("cannot start the lab's mirror: {e}")))?;
    mirror.pid = Some(child.id());
    // Ready when it answers (the workstation reaches the bridge through its veth).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let at = SocketAddr::from((mirror.ip, 80));
    while TcpStream::connect_timeout(&at, std::time::Duration::from_millis(300)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "the lab's mirror did not answer on {at} within 10 s; see {}",
                mirror.log.with_extension("stderr").display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Stop the mirror's server (its address stays, so machines get "connection refused",
/// as from a mirror that is down).
pub fn stop(mirror: &mut MirrorState) {
    if let Some(pid) = mirror.pid.take()
        && is_running(pid)
    {
        crate::sh::quietly("kill", &["-TERM", &pid.to_string()]);
        for _ in 0..50 {
            if !is_running(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

pub fn is_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("serve-mirror"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_resolve_inside_the_repository_only() {
        let root = Path::new("/cache/mirror");
        assert_eq!(resolve(root, "/debian/./Packages"), Some(root.join("Packages")));
        assert_eq!(resolve(root, "/debian/./nginx_1.26.3-3_amd64.deb"), Some(root.join("nginx_1.26.3-3_amd64.deb")));
        assert_eq!(
            resolve(root, "/debian/iptables_1.8.11-2%2bb1_amd64.deb"),
            Some(root.join("iptables_1.8.11-2+b1_amd64.deb"))
        );
        assert_eq!(resolve(root, "/debian/../etc/shadow"), None);
        assert_eq!(resolve(root, "/debian/%2e%2e/etc/shadow"), None);
        assert_eq!(resolve(root, "/other/Packages"), None);
    }

    #[test]
    fn serves_files_over_keep_alive_and_logs_each_request() {
        let dir = std::env::temp_dir().join(format!("kforge-mirror-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Packages"), "Package: x\n").unwrap();
        let log = dir.join("requests.log");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        drop(listener);
        let (d, l) = (dir.clone(), log.clone());
        std::thread::spawn(move || serve(&d, at, &l));
        let mut s = loop {
            if let Ok(s) = TcpStream::connect(at) {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Two pipelined requests on one connection, as apt sends them.
        s.write_all(b"GET /debian/./Packages HTTP/1.1\r\nHost: m\r\n\r\nGET /debian/./Release HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("Content-Length: 11\r\n\r\nPackage: x\n"),
            "{answer}"
        );
        assert!(answer.ends_with("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), "{answer}");
        let logged = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<Vec<&str>> = logged.lines().map(|l| l.split(' ').skip(1).collect()).collect();
        assert_eq!(
            lines,
            [
                ["127.0.0.1", "GET", "/debian/./Packages", "200", "11"],
                ["127.0.0.1", "GET", "/debian/./Release", "404", "0"]
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
