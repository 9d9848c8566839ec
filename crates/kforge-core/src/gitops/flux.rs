//! Flux's objects: the deploy-key Secret (`identity`, `identity.pub`, `known_hosts`),
//! the SOPS age Secret, and the GitRepository and Kustomization `flux-system`
//! (Flux's own bootstrap names), pruned and SOPS-decrypting.

use serde_json::{Value, json};

use super::keys::GitOpsKeys;
use super::source::{Repository, Transport};
use super::{EngineObjects, secret};
use crate::spec::GitOps;

pub const NAMESPACE: &str = "flux-system";
/// The GitRepository and Kustomization kforge creates.
pub const OBJECT_NAME: &str = "flux-system";
/// Secret holding the deploy key (`identity`, `identity.pub`, `known_hosts`).
pub const DEPLOY_KEY_SECRET: &str = "flux-system";
/// Secret holding the age identity kustomize-controller decrypts SOPS files with.
pub const SOPS_SECRET: &str = "sops-age";
/// The CRDs the objects kforge creates need.
pub const CRDS: &[&str] = &["gitrepositories.source.toolkit.fluxcd.io", "kustomizations.kustomize.toolkit.fluxcd.io"];

pub fn objects(gitops: &GitOps, keys: &GitOpsKeys, repo: &Repository) -> EngineObjects {
    let mut secrets = Vec::new();
    if let Transport::Ssh { .. } = repo.transport {
        secrets.push(secret(
            DEPLOY_KEY_SECRET,
            NAMESPACE,
            json!({}),
            json!({
                "identity": keys.deploy_key,
                "identity.pub": format!("{}\n", keys.deploy_key_public()),
                "known_hosts": gitops.known_hosts.iter().map(|l| format!("{l}\n")).collect::<String>(),
            }),
        ));
    }
    secrets.push(secret(SOPS_SECRET, NAMESPACE, json!({}), json!({"age.agekey": format!("{}\n", keys.sops_age_key)})));
    EngineObjects {
        name: "Flux",
        namespace: NAMESPACE,
        crds: CRDS,
        secrets,
        sync: sync(gitops, repo),
        about: (
            "The GitRepository and Kustomization that make the cluster follow the repository.".into(),
            vec![
                ("GitRepository url".into(), format!("{} (branch {})", gitops.repository, gitops.branch)),
                (
                    "Kustomization path".into(),
                    format!(
                        "{}, every {}, pruned, SOPS-decrypted with Secret {SOPS_SECRET}",
                        gitops.path, gitops.interval
                    ),
                ),
            ],
        ),
    }
}

fn sync(gitops: &GitOps, repo: &Repository) -> Vec<Value> {
    let mut source = json!({
        "interval": gitops.interval,
        "url": gitops.repository,
        "ref": {"branch": gitops.branch},
    });
    if let Transport::Ssh { .. } = repo.transport {
        source["secretRef"] = json!({"name": DEPLOY_KEY_SECRET});
    }
    let meta =
        json!({"name": OBJECT_NAME, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "kforge"}});
    vec![
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "metadata": meta, "spec": source}),
        json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": meta,
            "spec": {
                "interval": gitops.interval,
                "path": gitops.path,
                "prune": true,
                "sourceRef": {"kind": "GitRepository", "name": OBJECT_NAME},
                "decryption": {"provider": "sops", "secretRef": {"name": SOPS_SECRET}},
            },
        }),
    ]
}
