//! Kubernetes objects found in the linted texts, with the helpers the checks share:
//! the pod template of a workload, label selection, a Service's ports.

use std::collections::BTreeMap;

use super::yaml::{self, Node, PortRef};
use super::{Finding, Level, Source};
use crate::spec::Pos;

/// One object of a manifest stream.
#[derive(Debug, Clone)]
pub struct Object {
    pub file: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `metadata.namespace`, or `default` when unset.
    pub namespace: String,
    pub root: Node,
}

/// Every object of a text (documents without apiVersion and kind are skipped, as
/// kubectl does with empty ones); a syntax error is one finding.
pub fn load(at: Source<'_>) -> Result<Vec<Object>, Box<Finding>> {
    let docs = yaml::parse_stream(at.text).map_err(|(pos, msg)| {
        Box::new(
            Finding::new("yaml/syntax", Level::Error, &at, Some(pos))
                .subject("the file")
                .message(format!("not valid YAML: {msg}"))
                .fix("correct the YAML at this position; `kubectl apply` refuses the whole file"),
        )
    })?;
    let mut out = Vec::new();
    for doc in docs {
        // `kind: List` wraps objects in `items`.
        let roots: Vec<Node> = match doc.root.str_at("kind") {
            Some("List") => doc.root.get("items").map(|i| i.items().to_vec()).unwrap_or_default(),
            _ => vec![doc.root],
        };
        for root in roots {
            let (Some(api_version), Some(kind)) = (root.str_at("apiVersion"), root.str_at("kind")) else { continue };
            out.push(Object {
                file: at.name.to_string(),
                api_version: api_version.to_string(),
                kind: kind.to_string(),
                name: root.str_at("metadata.name").unwrap_or("").to_string(),
                namespace: root.str_at("metadata.namespace").unwrap_or("default").to_string(),
                root: root.clone(),
            });
        }
    }
    Ok(out)
}

impl Object {
    /// `Kind namespace/name`, as an operator would look it up.
    pub fn subject(&self) -> String {
        match self.root.str_at("metadata.namespace") {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    pub fn source(&self) -> Source<'_> {
        Source { name: &self.file, text: "" }
    }

    /// Position of a path in the object, else of the object itself.
    pub fn pos(&self, path: &str) -> Option<Pos> {
        Some(self.root.at(path).map(|n| n.pos).unwrap_or(self.root.pos))
    }

    /// The pod spec of a Pod or of a workload's template (CronJob: its job's template).
    pub fn pod_spec(&self) -> Option<&Node> {
        match self.kind.as_str() {
            "Pod" => self.root.get("spec"),
            "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => self.root.at("spec.template.spec"),
            "CronJob" => self.root.at("spec.jobTemplate.spec.template.spec"),
            _ => None,
        }
    }

    /// Labels of the pods this object makes.
    pub fn pod_labels(&self) -> BTreeMap<String, String> {
        let labels = match self.kind.as_str() {
            "Pod" => self.root.at("metadata.labels"),
            "CronJob" => self.root.at("spec.jobTemplate.spec.template.metadata.labels"),
            _ => self.root.at("spec.template.metadata.labels"),
        };
        string_map(labels)
    }

    /// Every container (init containers too) of the pod spec, with its path.
    pub fn containers(&self) -> Vec<&Node> {
        let Some(spec) = self.pod_spec() else { return Vec::new() };
        ["initContainers", "containers"].iter().filter_map(|k| spec.get(k)).flat_map(|c| c.items()).collect()
    }

    /// The container port a Service's targetPort names (or numbers) on these pods.
    pub fn has_container_port(&self, target: &PortRef) -> bool {
        self.containers().iter().flat_map(|c| c.get("ports").map(Node::items).unwrap_or_default()).any(|p| match target
        {
            PortRef::Name(n) => p.str_at("name") == Some(n),
            PortRef::Number(n) => p.get("containerPort").and_then(Node::port) == Some(PortRef::Number(*n)),
        })
    }

    /// The number of the container port called `name`.
    pub fn container_port_number(&self, name: &str) -> Option<u32> {
        self.containers()
            .iter()
            .flat_map(|c| c.get("ports").map(Node::items).unwrap_or_default())
            .find_map(|p| (p.str_at("name") == Some(name)).then(|| p.str_at("containerPort")?.parse().ok()).flatten())
    }

    /// Whether any container declares ports at all (numbers are informational then).
    pub fn declares_ports(&self) -> bool {
        self.containers().iter().any(|c| c.get("ports").is_some_and(|p| !p.items().is_empty()))
    }
}

/// A mapping of strings (labels, annotations, selectors).
pub fn string_map(node: Option<&Node>) -> BTreeMap<String, String> {
    node.map(|n| n.entries().iter().map(|(k, _, v)| (k.clone(), v.str().unwrap_or("").to_string())).collect())
        .unwrap_or_default()
}

/// A label selector (`matchLabels` / `matchExpressions`, or a Service's plain map)
/// against a set of labels. An empty selector selects everything.
pub fn selects(selector: Option<&Node>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else { return true };
    let plain = sel.get("matchLabels").is_none() && sel.get("matchExpressions").is_none();
    let match_labels = if plain { string_map(Some(sel)) } else { string_map(sel.get("matchLabels")) };
    if !match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    sel.get("matchExpressions").map(Node::items).unwrap_or_default().iter().all(|e| {
        let key = e.str_at("key").unwrap_or("");
        let values: Vec<&str> =
            e.get("values").map(Node::items).unwrap_or_default().iter().filter_map(Node::str).collect();
        match e.str_at("operator") {
            Some("In") => labels.get(key).is_some_and(|v| values.contains(&v.as_str())),
            Some("NotIn") => labels.get(key).is_none_or(|v| !values.contains(&v.as_str())),
            Some("Exists") => labels.contains_key(key),
            Some("DoesNotExist") => !labels.contains_key(key),
            _ => false,
        }
    })
}
