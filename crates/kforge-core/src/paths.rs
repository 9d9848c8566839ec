//! Where things live on a host, named once. Units, configs and state directories
//! that more than one module (or crate) refers to are here; a component's own files
//! stay with the component that plans them.

/// systemd's directory for units kforge installs.
pub const SYSTEMD_DIR: &str = "/etc/systemd/system";
/// kforge's state on a host: manifest, hash cache, unit input stamps.
pub const STATE_DIR: &str = "/var/lib/kforge";
/// What kforge wrote on a host (path → sha256), for the next apply.
pub const MANIFEST: &str = "/var/lib/kforge/manifest.json";
/// Digests of the watched files with the size, mtime and inode they were taken at.
pub const HASH_CACHE: &str = "/var/lib/kforge/hash-cache";
/// The node's bootstrap script (cloud-init runs it; apply leaves the host's own copy).
pub const BOOTSTRAP_SCRIPT: &str = "/var/lib/kforge/bootstrap.sh";
/// How the bootstrap script last ended: `ok TIME`, or `failed STEP ERROR`.
pub const BOOTSTRAP_OUTCOME: &str = "/var/lib/kforge/bootstrap.outcome";
pub use crate::render::steps::PENDING_DIR;

/// The unit file of `unit`.
pub fn unit_file(unit: &str) -> String {
    format!("{SYSTEMD_DIR}/{unit}")
}

/// The service a unit file path installs, for files known only by path (a host's
/// manifest of what an earlier apply wrote). Drop-ins and templates are not units.
pub fn unit_of_file(path: &str) -> Option<&str> {
    path.strip_prefix(SYSTEMD_DIR)?.strip_prefix('/').filter(|u| !u.contains('/') && u.ends_with(".service"))
}

/// Whether systemd reads `path` (a unit or a drop-in), for files known only by path.
pub fn is_systemd_file(path: &str) -> bool {
    path.strip_prefix(SYSTEMD_DIR).is_some_and(|rest| rest.starts_with('/'))
}
