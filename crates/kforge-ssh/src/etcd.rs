//! `kforge etcd snapshot|restore|health` for the hardway distribution: etcd's own
//! tools (etcdctl, or etcdutl where the release has it) run on the controllers over
//! SSH, with kforge's etcd client certificate (`/etc/etcd/etcdctl.env`).
//!
//! Restore rebuilds the member set from the cluster file: every controller gets the
//! snapshot, etcd is stopped everywhere (and kube-apiserver, which would otherwise
//! write to a half-restored cluster), each member's data directory is rebuilt with
//! `snapshot restore` under its own name and mesh peer URL, the old directory is kept
//! aside (`/var/lib/etcd.before-restore-<time>`), then all members start together.

use std::path::Path;
use std::sync::Mutex;

use kforge_core::component::Component;
use kforge_core::hardway::{EtcdCluster, EtcdMember};
use kforge_core::upgrade::{Version, version_in};
use serde::Deserialize;

use crate::Target;
use crate::lock::HostLock;
use crate::ssh::{ControlDir, Host, SshError, shell_quote};

const REMOTE_SNAPSHOT: &str = "/var/lib/kforge/etcd-snapshot.db";
const REMOTE_RESTORE: &str = "/var/lib/kforge/etcd-restore.db";
/// The helpers, kept as shell (shellcheck runs on the file in CI).
/// kforge's etcd helpers (`sh/etcd.sh`), one function per call.
pub const ETCD_SH: &str = include_str!("sh/etcd.sh");

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{0}")]
    Refused(String),
}

/// What `etcdctl snapshot status -w json` reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    pub hash: u64,
    pub revision: u64,
    pub total_key: u64,
    pub total_size: u64,
}

#[derive(Debug, Clone)]
pub struct SnapshotReport {
    /// The member the snapshot was taken on.
    pub member: String,
    pub sha256: String,
    pub status: SnapshotStatus,
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub status: SnapshotStatus,
    /// Where each member's previous data directory was kept (if it had one).
    pub kept: Vec<(String, Option<String>)>,
    /// `etcdctl endpoint health --cluster` after the restart.
    pub health: String,
    /// Why kube-apiserver was left stopped: the cluster file asks for a minor below the
    /// one the API servers ran (a minor rollback), so apply starts the file's release
    /// on the restored data rather than the newer one writing its schema into it.
    pub apiserver_left_stopped: Option<String>,
}

/// The controllers, reachable over SSH with this process's ControlMaster directory.
pub struct Etcd {
    /// What the plan deployed: members, token, data directory (never re-derived here).
    cluster: EtcdCluster,
    members: Vec<(EtcdMember, Host)>,
    _control: ControlDir,
}

impl Etcd {
    /// The helper file, the cluster's etcdctl environment file, then one call of
    /// `function` with `args` quoted.
    fn helper(&self, function: &str, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        format!("{ETCD_SH}\nKF_ETCD_ENV={}\n{function} {}\n", shell_quote(self.cluster.env_file), args.join(" "))
    }

    /// Reach `cluster`'s members; `targets` says how (a member without one is skipped).
    pub fn connect(
        cluster: EtcdCluster,
        targets: &[Target],
        ssh_config: Option<std::path::PathBuf>,
    ) -> Result<Etcd, EtcdError> {
        let control = ControlDir::create().map_err(EtcdError::Refused)?;
        let members = cluster
            .members
            .iter()
            .filter_map(|m| {
                let t = targets.iter().find(|t| t.node == m.name)?;
                Some((m.clone(), Host::of(t, ssh_config.clone(), control.path())))
            })
            .collect();
        Ok(Etcd { cluster, members, _control: control })
    }

