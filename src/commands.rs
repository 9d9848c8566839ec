//! One function per command; each loads what it needs through the pipeline.

use std::fmt;
use std::path::Path;

use kforge_core::model::Model;
use kforge_core::pipeline::{build_plan, reconcile_secrets};
use kforge_core::plan::Plan;
use kforge_core::render::cloud_init::UserDataSize;
use kforge_core::secrets::{ReconcileReport, SecretsBundle};
use kforge_core::spec::{self, LoadedSpec, SpecError};
use kforge_core::{k3s, kubeconfig};
use kforge_files::{AgeCredentials, SecretsStore};

use crate::cli::{
    CertsCommand, ClusterArgs, Command, EtcdCommand, Format, GitopsCommand, LabCommand, LabExampleArg, LabImageArg,
    LabMirrorAction, SecretsCommand, SshArgs,
};
use crate::output;

pub enum CliError {
    /// The cluster file is invalid: exit 2, nothing touched.
    Spec(SpecError),
    Other(String),
    /// A check that printed its findings: exit with this code, print nothing more.
    Findings(u8),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Spec(_) => 2,
            CliError::Other(_) => 1,
            CliError::Findings(code) => *code,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Spec(e) => write!(f, "{e}"),
            CliError::Other(msg) => write!(f, "error: {msg}"),
            CliError::Findings(_) => Ok(()),
        }
    }
}

impl From<SpecError> for CliError {
    fn from(e: SpecError) -> Self {
        CliError::Spec(e)
    }
}

macro_rules! impl_other {
    ($($ty:ty),*) => {$(
        impl From<$ty> for CliError {
            fn from(e: $ty) -> Self { CliError::Other(e.to_string()) }
        }
    )*};
}
impl_other!(
    kforge_lab::LabError,
    kforge_ssh::ApplyError,
    kforge_files::SecretsError,
    kforge_core::pki::PkiError,
    kforge_files::tree::RenderError,
    std::io::Error
);

pub fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Init { example, dir, age_identity } => init(&example, &dir, age_identity),
        Command::Check(args) => check(&args),
        Command::Plan { cluster, observe: false, output, .. } => plan(&cluster, output),
        Command::Plan { cluster, observe: true, ssh_config, output } => plan_observed(&cluster, ssh_config, output),
        Command::Render { cluster, out, gzip, user_data_limit } => render_cmd(&cluster, &out, gzip, user_data_limit),
        Command::Apply {
            cluster,
            dry_run,
            parallel,
            ssh_config,
            output,
            force_quorum_loss,
            hand_over,
            replace_foreign_record,
            delete_emptydir_data,
            delete_bare_pods,
            no_wait,
        } => {
            // A dry run writes nothing, the bundle included: it takes no lock.
            let _lock = (!dry_run).then(|| cluster_lock(&cluster, "kforge apply", no_wait)).transpose()?;
            let drain =
                kforge_ssh::rollout::DrainLosses { emptydir_data: delete_emptydir_data, bare_pods: delete_bare_pods };
            let flags = ApplyFlags {
                dry_run,
                parallel,
                ssh_config,
                force_quorum_loss,
                hand_over,
                replace_foreign_record,
                drain,
            };
            apply(&cluster, flags, output)
        }
        Command::Kubeconfig { cluster, out } => kubeconfig_cmd(&cluster, out.as_deref()),
        Command::Lint { file, age_identity, paths, output } => crate::lint::run(&crate::lint::LintArgs {
            file: file.as_deref().unwrap_or(Path::new("kforge.yaml")),
            file_given: file.is_some(),
            age_identity,
            paths: &paths,
            format: output,
        }),
        Command::Doctor(a) => doctor(&a.cluster, &a.ssh, a.output),
        Command::Status(a) => status(&a.cluster, &a.ssh, a.output),
        Command::Reset { cluster, nodes, all, yes, ssh } => reset(&cluster, &nodes, all, yes, &ssh),
        Command::Explain { cluster, node, path } => explain(&cluster, node.as_deref(), path.as_deref()),
        Command::Certs(cmd) => certs(cmd),
        Command::Secrets(SecretsCommand::Update { cluster, no_wait }) => {
            let _lock = cluster_lock(&cluster, "kforge secrets update", no_wait)?;
            let spec = load_spec(&cluster.file)?;
            let store = SecretsStore::beside(&cluster.file, AgeCredentials::from_env(cluster.age_identity.clone()))?;
            if !reconcile_and_save(&spec, &store)?.1 {
                eprintln!("secrets bundle {}: already holds what the file needs", store.path.display());
            }
            Ok(())
        }
        Command::Etcd(cmd) => etcd(cmd),
        Command::Gitops(cmd) => gitops(cmd),
        Command::Lab(cmd) => lab(cmd),
        Command::Schema => {
            let schema = schemars::schema_for!(spec::Cluster);
            println!("{}", serde_json::to_string_pretty(&schema).expect("schema serializes"));
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut crate::cli::Cli::command(), "kforge", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// A validated cluster file and its reconciled secrets bundle.
///
/// Only apply opens a session that writes ([`Bundle::Deploy`]); `secrets update` and
/// `certs renew`, which say they write, save through [`reconcile_and_save`] directly. Every other command reconciles in memory
/// and leaves the bundle byte-identical: reading a cluster never changes its identity,
/// and a node dropped from the file keeps its keys until its removal is applied.
struct Session {
    spec: LoadedSpec,
    secrets: SecretsBundle,
    /// What this session's reconcile would change in the saved bundle (empty when it
    /// saved, or when the bundle was already up to date).
    unsaved: Option<ReconcileReport>,
    /// The bundle as it is on disk after this session (None: there is none yet).
    saved: Option<SecretsBundle>,
    store_path: std::path::PathBuf,
}

/// Whether a command writes the secrets bundle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bundle {
    /// Save what the reconcile created or re-issued, and record every node of the file
    /// as deployed (apply, before it touches a host).
    Deploy,
    /// Reconcile in memory only; the file stays byte-identical.
    ReadOnly,
}

impl Session {
    fn open(args: &ClusterArgs, bundle: Bundle) -> Result<Session, CliError> {
        let spec = load_spec(&args.file)?;
        let store = SecretsStore::beside(&args.file, AgeCredentials::from_env(args.age_identity.clone()))?;
        let (secrets, unsaved, saved) = match bundle {
            Bundle::Deploy => {
                let (mut secrets, _) = reconcile_and_save(&spec, &store)?;
                if secrets.record_deployed(&spec.cluster) {
                    store.save(&secrets)?;
                }
                kforge_ssh::faults::at("bundle-saved");
                (secrets.clone(), None, Some(secrets))
            }
            Bundle::ReadOnly => {
                let existing = store.load(&spec.cluster.metadata.name)?;
                let (secrets, report) =
                    reconcile_secrets(&spec.cluster, existing.clone(), time::OffsetDateTime::now_utc())?;
                let behind = existing.as_ref() != Some(&secrets);
                (secrets, behind.then_some(report), existing)
            }
        };
        Ok(Session { spec, secrets, unsaved, saved, store_path: store.path })
    }

