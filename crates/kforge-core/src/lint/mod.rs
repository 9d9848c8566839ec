//! `kforge lint`: offline checks of the cluster file, kforge's own rendered plan and
//! any Kubernetes manifests, for the failures that cost the seed operators hours.
//!
//! Every finding points at file:line:column, says why it matters and how to fix it.
//! The checks know the intended topology (the cluster file), so a webhook a
//! NetworkPolicy hides from the API server or a hostPort the firewall never publishes
//! is found before anything is applied.
//!
//! ```text
//! manifests ─▶ yaml (positioned tree) ─▶ objects ─▶ apis · ingress · webhooks · ports
//! cluster file ─▶ spec checks + cluster (versions, cgroups, MTU budget) ─┘
//! ```

mod apis;
mod cluster;
mod ingress;
mod network;
mod objects;
mod ports;
pub mod report;
mod webhooks;
pub mod yaml;

pub use cluster::parse_date;
pub use objects::Object;

use crate::spec::{Cluster, LoadedSpec, Pos, SpecError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Will break: refused by the API server, fails closed, or unreachable.
    Error,
    /// Likely wrong, or a risk (deprecated, retired, published without a reason).
    Warning,
    /// Worth knowing; not a problem by itself.
    Note,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "note",
        }
    }
}

/// One problem, where it is, and what to do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// Stable rule id, e.g. `api/removed` (SARIF's ruleId).
    pub rule: &'static str,
    pub level: Level,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// The object or setting it is about, e.g. `Ingress shop/web` or `spec.mesh.mtu`.
    pub subject: String,
    pub message: String,
    pub fix: String,
    /// A replacement to paste (e.g. the HTTPRoute for an Ingress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl Finding {
    /// Start a finding: the rule, how bad, and where; the builder adds the words.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(rule: &'static str, level: Level, at: &Source<'_>, pos: Option<Pos>) -> FindingBuilder {
        FindingBuilder(Finding {
            rule,
            level,
            file: at.name.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            subject: String::new(),
            message: String::new(),
            fix: String::new(),
            suggestion: None,
        })
    }
}

/// Fills a [`Finding`] in reading order: subject, message, fix.
pub struct FindingBuilder(Finding);

impl FindingBuilder {
    pub fn subject(mut self, s: impl Into<String>) -> Self {
        self.0.subject = s.into();
        self
    }
    pub fn message(mut self, s: impl Into<String>) -> Self {
        self.0.message = s.into();
        self
    }
    pub fn suggestion(mut self, s: impl Into<String>) -> Self {
        self.0.suggestion = Some(s.into());
        self
    }
    pub fn fix(mut self, s: impl Into<String>) -> Finding {
        self.0.fix = s.into();
        self.0
    }
}

/// A text being linted: its name in messages and its content.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// What to lint. The cluster file is optional: manifests alone get the checks that
/// need no topology.
pub struct LintInput<'a> {
    /// The cluster file as parsed (`Ok`), or everything wrong with it.
    pub cluster: Option<Result<&'a LoadedSpec, &'a SpecError>>,
    /// Manifests kforge renders itself (addons, GitOps install), named `plan:NODE:PATH`.
    pub plan_manifests: Vec<(String, String)>,
    /// Manifest files given on the command line (name, text).
    pub manifests: Vec<(String, String)>,
    /// The controllers' mesh addresses, where the API server calls webhooks from.
    pub control_plane_ips: Vec<std::net::IpAddr>,
    /// Today, for the end-of-life table.
    pub today: time::Date,
}

/// Every finding, in file order.
pub fn lint(input: &LintInput<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let cluster: Option<(&Cluster, Source<'_>)> = match input.cluster {
        Some(Ok(spec)) => {
            let at = Source { name: &spec.file, text: &spec.source_text };
            findings.extend(cluster::from_spec_warnings(spec));
            findings.extend(cluster::check(&spec.cluster, at, input.today));
            Some((&spec.cluster, at))
        }
        Some(Err(e)) => {
            findings.extend(cluster::from_spec_error(e));
            None
        }
        None => None,
    };
    let mut objects = Vec::new();
    for (name, text) in input.plan_manifests.iter().chain(&input.manifests) {
        let at = Source { name, text };
        match objects::load(at) {
            Ok(mut objs) => objects.append(&mut objs),
            Err(f) => findings.push(*f),
        }
    }
    let version = cluster.map(|(c, _)| c.spec.distribution.version.as_str());
    findings.extend(apis::check(&objects, version));
    findings.extend(ingress::check(&objects));
    findings.extend(network::check(&objects, cluster.map(|(c, _)| c.spec.mesh.interface.as_str())));
    findings.extend(webhooks::check(&objects, cluster.map(|(c, _)| c), &input.control_plane_ips));
    if let Some((c, at)) = cluster {
        findings.extend(ports::check(&objects, c, at, !input.manifests.is_empty()));
    }
    findings.sort_by(|a, b| (&a.file, a.line, a.column, a.rule).cmp(&(&b.file, b.line, b.column, b.rule)));
    findings
}

/// The worst level found, for the exit code.
pub fn worst(findings: &[Finding]) -> Option<Level> {
    findings.iter().map(|f| f.level).min()
}
