//! STAND-IN for a program that cannot be obtained on this machine — NOT that program.
//!
//! The hardway lab installs this one file as kube-apiserver, kubelet, containerd and
//! the rest, so their units can be installed and checked (`systemd-analyze verify`
//! needs an executable at each ExecStart). kforge never starts a stand-in; if anything
//! does, it says what it is and fails, so nobody mistakes it for a working component.

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(argv0);
    let first = std::env::args().nth(1);
    if matches!(first.as_deref(), Some("--version") | Some("version")) {
        println!("{name}: kforge stand-in (NOT {name}; it cannot be obtained on this machine)");
        return;
    }
    eprintln!("{name}: this is kforge's STAND-IN, not {name}; the real binary cannot be obtained on this machine");
    std::process::exit(3);
}
