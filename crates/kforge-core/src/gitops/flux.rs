//! Flux, installed by `apply` in an order that cannot race: the install manifests;
//! then, once Flux's CRDs are Established and its controllers Available (each a
//! `kubectl wait`, a watch rather than a retry loop), the deploy-key and SOPS Secrets
//! and the GitRepository and Kustomization that follow the repository.
//!
//! Everything runs on the node whose API server initialises the cluster, with the
//! admin kubeconfig there. A digest stamp makes a re-apply a no-op; a changed
//! repository, branch, path or key re-applies the objects in place (server-side apply).

use serde_json::{Value, json};

use super::keys::GitOpsKeys;
use super::source::{Repository, Transport};
use crate::hashing::sha256_hex;
use crate::plan::{NodePlan, Phase, PlannedArtifact, PlannedCommand, PlannedFile};
use crate::spec::GitOps;

pub const NAMESPACE: &str = "flux-system";
/// The GitRepository and Kustomization kforge creates (Flux's own bootstrap name).
pub const OBJECT_NAME: &str = "flux-system";
/// Secret holding the deploy key (`identity`, `identity.pub`, `known_hosts`).
pub const DEPLOY_KEY_SECRET: &str = "flux-system";
/// Secret holding the age identity kustomize-controller decrypts SOPS files with.
pub const SOPS_SECRET: &str = "sops-age";
/// The CRDs the objects kforge creates need.
pub const CRDS: [&str; 2] = ["gitrepositories.source.toolkit.fluxcd.io", "kustomizations.kustomize.toolkit.fluxcd.io"];

/// Install manifests and the (public) GitRepository + Kustomization.
const DIR: &str = "/var/lib/kforge/gitops";
/// The Secrets' manifest: 0600, root only.
const SECRETS: &str = "/etc/kforge/gitops/secrets.yaml";
const STAMP: &str = "/var/lib/kforge/gitops.applied";

/// Add Flux's install, wait and sync steps to the initialising node's plan. `kubectl`
/// is the command line that reaches the API as admin on that node.
pub fn plan(gitops: &GitOps, keys: &GitOpsKeys, kubectl: &str, np: &mut NodePlan) {
    let repo = Repository::parse(&gitops.repository).expect("validated: the repository URL parses");
    let phase = np.phase(Phase::GitOps);
    let installs: Vec<String> = (0..gitops.install.len()).map(|i| format!("{DIR}/install-{i}.yaml")).collect();
    for (i, (a, dest)) in gitops.install.iter().zip(&installs).enumerate() {
        let mut artifact = PlannedArtifact::from_spec(&format!("flux install manifest {i}"), dest, 0o644, a);
        artifact.setting = format!("gitops.install[{i}]");
        phase.artifacts.push(artifact);
    }
    let secrets = PlannedFile::secret(SECRETS, yaml_stream(&secret_manifests(gitops, keys, &repo)));
    let sync = PlannedFile::new(format!("{DIR}/sync.yaml"), 0o644, yaml_stream(&sync_manifests(gitops, &repo))).about(
        "The GitRepository and Kustomization that make the cluster follow the repository.",
        "kubectl apply --server-side (kforge), after Flux's CRDs are Established and its controllers Available",
        vec![
            ("GitRepository url".into(), format!("{} (branch {})", gitops.repository, gitops.branch)),
            (
                "Kustomization path".into(),
                format!("{}, every {}, pruned, SOPS-decrypted", gitops.path, gitops.interval),
            ),
        ],
    );
    // What was applied: the planned files' digests and the install files as uploaded.
    let digest = sha256_hex(format!("{}{}{}", secrets.sha256, sync.sha256, gitops.controllers.join(",")).as_bytes());
    let files = installs.join(" ");
    let applied = format!("{digest}-$(sha256sum {files} | sha256sum | cut -c1-64)");
    let unless = Some(format!("[ \"$(cat {STAMP} 2>/dev/null)\" = \"{applied}\" ]"));
    let sync_path = sync.path.clone();
    phase.files.extend([secrets, sync]);

    let apply = format!("{kubectl} apply --server-side --force-conflicts --field-manager=kforge");
    let each = |flag: &str, items: &[String]| items.iter().map(|i| format!("{flag}{i}")).collect::<Vec<_>>().join(" ");
    phase.commands.extend([
        PlannedCommand {
            description: "apply Flux's install manifests".into(),
            run: format!("{apply} {} >/dev/null", each("-f ", &installs)),
            unless: unless.clone(),
        },
        PlannedCommand {
            description: format!("wait until Flux's CRDs are Established ({})", CRDS.join(", ")),
            run: format!(
                "{kubectl} wait --for=condition=Established --timeout=120s {} >/dev/null",
                CRDS.map(|c| format!("crd/{c}")).join(" ")
            ),
            unless: unless.clone(),
        },
        PlannedCommand {
            description: format!("wait until Flux's controllers are Available ({})", gitops.controllers.join(", ")),
            run: format!(
                "{kubectl} -n {NAMESPACE} wait --for=condition=Available --timeout=600s {} >/dev/null",
                gitops.controllers.iter().map(|c| format!("deployment/{c}")).collect::<Vec<_>>().join(" ")
            ),
            unless: unless.clone(),
        },
        PlannedCommand {
            description: "create the deploy-key and SOPS Secrets, then the GitRepository and Kustomization".into(),
            run: format!(
                "{apply} -f {SECRETS} -f {sync_path} >/dev/null && mkdir -p /var/lib/kforge && echo \"{applied}\" > {STAMP}"
            ),
            unless,
        },
    ]);
}

/// The Secrets: the deploy key with the pinned host keys (ssh only) and the age identity.
fn secret_manifests(gitops: &GitOps, keys: &GitOpsKeys, repo: &Repository) -> Vec<Value> {
    let mut docs = Vec::new();
    if let Transport::Ssh { .. } = repo.transport {
        docs.push(secret(
            DEPLOY_KEY_SECRET,
            json!({
                "identity": keys.deploy_key,
                "identity.pub": format!("{}\n", keys.deploy_key_public()),
                "known_hosts": gitops.known_hosts.iter().map(|l| format!("{l}\n")).collect::<String>(),
            }),
        ));
    }
    docs.push(secret(SOPS_SECRET, json!({"age.agekey": format!("{}\n", keys.sops_age_key)})));
    docs
}

fn secret(name: &str, string_data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "kforge"}},
        "type": "Opaque",
        "stringData": string_data,
    })
}

fn sync_manifests(gitops: &GitOps, repo: &Repository) -> Vec<Value> {
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
        json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": meta,
            "spec": source,
        }),
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

fn yaml_stream(docs: &[Value]) -> String {
    let docs: Vec<String> = docs.iter().map(|d| serde_saphyr::to_string(d).expect("manifest serializes")).collect();
    format!("# Managed by kforge (spec.gitops).\n{}", docs.join("---\n"))
}
