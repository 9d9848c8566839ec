//! What the GitOps engine reports, read from the API on a controller (over SSH, with
//! the admin kubeconfig): the source's fetched revision, the Kustomization's applied
//! revision, each one's Ready condition and its last error, the controllers' state.

use serde::Serialize;
use serde_json::Value;

use crate::ssh::Host;
use crate::status::probe_call;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GitOpsStatus {
    pub source: Object,
    pub kustomization: Object,
    /// (controller, available replicas).
    pub controllers: Vec<(String, u32)>,
}

/// One Flux object as the API has it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    /// False when the API has no such object (or could not be asked).
    pub exists: bool,
    pub ready: bool,
    /// The Ready condition's reason and message, or what went wrong asking.
    pub reason: String,
    pub message: String,
    /// Source: the fetched artifact's revision; Kustomization: the last applied one.
    pub revision: Option<String>,
}

impl GitOpsStatus {
    pub fn healthy(&self) -> bool {
        self.source.ready && self.kustomization.ready && self.controllers.iter().all(|(_, n)| *n > 0)
    }

    /// One line: what is fetched and applied, or the first thing that is wrong.
    pub fn summary(&self) -> String {
        let down: Vec<&str> = self.controllers.iter().filter(|(_, n)| *n == 0).map(|(c, _)| c.as_str()).collect();
        if !down.is_empty() {
            return format!("controllers not available: {}", down.join(", "));
        }
        if !self.source.ready {
            return format!("source not Ready: {}", self.source.problem());
        }
        if !self.kustomization.ready {
            return format!("Kustomization not Ready: {}", self.kustomization.problem());
        }
        format!(
            "source fetched {}, Kustomization applied {}",
            self.source.revision.as_deref().unwrap_or("?"),
            self.kustomization.revision.as_deref().unwrap_or("?")
        )
    }
}

impl Object {
    fn problem(&self) -> String {
        match (self.exists, self.reason.is_empty()) {
            (false, _) => self.message.clone(),
            (true, true) => "no Ready condition yet".into(),
            (true, false) => format!("{}: {}", self.reason, self.message),
        }
    }

    /// `revision_at`: JSON pointer into `.status` to the revision.
    fn parse(line: Option<&str>, revision_at: &str) -> Object {
        let text = line.unwrap_or("").trim();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            let message = if text.is_empty() { "no answer".to_string() } else { text.chars().take(240).collect() };
            return Object { exists: false, ready: false, reason: String::new(), message, revision: None };
        };
        let status = &v["status"];
        let ready = status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
        let get = |c: Option<&Value>, k: &str| c.and_then(|c| c[k].as_str()).unwrap_or("").to_string();
        let revision = status.pointer(revision_at).and_then(Value::as_str);
        Object {
            exists: true,
            ready: get(ready, "status") == "True",
            reason: get(ready, "reason"),
            message: get(ready, "message"),
            revision: revision.filter(|r| !r.is_empty()).map(str::to_string),
        }
    }
}

/// Ask the API on `node` (its SSH target among `targets`) about the engine's objects.
pub fn status_on(
    node: &str,
    targets: &[crate::Target],
    ssh_config: Option<std::path::PathBuf>,
    probe: &crate::status::GitOpsProbe,
) -> Result<GitOpsStatus, String> {
    let target = targets.iter().find(|t| t.node == node).ok_or_else(|| format!("{node}: no SSH target"))?;
    let control = crate::ssh::ControlDir::create()?;
    status(&Host::of(target, ssh_config, control.path()), &probe.namespace, &probe.name, &probe.controllers)
}

/// Ask the API on `host` about the engine's objects `name` in `namespace`.
pub fn status(host: &Host, namespace: &str, name: &str, controllers: &[String]) -> Result<GitOpsStatus, String> {
    let mut args = vec![namespace.to_string(), name.to_string()];
    args.extend(controllers.iter().cloned());
    let out = host.run_script("gitops status", &probe_call("kf_gitops_status", &args)).map_err(|e| e.to_string())?;
    Ok(parse(&out, controllers))
}

fn parse(out: &str, controllers: &[String]) -> GitOpsStatus {
    let field = |prefix: &str| out.lines().find_map(|l| l.strip_prefix(prefix));
    let available = |c: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("controller ")?.strip_prefix(c)?.strip_prefix(' ').map(str::trim))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    GitOpsStatus {
        source: Object::parse(field("source "), "/artifact/revision"),
        kustomization: Object::parse(field("kustomization "), "/lastAppliedRevision"),
        controllers: controllers.iter().map(|c| (c.clone(), available(c))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_revisions_conditions_and_errors() {
        let out = r#"source {"status":{"artifact":{"revision":"main@sha1:abc"},"conditions":[{"type":"Ready","status":"True","reason":"Succeeded","message":"stored artifact"}]}}
kustomization {"status":{"conditions":[{"type":"Ready","status":"False","reason":"ReconciliationFailed","message":"decryption failed"}],"lastAppliedRevision":"main@sha1:old"}}
controller source-controller 1
controller kustomize-controller 0
"#;
        let s = parse(out, &["source-controller".into(), "kustomize-controller".into()]);
        assert!(s.source.ready && s.source.revision.as_deref() == Some("main@sha1:abc"));
        assert!(!s.kustomization.ready);
        assert_eq!(s.kustomization.revision.as_deref(), Some("main@sha1:old"));
        assert!(!s.healthy());
        assert_eq!(s.summary(), "controllers not available: kustomize-controller");
        let out = out.replace("kustomize-controller 0", "kustomize-controller 1");
        let s = parse(&out, &["source-controller".into(), "kustomize-controller".into()]);
        assert_eq!(s.summary(), "Kustomization not Ready: ReconciliationFailed: decryption failed");
        let missing = parse("source Error from server (NotFound): gitrepositories \"flux-system\" not found\n", &[]);
        assert!(!missing.source.exists && missing.source.message.contains("NotFound"));
        assert!(
            missing.summary().starts_with("source not Ready: Error from server (NotFound)"),
            "{}",
            missing.summary()
        );
    }
}