    fn model(&self) -> Model<'_> {
        Model::build(&self.spec.cluster, &self.secrets)
    }

    /// A command that hands secrets out (render, kubeconfig, the GitOps keys) must
    /// hand out what the bundle holds: one that differs would be lost, or replaced by
    /// the next apply. `same` says whether what this command hands out is unchanged.
    fn require_saved(
        &self,
        command: &str,
        file: &Path,
        same: impl Fn(&SecretsBundle, &SecretsBundle) -> bool,
    ) -> Result<(), CliError> {
        match (&self.unsaved, &self.saved) {
            (None, _) => Ok(()),
            (Some(_), Some(saved)) if same(saved, &self.secrets) => Ok(()),
            (Some(report), _) => Err(CliError::Other(format!(
                "{} is behind {} ({})
  help: `kforge apply -f {f}` records them (and delivers them), or `kforge secrets update -f {f}` records them and touches no host; {command} never changes the bundle",
                self.store_path.display(),
                file.display(),
                describe_changes(report, !self.store_path.exists()),
                f = file.display(),
            ))),
        }
    }
}

/// The lock of a command that writes the bundle: held from before its first read of
/// the bundle to after its last save (one operator at a time per cluster file).
fn cluster_lock(args: &ClusterArgs, command: &str, no_wait: bool) -> Result<kforge_files::lock::ClusterLock, CliError> {
    let wait = if no_wait {
        kforge_files::lock::Wait::No
    } else {
        kforge_files::lock::Wait::Up(kforge_files::lock::DEFAULT_WAIT)
    };
    kforge_files::lock::ClusterLock::acquire(&args.file, command, wait, &|line| eprintln!("{line}"))
        .map_err(CliError::Other)
}

fn load_spec(file: &Path) -> Result<LoadedSpec, CliError> {
    let spec = kforge_files::load_cluster_file(file)?;
    if !spec.warnings.is_empty() {
        eprint!("{}", spec.render_warnings());
    }
    Ok(spec)
}

/// The bundle brought up to date with the file and saved when that changed it (which
/// the bool says).
fn reconcile_and_save(spec: &LoadedSpec, store: &SecretsStore) -> Result<(SecretsBundle, bool), CliError> {
    let existing = store.load(&spec.cluster.metadata.name)?;
    let now = time::OffsetDateTime::now_utc();
    let (bundle, report) = reconcile_secrets(&spec.cluster, existing.clone(), now)?;
    kforge_ssh::faults::at("bundle-read");
    let changed = existing.as_ref() != Some(&bundle);
    if changed {
        store.save(&bundle)?;
        eprintln!("{}", describe_report(&store.path, existing.is_none(), &report));
    }
    Ok((bundle, changed))
}

/// Names and counts only: a report never carries a secret value.
fn describe_report(path: &Path, created_bundle: bool, report: &ReconcileReport) -> String {
    let verb = if created_bundle { "new secrets bundle" } else { "secrets bundle updated" };
    format!("{verb} {} (0600): {}", path.display(), describe_changes(report, created_bundle))
}

/// "created 2 WireGuard keys, …; re-issued apiserver/lab-1; removed …": names and
/// counts, never a value.
fn describe_changes(report: &ReconcileReport, new_bundle: bool) -> String {
    if new_bundle {
        return "no bundle yet".into();
    }
    let mut parts = Vec::new();
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for item in &report.created {
        let kind = item.kind.plural();
        match counts.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    if !counts.is_empty() {
        parts
            .push(format!("created {}", counts.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")));
    }
    if !report.reissued.is_empty() {
        parts.push(format!("re-issued {}", report.reissued.join(", ")));
    }
    if !report.removed.is_empty() {
        parts.push(format!("removed {} entries no member needs", report.removed.len()));
    }
    parts.join("; ")
}

fn init(example: &str, dir: &Path, age_identity: Option<std::path::PathBuf>) -> Result<(), CliError> {
    let text = spec::examples::get(example).expect("clap checked the example name");
    std::fs::create_dir_all(dir)?;
    let file = dir.join("kforge.yaml");
    if file.exists() {
        return Err(CliError::Other(format!(
            "{} already exists\n  help: edit it, or init into another directory",
            file.display()
        )));
    }
    let spec = spec::parse(&file.display().to_string(), text)?;
    let store = SecretsStore::beside(&file, AgeCredentials::from_env(age_identity))?;
    if store.exists() {
        return Err(CliError::Other(format!(
            "{} already exists beside it\n  help: kforge never replaces a secrets bundle; init into another directory",
            store.path.display()
        )));
    }
    kforge_files::write_atomic(&file, text.as_bytes(), 0o644)?;
    reconcile_and_save(&spec, &store)?;
    let f = file.display();
    println!("wrote {f} (example `{example}`)");
    println!("next: edit the nodes, then `kforge check -f {f}` and `kforge plan -f {f}`");
    Ok(())
}

fn check(args: &ClusterArgs) -> Result<(), CliError> {
    let spec = load_spec(&args.file)?;
    print!("{}", output::summary(&spec));
    Ok(())
}

fn plan(args: &ClusterArgs, format: Format) -> Result<(), CliError> {
    let session = Session::open(args, Bundle::ReadOnly)?;
    if let Some(report) = &session.unsaved {
        eprintln!(
            "secrets bundle {}: apply will record {} (plan changes nothing)",
            session.store_path.display(),
            describe_changes(report, session.saved.is_none())
        );
    }
    let plan = build_plan(&session.model(), &session.secrets);
    match format {
        Format::Text => print!("{}", output::plan_text(&plan)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan).expect("plan serializes")),
    }
    Ok(())
}

/// `plan --observe`: the plan as apply would run it on the hosts as they are now — an
/// apply that touches nothing (facts, the upgrade rules, the stages in dry run).
fn plan_observed(args: &ClusterArgs, ssh_config: Option<std::path::PathBuf>, format: Format) -> Result<(), CliError> {
    let flags = ApplyFlags {
        dry_run: true,
        parallel: 10,
        ssh_config,
        force_quorum_loss: false,
        hand_over: Vec::new(),
        replace_foreign_record: false,
        drain: kforge_ssh::rollout::DrainLosses::default(),
    };
    let (_, report) = run_apply(args, flags)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("report serializes")),
        Format::Text => print!("{}", output::observed_plan(&report)),
    }
    Ok(())
}

