//! Argo CD's objects: a repository Secret with the deploy key, the pinned host keys as
//! the only entries of `argocd-ssh-known-hosts-cm`, the polling interval in `argocd-cm`,
//! and one Application `kforge` that syncs the path automatically (pruned, self-healing).
//!
//! Argo CD has no SOPS decryption of its own: the age key is not installed for it (a
//! plugin such as KSOPS would need it; docs/gitops.md).

use serde_json::{Value, json};

use super::keys::GitOpsKeys;
use super::source::{Repository, Transport};
use super::{EngineObjects, secret};
use crate::spec::GitOps;

pub const NAMESPACE: &str = "argocd";
pub const APPLICATION: &str = "kforge";
pub const REPOSITORY_SECRET: &str = "kforge-repository";
pub const CRDS: &[&str] = &["applications.argoproj.io", "appprojects.argoproj.io"];

pub fn objects(gitops: &GitOps, keys: &GitOpsKeys, repo: &Repository) -> EngineObjects {
    let mut secrets = Vec::new();
    if let Transport::Ssh { .. } = repo.transport {
        secrets.push(secret(
            REPOSITORY_SECRET,
            NAMESPACE,
            json!({"argocd.argoproj.io/secret-type": "repository"}),
            json!({"type": "git", "url": gitops.repository, "sshPrivateKey": keys.deploy_key}),
        ));
    }
    EngineObjects {
        name: "Argo CD",
        namespace: NAMESPACE,
        crds: CRDS,
        secrets,
        sync: sync(gitops),
        about: (
            "Argo CD's pinned host keys, polling interval and the Application that follows the repository.".into(),
            vec![
                (
                    "argocd-ssh-known-hosts-cm".into(),
                    "only the pinned knownHosts (server-side apply takes the field over from the install's defaults)"
                        .into(),
                ),
                ("argocd-cm timeout.reconciliation".into(), format!("{}: how often Argo CD polls", gitops.interval)),
                (
                    "Application kforge".into(),
                    format!(
                        "{} {} {}: synced automatically, pruned, self-healing",
                        gitops.repository, gitops.branch, gitops.path
                    ),
                ),
            ],
        ),
    }
}

fn sync(gitops: &GitOps) -> Vec<Value> {
    let labels = json!({"app.kubernetes.io/part-of": "argocd"});
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "argocd-ssh-known-hosts-cm", "namespace": NAMESPACE, "labels": labels},
            "data": {"ssh_known_hosts": gitops.known_hosts.iter().map(|l| format!("{l}\n")).collect::<String>()},
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "argocd-cm", "namespace": NAMESPACE, "labels": labels},
            "data": {"timeout.reconciliation": gitops.interval},
        }),
        json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Application",
            "metadata": {"name": APPLICATION, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "kforge"}},
            "spec": {
                "project": "default",
                "source": {"repoURL": gitops.repository, "targetRevision": gitops.branch, "path": gitops.path},
                "destination": {"server": "https://kubernetes.default.svc", "namespace": "default"},
                "syncPolicy": {"automated": {"prune": true, "selfHeal": true}},
            },
        }),
    ]
}
