//! GitOps from the cluster file (`spec.gitops`): the repository and its pinned host
//! keys ([`source`]), the cluster's deploy key and SOPS age key kept in the secrets
//! bundle ([`keys`]), and each engine's objects ([`flux`], [`argocd`]), installed in
//! an order that cannot race ([`plan`]):
//!
//! 1. the engine's install manifests;
//! 2. once its CRDs are Established and its controllers up (each a `kubectl wait` or
//!    `rollout status`, a watch rather than a retry loop),
//! 3. the Secrets (deploy key, pinned host keys, SOPS key) and the objects that follow
//!    the repository.
//!
//! Everything runs on the node whose API server initialises the cluster, with the
//! admin kubeconfig there. A digest stamp makes a re-apply a no-op; a changed
//! repository, branch, path or key re-applies the objects in place (server-side apply).

pub mod argocd;
pub mod flux;
pub mod keys;
pub mod source;

pub use keys::GitOpsKeys;
pub use source::{KnownHost, Repository, Transport};

use serde_json::Value;

use crate::hashing::sha256_hex;
use crate::plan::{NodePlan, Phase, PlannedArtifact, PlannedCommand, PlannedFile};
use crate::spec::{GitOps, GitOpsEngine};

/// Install manifests and the (public) sync objects.
const DIR: &str = "/var/lib/kforge/gitops";
/// The Secrets' manifest: 0600, root only.
const SECRETS: &str = "/etc/kforge/gitops/secrets.yaml";
const STAMP: &str = "/var/lib/kforge/gitops.applied";

/// What one engine needs from the shared install order.
pub struct EngineObjects {
    pub name: &'static str,
    pub namespace: &'static str,
    /// CRDs the sync objects need.
    pub crds: &'static [&'static str],
    /// Secrets (and anything else holding a key), applied first.
    pub secrets: Vec<Value>,
    /// The objects that make the cluster follow the repository.
    pub sync: Vec<Value>,
    /// `kforge explain` of the sync file.
    pub about: (String, Vec<(String, String)>),
}

/// The Flux install applied when the file names none (`spec.gitops.install` left out):
/// Flux v2.9.5's source-controller v1.9.3 and kustomize-controller v1.9.6, assembled by
/// `scripts/components` from their Go modules as Flux's `manifests/install` does, with
/// Flux's published images by tag (`scripts/vendor-flux-install`; a test keeps it so).
pub const FLUX_DEFAULT_INSTALL: &str = include_str!("flux-install.yaml");