/// A controller the file adds to a running etcd joins it as a learner, which only apply
/// can do: it asks the running members, adds the newcomer, starts it with the list they
/// answer and promotes it. A bootstrap (user-data, a rendered tree) cannot ask anyone: it
/// starts etcd with the planned member list as a new cluster, and newcomers that are a
/// majority of that list found a second cluster beside the running one. So no tree is
/// rendered while the bundle's record says controllers run and a planned one never ran.
fn refuse_controllers_joining_a_running_etcd(session: &Session) -> Result<(), CliError> {
    let spec = &session.spec.cluster.spec;
    if spec.distribution.kind != spec::DistributionKind::Hardway {
        return Ok(()); // a K3s server joins through `server:`, from its own bootstrap
    }
    let controllers = spec.nodes.iter().filter(|n| n.role.is_control_plane());
    let (running, joining): (Vec<_>, Vec<_>) =
        controllers.partition(|n| session.secrets.deployed.get(&n.name).is_some_and(|d| d.role.is_control_plane()));
    if running.is_empty() || joining.is_empty() {
        return Ok(());
    }
    let names = |v: &[&spec::Node]| v.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ");
    Err(CliError::Other(format!(
        "{} would join the running etcd of {} as {}: a bootstrap cannot (it would start a new cluster with the planned members, a second one beside the first); nothing was written\n  help: boot {} as {} plain host{} and run kforge apply, which adds {} as etcd learner{} one at a time (docs/nodes.md, \"Adding a controller\"); render again once it runs",
        names(&joining),
        names(&running),
        if joining.len() == 1 { "a new member" } else { "new members" },
        if joining.len() == 1 { "it" } else { "them" },
        if joining.len() == 1 { "a" } else { "" },
        if joining.len() == 1 { "" } else { "s" },
        if joining.len() == 1 { "it" } else { "them" },
        if joining.len() == 1 { "" } else { "s" },
    )))
}

fn render_cmd(args: &ClusterArgs, out: &Path, gzip: bool, limit: Option<usize>) -> Result<(), CliError> {
    let session = Session::open(args, Bundle::ReadOnly)?;
    // The tree carries keys and certificates: they must be the bundle's own. (A
    // revocation not yet recorded is derived from certificates the bundle holds: the
    // next apply records the same.)
    session.require_saved("render", &args.file, |saved, now| {
        let mut saved = saved.clone();
        saved.revoked = now.revoked.clone();
        &saved == now
    })?;
    refuse_controllers_joining_a_running_etcd(&session)?;
    let plan: Plan = build_plan(&session.model(), &session.secrets);
    let sizes: Vec<_> = plan
        .nodes
        .iter()
        .map(|n| (n, UserDataSize::of(&kforge_core::render::cloud_init::render_user_data(&plan, n))))
        .collect();
    if let Some(limit) = limit {
        let over: Vec<String> = sizes.iter().filter_map(|(n, s)| s.exceeds(&n.node, limit, gzip)).collect();
        if !over.is_empty() {
            return Err(CliError::Other(format!(
                "user-data over --user-data-limit on {} node{}; nothing was written:\n{}",
                over.len(),
                if over.len() == 1 { "" } else { "s" },
                over.join("\n")
            )));
        }
    }
    kforge_files::tree::render_tree(&plan, out, kforge_files::tree::TreeOptions { gzip })?;
    print!("{}", output::render_summary(&plan, out, &sizes, gzip));
    Ok(())
}

fn kubeconfig_cmd(args: &ClusterArgs, out: Option<&Path>) -> Result<(), CliError> {
    let session = Session::open(args, Bundle::ReadOnly)?;
    session.require_saved("kubeconfig", &args.file, |saved, now| {
        saved.cas == now.cas && saved.certificates.get(k3s::ADMIN_CERT_ID) == now.certificates.get(k3s::ADMIN_CERT_ID)
    })?;
    let model = session.model();
    let text = kubeconfig::render_kubeconfig(
        &session.spec.cluster.metadata.name,
        &model.api_url(),
        &session.secrets.ca(kforge_core::pki::Ca::Server).cert,
        "admin",
        session.secrets.certificate(k3s::ADMIN_CERT_ID),
    );
    match out {
        Some(path) => {
            kforge_files::write_atomic(path, text.as_bytes(), 0o600)?;
            eprintln!(
                "wrote {} (0600): admin of {} at {}",
                path.display(),
                session.spec.cluster.metadata.name,
                model.api_url()
            );
            eprintln!("the API answers on the mesh only: bring up your access peer's WireGuard config first");
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn gitops_probe(g: &spec::GitOps) -> kforge_ssh::status::GitOpsProbe {
    use kforge_core::gitops::flux;
    kforge_ssh::status::GitOpsProbe {
        namespace: flux::NAMESPACE.into(),
        name: flux::OBJECT_NAME.into(),
        controllers: g.controllers(),
    }
}

fn gitops(cmd: GitopsCommand) -> Result<(), CliError> {
    let keys = |args: &ClusterArgs| -> Result<kforge_core::gitops::GitOpsKeys, CliError> {
        let session = Session::open(args, Bundle::ReadOnly)?;
        session.require_saved("this command", &args.file, |saved, now| saved.gitops == now.gitops)?;
        match (&session.spec.cluster.spec.gitops, session.secrets.gitops) {
            (Some(_), Some(keys)) => Ok(keys),
            _ => Err(CliError::Other(format!(
                "{} has no spec.gitops, so the cluster has no GitOps keys\n  help: add spec.gitops (docs/gitops.md); the keys are created once, in the secrets bundle",
                args.file.display()
            ))),
        }
    };
    match cmd {
        GitopsCommand::DeployKey { cluster } => println!("{}", keys(&cluster)?.deploy_key_public()),
        GitopsCommand::Recipient { cluster } => println!("{}", keys(&cluster)?.sops_recipient()),
        GitopsCommand::HostKey { host, port } => host_key(&host, port)?,
        GitopsCommand::Status { cluster, ssh, output } => {
            let session = Session::open(&cluster, Bundle::ReadOnly)?;
            let Some(g) = session.spec.cluster.spec.gitops.clone() else {
                return Err(CliError::Other(format!("{} has no spec.gitops", cluster.file.display())));
            };
            if session.spec.cluster.spec.distribution.kind != spec::DistributionKind::Hardway {
                return Err(CliError::Other(
                    "`kforge gitops status` reads the API with a hardway controller's kubectl; on K3s ask `k3s kubectl -n flux-system get gitrepositories,kustomizations` on a server".into(),
                ));
            }
            if g.engine == spec::GitOpsEngine::Argocd {
                return Err(CliError::Other(
                    "`kforge gitops status` reads Flux's objects; for Argo CD ask it: `argocd app get kforge` (or kubectl -n argocd get application kforge -o yaml)".into(),
                ));
            }
            let probe = gitops_probe(&g);
            let (_, ssh_config, targets) = remote(&cluster, &session.spec.cluster, ssh.ssh_config.clone());
            let model = session.model();
            let first = model.first_server().name.clone();
            let status = kforge_ssh::gitops::status_on(&first, &targets, ssh_config, &probe)
                .map_err(|e| CliError::Other(format!("asking the API on {first}: {e}")))?;
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&status).expect("status serializes")),
                Format::Text => print!("{}", output::gitops_status(&g, &status)),
            }
            if !status.healthy() {
                return Err(CliError::Other(format!("gitops: {}", status.summary())));
            }
        }
    }
    Ok(())
}

