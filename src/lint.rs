//! `kforge lint`: gathers what to lint (the cluster file, kforge's own plan, manifest
//! files, directories or standard input), runs kforge-core's checks, prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kforge_core::lint::{self, Level, LintInput, report};
use kforge_core::model::Model;
use kforge_core::pipeline::{build_plan, reconcile_secrets};
use kforge_core::spec::LoadedSpec;
use kforge_files::{AgeCredentials, SecretsStore};

use crate::cli::LintFormat;
use crate::commands::CliError;

pub struct LintArgs<'a> {
    pub file: &'a Path,
    /// `-f` given explicitly: a missing cluster file is then an error.
    pub file_given: bool,
    pub age_identity: Option<PathBuf>,
    pub paths: &'a [PathBuf],
    pub format: LintFormat,
}

pub fn run(args: &LintArgs<'_>) -> Result<(), CliError> {
    let loaded = match args.file.exists() || args.file_given {
        true => Some(kforge_files::load_cluster_file(args.file)),
        false => None,
    };
    let spec = loaded.as_ref().and_then(|r| r.as_ref().ok());
    let (plan_manifests, control_plane_ips) = match spec {
        Some(spec) => plan_manifests(spec, args)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut manifests = Vec::new();
    let mut paths: Vec<PathBuf> = args.paths.to_vec();
    if paths.is_empty()
        && let Some(g) = spec.and_then(|s| s.cluster.spec.gitops.as_ref())
    {
        // The GitOps path of a checkout beside the cluster file.
        let dir = args.file.parent().unwrap_or(Path::new(".")).join(g.path.trim_start_matches("./"));
        if dir.is_dir() {
            paths.push(dir);
        } else {
            eprintln!(
                "note: spec.gitops.path {} has no checkout at {}: give the manifests as PATHS",
                g.path,
                dir.display()
            );
        }
    }
    for p in &paths {
        collect(p, &mut manifests)?;
    }
    if loaded.is_none() && manifests.is_empty() {
        return Err(CliError::Other(format!(
            "nothing to lint: no cluster file at {} and no PATHS (give manifests, a directory, or - for standard input)",
            args.file.display()
        )));
    }
    let input = LintInput {
        cluster: loaded.as_ref().map(|r| r.as_ref()),
        plan_manifests,
        manifests,
        control_plane_ips,
        today: today(),
    };
    let findings = lint::lint(&input);
    match args.format {
        LintFormat::Text => {
            let mut sources: BTreeMap<String, String> =
                input.manifests.iter().chain(&input.plan_manifests).map(|(n, t)| (n.clone(), t.clone())).collect();
            if let Some(Ok(s)) = &loaded {
                sources.insert(s.file.clone(), s.source_text.clone());
            }
            if let Some(Err(e)) = &loaded {
                sources.insert(e.file.clone(), e.source_text.clone());
            }
            print!("{}", report::text(&findings, &sources));
        }
        LintFormat::Json => println!("{}", report::json(&findings)),
        LintFormat::Sarif => println!("{}", report::sarif(&findings)),
    }
    match lint::worst(&findings) {
        Some(Level::Error) => Err(CliError::Findings(2)),
        Some(Level::Warning) => Err(CliError::Findings(3)),
        _ => Ok(()),
    }
}

/// The Kubernetes manifests in kforge's own plan (addons, GitOps install and sync),
/// once each, named `plan:NODE:PATH`; and the controllers' mesh addresses. Built in
/// memory with the existing bundle when it opens, else a throwaway one: lint writes
/// nothing.
type PlanView = (Vec<(String, String)>, Vec<std::net::IpAddr>);

fn plan_manifests(spec: &LoadedSpec, args: &LintArgs<'_>) -> Result<PlanView, CliError> {
    let store = SecretsStore::beside(args.file, AgeCredentials::from_env(args.age_identity.clone()))?;
    let existing = store.load(&spec.cluster.metadata.name).ok().flatten();
    let (bundle, _) = reconcile_secrets(&spec.cluster, existing, time::OffsetDateTime::now_utc())?;
    let model = Model::build(&spec.cluster, &bundle);
    let plan = build_plan(&model, &bundle);
    let ips = model.servers().map(|(m, _)| std::net::IpAddr::V4(m.mesh_ip)).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for np in &plan.nodes {
        for f in np.files().filter(|f| !f.secret && (f.path.ends_with(".yaml") || f.path.ends_with(".yml"))) {
            let Ok(text) = std::str::from_utf8(&f.content) else { continue };
            let is_manifest =
                text.lines().any(|l| l.starts_with("apiVersion:")) && text.lines().any(|l| l.starts_with("kind:"));
            if is_manifest && !f.path.ends_with("kubeconfig") && seen.insert((f.path.clone(), f.sha256.clone())) {
                out.push((format!("plan:{}:{}", np.node, f.path), text.to_string()));
            }
        }
    }
    Ok((out, ips))
}

/// A file, every *.yaml / *.yml under a directory (sorted, hidden ones skipped), or `-`.
fn collect(path: &Path, out: &mut Vec<(String, String)>) -> Result<(), CliError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        out.push(("<stdin>".into(), text));
        return Ok(());
    }
    let meta = std::fs::metadata(path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for e in entries {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if e.is_dir() || name.ends_with(".yaml") || name.ends_with(".yml") {
                collect(&e, out)?;
            }
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    out.push((path.display().to_string(), text));
    Ok(())
}

/// Today, or `KFORGE_TODAY` (YYYY-MM-DD) for reproducible output in tests and CI.
fn today() -> time::Date {
    std::env::var("KFORGE_TODAY")
        .ok()
        .and_then(|d| kforge_core::lint::parse_date(&d))
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().date())
}
