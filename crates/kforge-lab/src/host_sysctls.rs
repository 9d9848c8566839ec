//! Kernel-wide settings a real kubelet insists on, set on this workstation only when
//! the operator asks (`kforge lab up --example hardway --host-sysctls`) and restored by
//! `lab down`.
//!
//! The kubelet checks (and without `protectKernelDefaults`, writes) a few sysctls at
//! start and refuses to run if they differ. They are not per network namespace, so a
//! kubelet in an nspawn machine would change the workstation's own kernel: panic on an
//! oops, reboot 10 s after a panic, always overcommit memory. kforge never does that
//! silently. Every change is printed; the original values are kept in
//! `/var/lib/kforge-lab/host-sysctls.json` with the labs that hold them, and the last
//! lab to go restores them.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LabError;

/// What the kubelet's container manager requires (`setupKernelTunables`).
pub const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.keys.root_maxbytes", "25000000"),
];

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// (sysctl, value before the first lab changed it), only for values that changed.
    original: Vec<(String, String)>,
    /// Ids of the labs that need the settings.
    holders: Vec<String>,
}

fn record_path() -> PathBuf {
    Path::new(crate::RUNTIME_ROOT).join("host-sysctls.json")
}

fn proc_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

pub fn read(name: &str) -> Result<String, LabError> {
    let p = proc_path(name);
    fs::read_to_string(&p).map(|v| v.trim().to_string()).map_err(|e| LabError::io(&p, e))
}

fn write(name: &str, value: &str) -> Result<(), LabError> {
    let p = proc_path(name);
    fs::write(&p, value).map_err(|e| LabError::io(&p, e))
}

fn load() -> Record {
    fs::read_to_string(record_path()).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

fn save(r: &Record) -> Result<(), LabError> {
    let p = record_path();
    fs::create_dir_all(crate::RUNTIME_ROOT).map_err(|e| LabError::io(&p, e))?;
    let text = serde_json::to_string_pretty(r).expect("record serializes");
    kforge_files::write_atomic(&p, text.as_bytes(), 0o600).map_err(|e| LabError::io(&p, e))
}

/// The settings that differ from what the kubelet needs: (name, now, needed).
pub fn differing() -> Result<Vec<(&'static str, String, &'static str)>, LabError> {
    let mut v = Vec::new();
    for (name, needed) in KUBELET_SYSCTLS {
        let now = read(name)?;
        if now != *needed {
            v.push((*name, now, *needed));
        }
    }
    Ok(v)
}

/// Set the kubelet's sysctls for lab `id`, printing each change.
pub fn acquire(id: &str, log: &dyn Fn(&str)) -> Result<(), LabError> {
    let mut r = load();
    for (name, now, needed) in differing()? {
        if !r.original.iter().any(|(n, _)| n == name) {
            r.original.push((name.to_string(), now.clone()));
        }
        write(name, needed)?;
        log(&format!("host sysctl {name}: {now} -> {needed} (for the lab's kubelets; `lab down` restores it)"));
    }
    if !r.holders.iter().any(|h| h == id) {
        r.holders.push(id.to_string());
    }
    save(&r)
}

/// Lab `id` no longer needs them; the last lab restores the original values.
pub fn release(id: &str, log: &dyn Fn(&str)) {
    let path = record_path();
    if !path.exists() {
        return;
    }
    let mut r = load();
    r.holders.retain(|h| h != id);
    if !r.holders.is_empty() {
        let _ = save(&r);
        return;
    }
    for (name, value) in &r.original {
        match write(name, value) {
            Ok(()) => log(&format!("host sysctl {name}: restored to {value}")),
            Err(e) => log(&format!("host sysctl {name}: could not restore {value}: {e}")),
        }
    }
    let _ = fs::remove_file(path);
}

/// Whether lab `id` still holds the host's sysctls (for the leftover check).
pub fn held_by(id: &str) -> bool {
    load().holders.iter().any(|h| h == id)
}