/// `ssh-keyscan` the forge and print its host key lines, each with its fingerprint and
/// a warning: they came over the network unauthenticated and must be checked.
fn host_key(host: &str, port: u16) -> Result<(), CliError> {
    let out = std::process::Command::new("ssh-keyscan")
        .args(["-T", "10", "-p", &port.to_string(), host])
        .output()
        .map_err(|e| CliError::Other(format!("ssh-keyscan: {e} (install openssh-client)")))?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(CliError::Other(format!(
            "{host}:{port} gave no SSH host key: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    eprintln!("UNVERIFIED: these keys came from {host}:{port} over the network, unauthenticated.");
    eprintln!(
        "Compare each fingerprint with the one your forge publishes before pinning a line in spec.gitops.knownHosts:"
    );
    for line in &lines {
        let fp = fingerprint(line).unwrap_or_else(|| "(no fingerprint: ssh-keygen failed)".into());
        eprintln!("  {fp}");
        println!("{line}");
    }
    Ok(())
}

fn fingerprint(known_hosts_line: &str) -> Option<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(format!("{known_hosts_line}\n").as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn lab(cmd: LabCommand) -> Result<(), CliError> {
    let log = |line: &str| eprintln!("lab: {line}");
    match cmd {
        LabCommand::Up {
            example,
            dir,
            nodes,
            behind_nat,
            all_public,
            image,
            mirror,
            host_sysctls,
            forge,
            user_data,
        } => {
            let example = match example {
                LabExampleArg::K3s => kforge_lab::LabExample::K3s,
                LabExampleArg::K3sHa => kforge_lab::LabExample::K3sHa,
                LabExampleArg::Hardway => kforge_lab::LabExample::Hardway,
            };
            let behind_nat = match (all_public, behind_nat.is_empty()) {
                (true, _) => Some(Vec::new()),
                (false, true) => None,
                (false, false) => Some(behind_nat),
            };
            let seeder = |file: &Path| lab_seeds(file).map_err(|e| e.to_string());
            let user_data = user_data.then_some(&seeder as &kforge_lab::Seeder);
            let image = match image {
                LabImageArg::Debian13 => kforge_lab::Image::Debian13,
                LabImageArg::Debian12 => kforge_lab::Image::Debian12,
            };
            let opts = kforge_lab::UpOptions {
                dir,
                nodes,
                behind_nat,
                mirror,
                image,
                example,
                host_sysctls,
                forge,
                user_data,
            };
            let state = kforge_lab::up(&opts, &log)?;
            let d = state.dir.display();
            println!(
                "lab up: {} {} machines on {} (workstation {})",
                state.machines.len(),
                state.image,
                state.subnet,
                state.workstation_ip
            );
            if let Some(m) = &state.mirror {
                println!(
                    "  mirror   {}   package mirror: http://{}{} (requests in {})",
                    m.ip,
                    m.ip,
                    kforge_lab::mirror::PATH,
                    m.log.display()
                );
            }
            for m in &state.machines {
                let addr = m.public_ip.map_or(format!("behind NAT, ssh via {}", m.ssh_ip), |ip| ip.to_string());
                let forge = if m.forge {
                    format!("   git forge: ssh://git@{}{}", m.ssh_ip, kforge_lab::forge::REPOSITORY)
                } else {
                    String::new()
                };
                println!("  {:<8} {addr}{forge}", m.name);
            }
            if forge {
                println!(
                    "forge: give it the cluster's deploy key: kforge gitops deploy-key -f {d}/kforge.yaml | ssh -F {d}/ssh_config forge forge-add-deploy-key"
                );
            }
            println!("cluster file: {d}/kforge.yaml   ssh: ssh -F {d}/ssh_config lab-1");
            if user_data.is_some() {
                println!(
                    "booted from {d}/user-data/NODE/user-data: watch with  ssh -F {d}/ssh_config lab-1 cloud-init status --wait --long"
                );
                println!(
                    "then: kforge status -f {d}/kforge.yaml   and  kforge apply -f {d}/kforge.yaml  (takes the machines over)"
                );
                println!("stop: kforge lab down --dir {d}");
                return Ok(());
            }
            match example {
                kforge_lab::LabExample::K3s | kforge_lab::LabExample::K3sHa => println!(
                    "next: kforge apply -f {d}/kforge.yaml   (a k3s binary goes at {d}/bin/k3s; images from {d}/images)"
                ),
                kforge_lab::LabExample::Hardway => println!(
                    "next: kforge apply -f {d}/kforge.yaml   (the real components from {d}/bin, images from {d}/images)"
                ),
            }
            println!("stop: kforge lab down --dir {d}");
        }
        LabCommand::Mirror { action, dir } => {
            let m = kforge_lab::set_mirror(&dir, action == LabMirrorAction::Start)?;
            match action {
                LabMirrorAction::Start => {
                    println!("lab mirror: serving at http://{}{}", m.ip, kforge_lab::mirror::PATH)
                }
                LabMirrorAction::Stop => println!("lab mirror: stopped (http://{} refuses connections)", m.ip),
            }
        }
        LabCommand::ServeMirror { root, listen, log } => {
            kforge_lab::mirror::serve(&root, listen, &log)
                .map_err(|e| CliError::Other(format!("serving the lab's mirror on {listen}: {e}")))?;
        }
        LabCommand::Down { dir, all } => {
            if all {
                let n = kforge_lab::down_all(&log)?;
                println!("lab down: removed {n} lab{}", if n == 1 { "" } else { "s" });
            } else {
                kforge_lab::down(&dir, &log)?;
                println!("lab down: nothing left running");
            }
        }
        LabCommand::Remove { name, dir } => {
            kforge_lab::remove(&dir, &name, &log)?;
            println!("lab remove: {name} is gone (its disk, network and host key)");
        }
        LabCommand::Add { name, dir } => {
            let m = kforge_lab::add(&dir, &name, &log)?;
            let ip = m.public_ip.map(|ip| ip.to_string()).unwrap_or_default();
            println!("lab add: {name} is up at {ip} (ssh -F {}/ssh_config {name})", dir.display());
            println!(
                "next: add it to {}/kforge.yaml, e.g.  - {{name: {name}, role: worker, endpoint: {ip}, ssh: {{host: {name}}}}}  then kforge apply",
                dir.display()
            );
        }
        LabCommand::Reinstall { name, dir } => {
            let line = kforge_lab::reinstall(&dir, &name, &log)?;
            println!("lab reinstall: {name} is up with an empty disk and a new host key:");
            println!("  {line}");
            println!(
                "{}/known_hosts still has the old key, so ssh and kforge refuse {name} (docs/nodes.md, \"Replacing a node\")",
                dir.display()
            );
        }
        LabCommand::Restart { name, dir } => {
            kforge_lab::restart(&dir, &name, &log)?;
            println!("lab restart: {name} is up again");
        }
        LabCommand::Status { dir } => {
            for (m, running, ssh) in kforge_lab::status(&dir)? {
                let addr = m.public_ip.map_or_else(|| format!("{} (behind NAT)", m.ssh_ip), |ip| ip.to_string());
                println!(
                    "{:<8} {:<24} {:<8} ssh {}",
                    m.name,
                    addr,
                    if running { "running" } else { "stopped" },
                    if ssh { "up" } else { "down" }
                );
            }
        }
    }
    Ok(())
}

/// Where relative paths resolve (the cluster file's directory), which ssh_config to
/// use, and how to reach each node.
fn remote(
    args: &ClusterArgs,
    cluster: &spec::Cluster,
    ssh_config: Option<std::path::PathBuf>,
) -> (std::path::PathBuf, Option<std::path::PathBuf>, Vec<kforge_ssh::Target>) {
    let base_dir = args.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let ssh_config = ssh_config.or_else(|| Some(base_dir.join("ssh_config")).filter(|p| p.exists()));
    let targets = cluster
        .spec
        .nodes
        .iter()
        .filter_map(|n| {
            let host = n.ssh.host.clone().or_else(|| n.endpoint.map(|e| e.to_string()))?;
            Some(kforge_ssh::Target { node: n.name.clone(), host, user: n.ssh.user.clone(), port: n.ssh.port })
        })
        .collect();
    (base_dir, ssh_config, targets)
}

/// `kforge apply`'s flags, as the engine needs them.
struct ApplyFlags {
    dry_run: bool,
    parallel: usize,
    ssh_config: Option<std::path::PathBuf>,
    force_quorum_loss: bool,
    hand_over: Vec<String>,
    replace_foreign_record: bool,
    drain: kforge_ssh::rollout::DrainLosses,
}

fn apply(args: &ClusterArgs, flags: ApplyFlags, format: Format) -> Result<(), CliError> {
    let (_, report) = run_apply(args, flags)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("report serializes")),
        Format::Text => print!("{}", output::apply_summary(&report)),
    }
    if report.all_converged() {
        Ok(())
    } else if !report.refusals.is_empty() {
        Err(CliError::Other(format!(
            "preflight found {} problem{} (above) that refuse a real apply; this dry run touched nothing\n  help: fix them, or for a foreign unit holding what kforge needs, pass --hand-over UNIT",
            report.refusals.len(),
            if report.refusals.len() == 1 { "" } else { "s" }
        )))
    } else {
        let failed: Vec<&str> = report.hosts.iter().filter(|h| !h.converged).map(|h| h.node.as_str()).collect();
        Err(CliError::Other(format!(
            "{} host{} did not converge: {}\n  help: fix the cause above and run `kforge apply` again; it finishes the job",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join(", ")
        )))
    }
}

/// The apply engine on this cluster file's hosts (`dry_run`: touching nothing).
fn run_apply(args: &ClusterArgs, flags: ApplyFlags) -> Result<(Plan, kforge_ssh::ApplyReport), CliError> {
    let ApplyFlags { dry_run, parallel, ssh_config, force_quorum_loss, hand_over, replace_foreign_record, drain } =
        flags;
    // A removal kforge cannot do yet refuses the apply before anything is written.
    refuse_control_plane_removals(args)?;
    // A dry run (and plan --observe) writes nothing, the bundle included.
    let session = Session::open(args, if dry_run { Bundle::ReadOnly } else { Bundle::Deploy })?;
    let model = session.model();
    let plan = build_plan(&model, &session.secrets);
    let replan = |node: &str, machine: &str, caps: &kforge_core::pipeline::HostCaps| {
        let problems = kforge_core::pipeline::host_arch_problems(&session.spec.cluster, node, machine);
        if !problems.is_empty() {
            return Err(session.spec.render_diagnostics(problems));
        }
        kforge_core::pipeline::plan_node(&model, &session.secrets, node, caps)
            .ok_or_else(|| "the planner does not know this node".to_string())
    };
    let (base_dir, ssh_config, targets) = remote(args, &session.spec.cluster, ssh_config);
    let cache_dir = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kforge/artifacts");
    // The upgrade rules over what runs now: warnings printed, errors refuse the apply.
    let check_versions = |running: &[kforge_core::upgrade::Running]| {
        let (errors, warnings): (Vec<_>, Vec<_>) =
            kforge_core::upgrade::check(&session.spec.cluster, running).into_iter().partition(|d| d.is_error());
        if !warnings.is_empty() {
            eprint!("{}", session.spec.render_diagnostics(warnings));
        }
        if errors.is_empty() { Ok(()) } else { Err(session.spec.render_diagnostics(errors)) }
    };
    // The hard way's etcd is kforge's: a snapshot lands beside the cluster file before
    // a running control plane restarts. (K3s's embedded etcd is K3s's to snapshot.)
    let snapshots = base_dir.join("snapshots");
    let etcd_cluster = (session.spec.cluster.spec.distribution.kind == spec::DistributionKind::Hardway)
        .then(|| kforge_core::hardway::EtcdCluster::of(&model));
    let (snapshot_targets, snapshot_ssh) = (targets.clone(), ssh_config.clone());
    let take_snapshot = || -> Result<String, String> {
        let cluster = etcd_cluster.clone().ok_or("no etcd of kforge's")?;
        let etcd = kforge_ssh::etcd::Etcd::connect(cluster, &snapshot_targets, snapshot_ssh.clone())
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&snapshots).map_err(|e| format!("{}: {e}", snapshots.display()))?;
        let stamp = time::OffsetDateTime::now_utc()
            .format(&time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
            .map_err(|e| e.to_string())?;
        let out = snapshots.join(format!("{}-{stamp}.db", session.spec.cluster.metadata.name));
        let r = etcd.snapshot(&out).map_err(|e| e.to_string())?;
        Ok(format!("{} (revision {}, {} keys)", out.display(), r.status.revision, r.status.total_key))
    };
    let opts = kforge_ssh::ApplyOptions {
        targets,
        parallel,
        dry_run,
        ssh_config,
        base_dir,
        cache_dir,
        replan: &replan,
        check_versions: &check_versions,
        snapshot: etcd_cluster.is_some().then_some(&take_snapshot as &kforge_ssh::Snapshot),
        force_quorum_loss,
        hand_over,
        replace_foreign_record,
        drain,
    };
    let progress = output::HostProgress::new(
        plan.nodes.iter().map(|n| n.node.as_str()).chain(plan.removals.iter().map(|r| r.node.as_str())),
    );
    let report = kforge_ssh::apply(plan.clone(), &opts, &|node: &str, what: &str| progress.update(node, what));
    progress.finish();
    let report = report?;
    forget_removed(args, &session, &report)?;
    Ok((plan, report))
}

/// A K3s server dropped from the file holds a member of K3s's embedded etcd, which
/// kforge does not remove: refused before the bundle or any host is touched.
fn refuse_control_plane_removals(args: &ClusterArgs) -> Result<(), CliError> {
    let spec = kforge_files::load_cluster_file(&args.file)?;
    let store = SecretsStore::beside(&args.file, AgeCredentials::from_env(args.age_identity.clone()))?;
    let Some(bundle) = store.load(&spec.cluster.metadata.name)? else { return Ok(()) };
    if spec.cluster.spec.distribution.kind == spec::DistributionKind::Hardway {
        return Ok(()); // kforge's own etcd: apply removes the member, keeping quorum
    }
    let refused: Vec<&String> =
        bundle.departed(&spec.cluster).filter(|(_, d)| d.role.is_control_plane()).map(|(n, _)| n).collect();
    match refused.as_slice() {
        [] => Ok(()),
        names => Err(CliError::Other(format!(
            "{} {} K3s server{} no longer in {}: kforge does not remove a member of K3s's embedded etcd (docs/nodes.md)\n  help: put {} back in the file; nothing was changed",
            names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "),
            if names.len() == 1 { "is a" } else { "are" },
            if names.len() == 1 { "" } else { "s" },
            args.file.display(),
            if names.len() == 1 { "it" } else { "them" },
        ))),
    }
}

/// Nodes this apply removed from the cluster leave the record, and with them their
/// keys, mesh address, pod network and certificates (their revocations stay).
fn forget_removed(args: &ClusterArgs, session: &Session, report: &kforge_ssh::ApplyReport) -> Result<(), CliError> {
    let removed: Vec<&str> = report.removals.iter().filter(|r| r.removed).map(|r| r.node.as_str()).collect();
    if removed.is_empty() || report.dry_run {
        return Ok(());
    }
    let store = SecretsStore::beside(&args.file, AgeCredentials::from_env(args.age_identity.clone()))?;
    let mut bundle = session.secrets.clone();
    for node in &removed {
        bundle.forget_removed(node);
    }
    let (bundle, _) = reconcile_secrets(&session.spec.cluster, Some(bundle), time::OffsetDateTime::now_utc())?;
    store.save(&bundle)?;
    eprintln!("secrets bundle {}: forgot {} (removed from the cluster)", store.path.display(), removed.join(", "));
    Ok(())
}

fn certs(cmd: CertsCommand) -> Result<(), CliError> {
    match cmd {
        CertsCommand::Check { cluster, output } => {
            let session = Session::open(&cluster, Bundle::ReadOnly)?;
            // The bundle as stored: what the hosts were given. A reconcile in memory would
            // re-issue a due leaf and call it fresh.
            let stored = session.saved.as_ref().ok_or_else(|| {
                CliError::Other(format!(
                    "no secrets bundle at {}: nothing has been issued yet\n  help: kforge secrets update (or the first kforge apply) creates it",
                    session.store_path.display()
                ))
            })?;
            crate::certs::check(stored, i64::from(session.spec.cluster.spec.pki.renew_before_days), output)
        }
        CertsCommand::Renew { cluster, names, no_apply, ssh_config, no_wait } => {
            // Held through the apply that delivers the certificates, too.
            let _lock = cluster_lock(&cluster, "kforge certs renew", no_wait)?;
            let spec = load_spec(&cluster.file)?;
            let store = SecretsStore::beside(&cluster.file, AgeCredentials::from_env(cluster.age_identity.clone()))?;
            let Some(mut bundle) = store.load(&spec.cluster.metadata.name)? else {
                return Err(CliError::Other(format!(
                    "no secrets bundle at {}: nothing was issued yet (kforge plan or apply creates it)",
                    store.path.display()
                )));
            };
            let forgotten = crate::certs::forget(&mut bundle, &names)?;
            let (bundle, report) = reconcile_secrets(&spec.cluster, Some(bundle), time::OffsetDateTime::now_utc())?;
            store.save(&bundle)?;
            for (id, old_serial) in &forgotten {
                let new = kforge_core::pki::summary(&bundle.certificate(id).cert).map(|s| (s.serial, s.expires));
                let (serial, expires) = new.unwrap_or_default();
                eprintln!("re-issued {id}: serial {old_serial} → {serial}, expires {expires}");
            }
            for id in &report.reissued {
                eprintln!("re-issued {id} (due)");
            }
            if forgotten.is_empty() && report.reissued.is_empty() {
                eprintln!("no leaf is due; name certificates to re-issue them anyway (kforge certs check lists them)");
            }
            if no_apply {
                eprintln!("saved {}; deliver with: kforge apply -f {}", store.path.display(), cluster.file.display());
                return Ok(());
            }
            eprintln!("delivering with kforge apply (only what reads a re-issued certificate restarts)…");
            let flags = ApplyFlags {
                dry_run: false,
                parallel: 10,
                ssh_config,
                force_quorum_loss: false,
                hand_over: Vec::new(),
                replace_foreign_record: false,
                drain: kforge_ssh::rollout::DrainLosses::default(),
            };
            apply(&cluster, flags, Format::Text)
        }
    }
}

/// `lab up --user-data`: each node's user-data as `kforge render` writes it (into
/// DIR/user-data, after recording the secrets as `kforge secrets update` does), and the
/// artifacts its image must carry: the plan's workstation files at their paths on the
/// host, and boringtun-cli (the lab's kernel has no WireGuard module).
fn lab_seeds(file: &Path) -> Result<std::collections::BTreeMap<String, kforge_lab::MachineSeed>, CliError> {
    let args = ClusterArgs { file: file.to_path_buf(), age_identity: None };
    let spec = load_spec(file)?;
    let store = SecretsStore::beside(file, AgeCredentials::from_env(None))?;
    reconcile_and_save(&spec, &store)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let out = base.join("user-data");
    render_cmd(&args, &out, false, None)?;
    let session = Session::open(&args, Bundle::ReadOnly)?;
    let plan = build_plan(&session.model(), &session.secrets);
    let boringtun = kforge_ssh::find_boringtun().ok_or_else(|| {
        CliError::Other("the lab's kernel has no WireGuard module and this workstation has no boringtun-cli to bake into the machines\n  help: cargo install boringtun-cli --locked".into())
    })?;
    let here = kforge_core::spec::Arch::from_uname(std::env::consts::ARCH);
    let mut seeds = std::collections::BTreeMap::new();
    for node in &plan.nodes {
        let user_data = std::fs::read(out.join(&node.node).join("user-data"))
            .map_err(|e| CliError::Other(format!("{}: {e}", out.join(&node.node).display())))?;
        let mut bake: Vec<(std::path::PathBuf, String, u32)> = node
            .phases
            .iter()
            .flat_map(|p| p.artifacts.iter())
            .filter(|a| a.arch.is_none() || a.arch == here)
            .filter_map(|a| match &a.source {
                kforge_core::plan::ArtifactSource::Path { path } => Some((base.join(path), a.dest.clone(), a.mode)),
                kforge_core::plan::ArtifactSource::Url { .. } => None,
            })
            .collect();
        bake.push((boringtun.clone(), kforge_core::pipeline::BORINGTUN_DEST.into(), 0o755));
        seeds.insert(node.node.clone(), kforge_lab::MachineSeed { user_data, bake });
    }
    Ok(seeds)
}

fn require_hardway(session: &Session) -> Result<(), CliError> {
    if session.spec.cluster.spec.distribution.kind != spec::DistributionKind::Hardway {
        return Err(CliError::Other(
            "`kforge etcd` manages the hardway distribution's etcd; K3s embeds its own (see `k3s etcd-snapshot`)"
                .into(),
        ));
    }
    Ok(())
}

fn etcd(cmd: EtcdCommand) -> Result<(), CliError> {
    use kforge_ssh::etcd::Etcd;
    let (args, ssh) = match &cmd {
        EtcdCommand::Health { cluster, ssh } => (cluster, ssh),
        EtcdCommand::Snapshot { cluster, ssh, .. } => (cluster, ssh),
        EtcdCommand::Restore { cluster, ssh, .. } => (cluster, ssh),
    };
    let session = Session::open(args, Bundle::ReadOnly)?;
    require_hardway(&session)?;
    let model = session.model();
    let (_, ssh_config, targets) = remote(args, &session.spec.cluster, ssh.ssh_config.clone());
    let cluster = kforge_core::hardway::EtcdCluster::of(&model);
    let etcd = Etcd::connect(cluster, &targets, ssh_config).map_err(|e| CliError::Other(e.to_string()))?;
    let fail = |e: kforge_ssh::etcd::EtcdError| CliError::Other(e.to_string());
    match cmd {
        EtcdCommand::Health { .. } => {
            let out = etcd.health().map_err(fail)?;
            print!("{out}");
            if out.contains("unhealthy") || !out.contains("is healthy") {
                return Err(CliError::Other("etcd is not healthy".into()));
            }
        }
        EtcdCommand::Snapshot { out, .. } => {
            let r = etcd.snapshot(&out).map_err(fail)?;
            println!(
                "snapshot of etcd at revision {} ({} keys, {} bytes) taken on {}\n  {} (mode 0600, sha256 {})",
                r.status.revision,
                r.status.total_key,
                r.status.total_size,
                r.member,
                out.display(),
                r.sha256
            );
        }
        EtcdCommand::Restore { snapshot: file, yes, .. } => {
            if !yes {
                return Err(CliError::Other(format!(
                    "restoring replaces the data of every etcd member with {} (writes made since it was taken are lost; the old data directories are kept aside)\n  help: re-run with --yes",
                    file.display()
                )));
            }
            let wanted = kforge_core::upgrade::Version::parse(&session.spec.cluster.spec.distribution.version);
            let r =
                etcd.restore(&file, wanted.as_ref(), &|step: &str| eprintln!("etcd restore: {step}")).map_err(fail)?;
            println!(
                "restored etcd from {} (revision {}, {} keys)",
                file.display(),
                r.status.revision,
                r.status.total_key
            );
            for (member, kept) in &r.kept {
                match kept {
                    Some(dir) => println!("  {member}: previous data kept in {dir}"),
                    None => println!("  {member}: had no data directory"),
                }
            }
            print!("{}", r.health);
            if let Some(why) = &r.apiserver_left_stopped {
                println!("{why}");
            }
        }
    }
    Ok(())
}

fn status(args: &ClusterArgs, ssh: &SshArgs, format: Format) -> Result<(), CliError> {
    let session = Session::open(args, Bundle::ReadOnly)?;
    let model = session.model();
    let plan = build_plan(&model, &session.secrets);
    let (_, ssh_config, targets) = remote(args, &session.spec.cluster, ssh.ssh_config.clone());
    let hardway = session.spec.cluster.spec.distribution.kind == spec::DistributionKind::Hardway;
    let etcd_health = hardway.then(|| {
        kforge_ssh::etcd::Etcd::connect(kforge_core::hardway::EtcdCluster::of(&model), &targets, ssh_config.clone())
            .and_then(|e| e.health())
            .map_err(|e| e.to_string())
    });
    let earliest_expiry = session
        .secrets
        .certificates
        .values()
        .filter_map(|c| kforge_core::pki::not_after(&c.pair.cert))
        .min()
        .map(|t| t.date().to_string());
    let input = kforge_ssh::status::StatusInput {
        plan: &plan,
        targets: &targets,
        ssh_config,
        earliest_expiry,
        etcd_health,
        stand_ins: if hardway {
            kforge_core::hardway::stand_ins(&model).into_iter().map(|(k, why)| (k.to_string(), why)).collect()
        } else {
            Vec::new()
        },
        // The Kubernetes checks need the real API server and kubectl.
        kubernetes: (hardway && kforge_core::hardway::addons_blocked_by(&model).is_none()).then(|| {
            kforge_ssh::status::KubernetesProbe {
                cluster_dns: model.cluster_dns_ip.to_string(),
                cluster_domain: model.spec.spec.network.cluster_domain.clone(),
                kubernetes_version: model.spec.spec.distribution.version.clone(),
            }
        }),
        // Flux's objects; Argo CD reports through its own tools.
        gitops: session
            .spec
            .cluster
            .spec
            .gitops
            .as_ref()
            .filter(|g| g.engine == spec::GitOpsEngine::Flux)
            .map(gitops_probe),
    };
    let mut report = kforge_ssh::status::status(&input).map_err(CliError::Other)?;
    // Nodes the file dropped that apply has not removed yet: the cluster is not the file.
    if !plan.removals.is_empty() {
        let names: Vec<&str> = plan.removals.iter().map(|r| r.node.as_str()).collect();
        report.checks.push(kforge_ssh::status::Check::new(
            "removals",
            false,
            format!(
                "{} dropped from the file but still in the cluster: kforge apply removes {} (kforge plan shows the steps)",
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" }
            ),
        ));
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("report serializes")),
        Format::Text => print!("{}", output::status_text(&report)),
    }
    // One rule for status and doctor: 0 all ok, 1 a warning, 2 a failure or unknown.
    match report.worst().exit_code() {
        0 => Ok(()),
        code => Err(CliError::Findings(code)),
    }
}

fn doctor(args: &ClusterArgs, ssh: &SshArgs, format: Format) -> Result<(), CliError> {
    use kforge_ssh::doctor::{DoctorInput, MeshMember};
    let session = Session::open(args, Bundle::ReadOnly)?;
    let model = session.model();
    let plan = build_plan(&model, &session.secrets);
    let (_, ssh_config, targets) = remote(args, &session.spec.cluster, ssh.ssh_config.clone());
    let spec = &session.spec.cluster.spec;
    let hardway = spec.distribution.kind == spec::DistributionKind::Hardway;
    let hardway_api = hardway && kforge_core::hardway::addons_blocked_by(&model).is_none();
    let etcd = kforge_core::hardway::EtcdCluster::of(&model);
    eprintln!("kforge doctor: asking {} hosts over SSH (read-only)…", targets.len());
    let input = DoctorInput {
        plan: &plan,
        targets: &targets,
        ssh_config,
        mesh_interface: spec.mesh.interface.clone(),
        mesh_mtu: spec.mesh.mtu,
        members: model
            .members
            .iter()
            .map(|m| MeshMember {
                name: m.name.clone(),
                mesh_ip: m.mesh_ip.to_string(),
                public_key: m.public_key.to_string(),
            })
            .collect(),
        hardway_api,
        etcd_endpoints: if hardway {
            etcd.members.iter().map(|m| (m.name.clone(), m.client_url())).collect()
        } else {
            Vec::new()
        },
        cgroup_v1_allowed: spec.hardway.allow_cgroup_v1,
        renew_before_days: i64::from(spec.pki.renew_before_days),
        cluster_dns: hardway_api.then(|| (model.cluster_dns_ip.to_string(), spec.network.cluster_domain.clone())),
        images: if hardway { spec.images.iter().map(|i| i.name.clone()).collect() } else { Vec::new() },
    };
    let mut report = kforge_ssh::doctor::doctor(&input).map_err(CliError::Other)?;
    // The workstation's own kubeconfig, the one kubectl here uses.
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).next())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config")));
    if let Some(path) = kubeconfig
        && let Ok(text) = std::fs::read_to_string(&path)
        && let Some(d) = kforge_ssh::doctor::local_kubeconfig(&path.display().to_string(), &text, &model.api_url())
    {
        report.diagnoses.push(d);
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("report serializes")),
        Format::Text => print!("{}", output::doctor_text(&report)),
    }
    match report.worst().exit_code() {
        0 => Ok(()),
        code => Err(CliError::Findings(code)),
    }
}