/// Add the engine's install, wait and sync steps to the initialising node's plan.
/// `kubectl` is the command line that reaches the API as admin on that node.
pub fn plan(gitops: &GitOps, keys: &GitOpsKeys, kubectl: &str, np: &mut NodePlan) {
    let repo = Repository::parse(&gitops.repository).expect("validated: the repository URL parses");
    let engine = match gitops.engine {
        GitOpsEngine::Flux => flux::objects(gitops, keys, &repo),
        GitOpsEngine::Argocd => argocd::objects(gitops, keys, &repo),
    };
    let (name, ns) = (engine.name, engine.namespace);
    let controllers = gitops.controllers();
    let phase = np.phase(Phase::GitOps);
    let mut installs: Vec<String> = (0..gitops.install.len()).map(|i| format!("{DIR}/install-{i}.yaml")).collect();
    for (i, (a, dest)) in gitops.install.iter().zip(&installs).enumerate() {
        // Manifests are text: one source for every architecture (validated).
        for mut artifact in PlannedArtifact::from_spec(&format!("{name} install manifest {i}"), dest, 0o644, a, None) {
            artifact.setting = format!("gitops.install[{i}]");
            phase.artifacts.push(artifact);
        }
    }
    if gitops.install.is_empty() && gitops.engine == GitOpsEngine::Flux {
        let default = PlannedFile::new(format!("{DIR}/install-0.yaml"), 0o644, FLUX_DEFAULT_INSTALL).about(
            "Flux's install manifest, kforge's default (spec.gitops.install left out).",
            format!("kubectl apply --server-side (kforge), before {name}'s objects"),
            vec![(
                "images".into(),
                "ghcr.io/fluxcd/source-controller:v1.9.3 and kustomize-controller:v1.9.6, by tag: kforge names no digest it could not check".into(),
            )],
        );
        installs.push(default.path.clone());
        phase.files.push(default);
    }
    let secrets = PlannedFile::secret(SECRETS, yaml_stream(&engine.secrets));
    let (what, fields) = engine.about;
    let sync = PlannedFile::new(format!("{DIR}/sync.yaml"), 0o644, yaml_stream(&engine.sync)).about(
        what,
        format!("kubectl apply --server-side (kforge), after {name}'s CRDs are Established and its controllers up"),
        fields,
    );
    // What was applied: the planned files' digests and the install files as uploaded.
    let digest = sha256_hex(format!("{}{}{}", secrets.sha256, sync.sha256, controllers.join(",")).as_bytes());
    let applied = format!("{digest}-$(sha256sum {} | sha256sum | cut -c1-64)", installs.join(" "));
    let unless = Some(format!("[ \"$(cat {STAMP} 2>/dev/null)\" = \"{applied}\" ]"));
    let sync_path = sync.path.clone();
    phase.files.extend([secrets, sync]);

    let apply = format!("{kubectl} apply --server-side --force-conflicts --field-manager=kforge");
    let step =
        |description: String, run: String| PlannedCommand { description, run, unless: unless.clone(), recheck: None };
    let (statefulsets, deployments): (Vec<&String>, Vec<&String>) =
        controllers.iter().partition(|c| c.starts_with("statefulset/"));
    let mut steps = vec![
        step(
            format!("apply {name}'s install manifests"),
            format!("{apply} {} >/dev/null", installs.iter().map(|i| format!("-f {i}")).collect::<Vec<_>>().join(" ")),
        ),
        step(
            format!("wait until {name}'s CRDs are Established ({})", engine.crds.join(", ")),
            format!(
                "{kubectl} wait --for=condition=Established --timeout=120s {} >/dev/null",
                engine.crds.iter().map(|c| format!("crd/{c}")).collect::<Vec<_>>().join(" ")
            ),
        ),
    ];
    if !deployments.is_empty() {
        let names: Vec<&str> = deployments.iter().map(|d| d.as_str()).collect();
        steps.push(step(
            format!("wait until {name}'s controllers are Available ({})", names.join(", ")),
            format!(
                "{kubectl} -n {ns} wait --for=condition=Available --timeout=600s {} >/dev/null",
                names.iter().map(|c| format!("deployment/{c}")).collect::<Vec<_>>().join(" ")
            ),
        ));
    }
    for s in statefulsets {
        steps.push(step(
            format!("wait until {name}'s {s} has rolled out"),
            format!("{kubectl} -n {ns} rollout status --timeout=600s {s} >/dev/null"),
        ));
    }
    steps.push(step(
        format!("create {name}'s Secrets, then the objects that follow the repository"),
        format!(
            "{apply} -f {SECRETS} -f {sync_path} >/dev/null && mkdir -p /var/lib/kforge && echo \"{applied}\" > {STAMP}"
        ),
    ));
    phase.commands.extend(steps);
}

/// A Secret of kforge's (values as `stringData`: applied server-side, never annotated).
fn secret(name: &str, namespace: &str, labels: Value, string_data: Value) -> Value {
    let mut labels = labels;
    labels["app.kubernetes.io/managed-by"] = "kforge".into();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "stringData": string_data,
    })
}

fn yaml_stream(docs: &[Value]) -> String {
    let docs: Vec<String> = docs.iter().map(|d| serde_saphyr::to_string(d).expect("manifest serializes")).collect();
    format!("# Managed by kforge (spec.gitops).\n{}", docs.join("---\n"))
}