    /// `etcdctl endpoint health --cluster` from the first member that answers.
    pub fn health(&self) -> Result<String, EtcdError> {
        let mut last = None;
        for (_, host) in &self.members {
            match host.run_script("etcd health", &self.helper("kf_etcd_health", &[])) {
                Ok(out) => return Ok(out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map(EtcdError::Ssh).unwrap_or_else(|| EtcdError::Refused("the cluster has no controllers".into())))
    }

    /// Save a snapshot on the first member that can take one and copy it to `out`
    /// (mode 0600: it holds every Secret, encrypted or not).
    pub fn snapshot(&self, out: &Path) -> Result<SnapshotReport, EtcdError> {
        let mut failures = Vec::new();
        for (m, host) in &self.members {
            let save = self.helper("kf_snapshot_save", &[REMOTE_SNAPSHOT]);
            let out_text = match host.run_script("etcd snapshot save", &save) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            let (status, remote_sum) = parse_status_and_sum(&out_text)?;
            let tmp = out.with_extension("kforge-tmp");
            let local_sum = host.download("download the snapshot", REMOTE_SNAPSHOT, &tmp)?;
            let _ = host.run_script("remove the remote snapshot", &format!("rm -f {REMOTE_SNAPSHOT}"));
            if local_sum != remote_sum {
                let _ = std::fs::remove_file(&tmp);
                return Err(EtcdError::Refused(format!(
                    "the snapshot changed in transit (sha256 {local_sum} here, {remote_sum} on {})",
                    m.name
                )));
            }
            std::fs::rename(&tmp, out).map_err(|e| EtcdError::Refused(format!("{}: {e}", out.display())))?;
            return Ok(SnapshotReport { member: m.name.clone(), sha256: local_sum, status });
        }
        Err(EtcdError::Refused(format!("no member could take a snapshot:\n  {}", failures.join("\n  "))))
    }

    /// Rebuild every member from `file`. Refuses, before stopping anything, when a
    /// controller is unreachable or the snapshot fails its integrity check. `wanted`:
    /// the release the cluster file asks for; when it is a minor below what the API
    /// servers ran, they stay stopped (a minor rollback: `kforge apply` starts that
    /// release's).
    pub fn restore(
        &self,
        file: &Path,
        wanted: Option<&Version>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<RestoreReport, EtcdError> {
        // Exclusive with `kforge apply`, which would restart etcd under our feet.
        progress("locking every controller");
        let locks: Vec<HostLock> = self.members.iter().map(|(_, h)| HostLock::acquire(h)).collect::<Result<_, _>>()?;
        let sum = {
            let mut f =
                std::fs::File::open(file).map_err(|e| EtcdError::Refused(format!("{}: {e}", file.display())))?;
            let mut w = kforge_core::hashing::Sha256Writer::new(std::io::sink());
            std::io::copy(&mut f, &mut w).map_err(|e| EtcdError::Refused(format!("{}: {e}", file.display())))?;
            w.finish()
        };
        progress("uploading the snapshot to every controller");
        let verify_upload = self.helper("kf_receive_snapshot", &[REMOTE_RESTORE, &sum]);
        self.each(|_, h| h.upload("upload the snapshot", file, &verify_upload).map(|_| ()))?;
        let first = &self.members[0].1;
        let checked = first.run_script("check the snapshot", &self.helper("kf_check_snapshot", &[REMOTE_RESTORE]));
        let status = match checked {
            Ok(out) => parse_status(&out)?,
            Err(e) => {
                let _ = self.each(|_, h| h.run_script("clean up", &format!("rm -f {REMOTE_RESTORE}")).map(|_| ()));
                return Err(EtcdError::Refused(format!(
                    "the snapshot is not a valid etcd snapshot; nothing was stopped: {e}"
                )));
            }
        };

        progress("stopping kube-apiserver and etcd on every controller");
        let was_serving: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let ran: Mutex<Vec<Version>> = Mutex::new(Vec::new());
        self.each(|m, h| {
            let out = h.run_script("stop etcd", &self.helper("kf_stop_members", &[]))?;
            if out.contains("apiserver-was-active") {
                was_serving.lock().unwrap().push(m.name.clone());
            }
            let release = out.lines().find_map(|l| l.strip_prefix("apiserver-release "));
            if let Some(v) = release.and_then(|l| version_in(Component::KubeApiserver, l)) {
                ran.lock().unwrap().push(v);
            }
            Ok(())
        })?;
        let newest = ran.into_inner().unwrap().into_iter().max();
        let apiserver_left_stopped = match (wanted, &newest) {
            (Some(wanted), Some(ran)) if wanted < ran && !wanted.same_minor(ran) => Some(format!(
                "kube-apiserver left stopped on every controller: they ran {ran} and the cluster file asks for {wanted}, a minor below; `kforge apply` starts {wanted}'s on the restored data and moves every node back"
            )),
            _ => None,
        };

        progress("restoring each member's data directory");
        let initial_cluster = self.cluster.initial_cluster();
        let token = format!("{}-restored-{}", self.cluster.token, unix_now());
        let kept: Mutex<Vec<(String, Option<String>)>> = Mutex::new(Vec::new());
        self.each(|m, h| {
            let script = self.helper(
                "kf_restore",
                &[REMOTE_RESTORE, self.cluster.data_dir, &m.name, &initial_cluster, &token, &m.peer_url()],
            );
            let out = h.run_script("etcd snapshot restore", &script)?;
            let k = out.lines().find_map(|l| l.strip_prefix("kept=")).map(String::from);
            kept.lock().unwrap().push((m.name.clone(), k));
            Ok(())
        })?;

        // etcd (Type=notify) is "started" only once it has a quorum: start all at once.
        progress("starting etcd on every controller");
        self.each(|_, h| h.run_script("start etcd", &self.helper("kf_start_etcd", &[])).map(|_| ()))?;
        let serving = was_serving.into_inner().unwrap();
        if let Some(why) = &apiserver_left_stopped {
            progress(why);
        }
        self.each(|m, h| {
            if serving.contains(&m.name) && apiserver_left_stopped.is_none() {
                h.run_script("start kube-apiserver", &self.helper("kf_start_apiserver", &[]))?;
            }
            Ok(())
        })?;
        let health = self.health()?;
        drop(locks);
        let mut kept = kept.into_inner().unwrap();
        kept.sort();
        Ok(RestoreReport { status, kept, health, apiserver_left_stopped })
    }

    /// Run `f` on every member at once; the first error wins.
    fn each(&self, f: impl Fn(&EtcdMember, &Host) -> Result<(), SshError> + Sync) -> Result<(), EtcdError> {
        let errors: Mutex<Vec<SshError>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (m, h) in &self.members {
                let (f, errors) = (&f, &errors);
                s.spawn(move || {
                    if let Err(e) = f(m, h) {
                        errors.lock().unwrap().push(e);
                    }
                });
            }
        });
        match errors.into_inner().unwrap().into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for (_, h) in &self.members {
            h.close();
        }
    }
}

fn parse_status(out: &str) -> Result<SnapshotStatus, EtcdError> {
    let line = out.lines().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(line)
        .map_err(|e| EtcdError::Refused(format!("unexpected `snapshot status` output ({e}): {out}")))
}

fn parse_status_and_sum(out: &str) -> Result<(SnapshotStatus, String), EtcdError> {
    let status = parse_status(out)?;
    let sum = out.lines().rev().find(|l| l.len() == 64).unwrap_or("").to_string();
    Ok((status, sum))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