fn explain(args: &ClusterArgs, node: Option<&str>, path: Option<&str>) -> Result<(), CliError> {
    let session = Session::open(args, Bundle::ReadOnly)?;
    let plan = build_plan(&session.model(), &session.secrets);
    print!("{}", output::explain(&plan, node, path).map_err(CliError::Other)?);
    Ok(())
}

/// `kforge reset`: the named nodes (or --all) as kforge found them; a preview unless --yes.
fn reset(args: &ClusterArgs, names: &[String], all: bool, yes: bool, ssh: &SshArgs) -> Result<(), CliError> {
    let session = Session::open(args, Bundle::ReadOnly)?;
    let cluster = &session.spec.cluster;
    let known: Vec<&str> = cluster.spec.nodes.iter().map(|n| n.name.as_str()).collect();
    for name in names {
        if !known.contains(&name.as_str()) {
            return Err(CliError::Other(format!(
                "{} has no node `{name}`{}\n  help: name nodes as the file does; nothing was changed",
                args.file.display(),
                spec::names::did_you_mean(name, &known)
            )));
        }
    }
    let chosen: Vec<&spec::Node> = cluster.spec.nodes.iter().filter(|n| all || names.contains(&n.name)).collect();
    if !all && let Some(n) = chosen.iter().find(|n| n.role.is_control_plane()) {
        return Err(CliError::Other(format!(
            "{} runs the control plane: resetting it alone would wipe an etcd member the others still count for quorum\n  help: reset workers one by one, or the whole cluster with --all --yes; nothing was changed",
            n.name
        )));
    }
    if all && !yes {
        eprintln!("kforge reset --all: the whole cluster {} (preview; add --yes to do it)", cluster.metadata.name);
    }
    let (_, ssh_config, targets) = remote(args, cluster, ssh.ssh_config.clone());
    let targets: Vec<kforge_ssh::Target> =
        targets.into_iter().filter(|t| chosen.iter().any(|n| n.name == t.node)).collect();
    let reports =
        kforge_ssh::reset::reset(&targets, ssh_config, &cluster.spec.mesh.interface, &cluster.metadata.name, !yes)
            .map_err(CliError::Other)?;
    let mut failed = Vec::new();
    for r in &reports {
        println!("{}:", r.node);
        for a in &r.actions {
            println!("  {a}");
        }
        if r.actions.is_empty() && r.error.is_none() {
            println!("  nothing of kforge's is left here");
        }
        if let Some(e) = &r.error {
            println!("  FAILED: {e}");
            failed.push(r.node.as_str());
        }
    }
    if !failed.is_empty() {
        return Err(CliError::Other(format!(
            "reset failed on {}\n  help: fix the cause above and run the same command again: each action is skipped once done",
            failed.join(", ")
        )));
    }
    if yes {
        println!("next: `kforge apply -f {}` adds them again (they are still in the file)", args.file.display());
    } else {
        println!("preview only: nothing was changed; add --yes to do it");
    }
    Ok(())
}
