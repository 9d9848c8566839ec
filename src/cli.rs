//! Command-line surface: what each command does, in the words `--help` shows.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "kforge",
    version,
    about = "One declarative file turns any set of Linux hosts into a secure, GitOps-ready Kubernetes cluster",
    long_about = "One declarative file turns any set of Linux hosts into a secure, GitOps-ready Kubernetes cluster.\n\n\
        kforge reads kforge.yaml, keeps every secret in a bundle beside it (kforge.secrets.yaml, 0600, or\n\
        kforge.secrets.age), and derives everything each node needs: WireGuard mesh, nftables firewall,\n\
        certificates, systemd units, and either K3s or upstream Kubernetes \"the hard way\" (etcd,\n\
        kube-apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy). Nothing touches\n\
        a host until you deliver it: `apply` over SSH, or `render` to files and cloud-init user-data.\n\n\
        Start here:\n  kforge init --example homelab mycluster   write a cluster file and its secrets\n  \
        kforge check -f mycluster/kforge.yaml      validate it\n  \
        kforge plan  -f mycluster/kforge.yaml      see what every node gets\n  \
        kforge render -f mycluster/kforge.yaml --out out/   files + cloud-init user-data per node\n  \
        kforge apply -f mycluster/kforge.yaml      converge the hosts over SSH\n  \
        kforge status -f mycluster/kforge.yaml     check mesh, firewall, certificates, services, etcd\n  \
        kforge explain -f mycluster/kforge.yaml NODE PATH   why a generated file says what it says",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The cluster file.
    #[arg(short = 'f', long = "file", value_name = "FILE", default_value = "kforge.yaml")]
    pub file: PathBuf,
    /// age identity file that opens kforge.secrets.age (or set KFORGE_AGE_IDENTITY;
    /// KFORGE_AGE_PASSPHRASE for a passphrase).
    #[arg(long, value_name = "FILE")]
    pub age_identity: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a commented cluster file and create its secrets bundle.
    ///
    /// The secrets bundle (CAs, tokens, WireGuard keys) is created beside the file:
    /// kforge.secrets.age when KFORGE_AGE_IDENTITY or KFORGE_AGE_PASSPHRASE is set,
    /// otherwise kforge.secrets.yaml with mode 0600.
    Init {
        /// Built-in example to start from.
        #[arg(long, value_name = "NAME", default_value = "homelab", value_parser = clap::builder::PossibleValuesParser::new(kforge_core::spec::examples::names()))]
        example: String,
        /// Directory to write kforge.yaml into.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// age identity file to encrypt the new bundle to.
        #[arg(long, value_name = "FILE")]
        age_identity: Option<PathBuf>,
    },
    /// Validate the cluster file and print a short summary (touches nothing).
    Check(ClusterArgs),
    /// Show, per node and phase, every file (path, mode, size, hash), unit and command.
    ///
    /// Read-only: the secrets bundle is never written. What a new node needs (keys,
    /// addresses, certificates) is made in memory and named on stderr; `apply` records
    /// it. A node dropped from the file is shown as a removal, with its steps.
    Plan {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Also read every host over SSH (read-only, one round trip each): the releases
        /// running now, mixed versions, the upgrade rules' verdict, and per node the
        /// steps apply would take in order with the gates between them.
        #[arg(long)]
        observe: bool,
        /// OpenSSH config for --observe (default: ssh_config beside the cluster file).
        #[arg(long, value_name = "FILE", requires = "observe")]
        ssh_config: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Write every node's files and cloud-init user-data into a directory.
    ///
    /// Layout: DIR/NODE/<absolute path of each file>, DIR/NODE/user-data (#cloud-config),
    /// DIR/NODE/var/lib/kforge/bootstrap.sh, DIR/_peers/PEER/<iface>.conf.
    /// Re-rendering replaces DIR whole; a directory kforge did not write is refused.
    /// The files carry the bundle's keys, so render refuses while the bundle lacks
    /// something the file needs (a new node's keys): `kforge secrets update` records it.
    /// Each node's user-data size is reported, plain and gzipped; a host booted from it
    /// converges with no SSH, and `kforge apply` later takes it over (docs/cloud-init.md).
    Render {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Write each node's user-data gzip-compressed (NODE/user-data.gz): cloud-init
        /// reads it, and it is about a quarter of the size.
        #[arg(long)]
        gzip: bool,
        /// Refuse (writing nothing) when a node's user-data, as delivered (with --gzip:
        /// compressed), exceeds SIZE: bytes, or with K/KiB (`16K`), or `ec2` (16 KiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_user_data_limit)]
        user_data_limit: Option<usize>,
    },
    /// Converge the hosts to the plan over SSH (phased, parallel, idempotent).
    ///
    /// Facts first (one round trip per host), then preflight, then phase by phase:
    /// only files whose hash differs are written (temp file, fsync, rename), only
    /// units whose inputs changed are restarted (the mesh reloads with wg syncconf).
    /// State undone outside kforge's files (an imported image deleted, forwarding off, a
    /// rule inserted into the loaded firewall table) is found by a recheck and repaired.
    /// Files K3s owns after its first start (its CA files, service.key, the encryption
    /// config) are written once and never again: a difference is reported with the K3s
    /// command that changes them. Each host's architecture picks its artifacts, and every
    /// binary must report spec.distribution.version before anything starts.
    /// Host keys are checked strictly. A second run with nothing changed touches nothing.
    /// A host its bootstrap converged (user-data, a rendered tree) is taken over, and one
    /// another tool set up exactly as planned is adopted: nothing written or restarted,
    /// its manifest recorded (docs/cloud-init.md).
    Apply {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Show per host what would change (files added/changed/removed, drift to repair, units to restart or reload, files left to K3s), touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Hosts worked on at once inside a phase.
        #[arg(long, default_value_t = 10, value_name = "N")]
        parallel: usize,
        /// OpenSSH config to use (default: ssh_config beside the cluster file if there is one,
        /// else your own ~/.ssh/config).
        #[arg(long, value_name = "FILE")]
        ssh_config: Option<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
        /// Remove a departed controller's etcd member even when the members left would not
        /// keep quorum (one of them down): etcd then serves nothing until enough of them
        /// answer again. Without it such a removal is refused before anything is touched;
        /// usually the better way is to bring the member back, or drop the dead one from the
        /// file too (it is removed first).
        #[arg(long)]
        force_quorum_loss: bool,
        /// Hand what UNIT holds (a port kforge needs, the mesh port's WireGuard interface)
        /// over to kforge: the unit is stopped and disabled before anything else, and the
        /// report says so. Without it such a foreign holder refuses the apply (a dry run
        /// names it, with its program and unit). Repeatable.
        #[arg(long, value_name = "UNIT")]
        hand_over: Vec<String>,
        /// A host carrying another kforge cluster's record (a re-purposed machine:
        /// /var/lib/kforge/manifest.json naming another cluster or node) becomes this
        /// node: its record is replaced, and the files it lists are left where they are
        /// (kforge never removes what another record lists). Without it such a host is
        /// refused before anything is touched, and a dry run names it.
        #[arg(long)]
        replace_foreign_record: bool,
        /// A drain may delete pods' emptyDir data (their controllers start new pods,
        /// empty). Without it, a drain that would is refused before any cordon, naming
        /// the pods and volumes (a dry run names them too).
        #[arg(long)]
        delete_emptydir_data: bool,
        /// A drain may delete pods no controller runs: they are gone for good. Without it,
        /// such a pod on a node to drain is refused before any cordon, named.
        #[arg(long)]
        delete_bare_pods: bool,
        /// Refuse at once, naming the holder, when another kforge works on this cluster
        /// (its lock, FILE.lock beside the cluster file) instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the admin kubeconfig (server = the API's mesh address, CA embedded).
    ///
    /// It holds the admin's private key: prefer --out, which writes it with mode 0600.
    Kubeconfig {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Write to FILE (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Find, offline, what would break: removed APIs, bad ingress-nginx annotations,
    /// unreachable webhooks, unpublished ports, past-end-of-life versions, MTU budgets.
    ///
    /// Lints the cluster file (if there is one), the Kubernetes manifests kforge itself
    /// renders, and PATHS: manifest files, directories (every *.yaml / *.yml), or - for
    /// standard input (e.g. `kustomize build . | kforge lint -`). With no PATHS and
    /// spec.gitops set, the GitOps path of a checkout beside the cluster file.
    /// Each finding: file:line:column, what is wrong and why it matters, the fix.
    ///
    /// Exit: 0 clean (notes only), 2 errors found, 3 warnings only, 1 lint could not run.
    ///
    ///   kforge lint                           the cluster file and kforge's own manifests
    ///   kforge lint apps/                     …and every manifest under apps/
    ///   kforge lint -o sarif apps/ > lint.sarif   for code-scanning tools
    #[command(verbatim_doc_comment)]
    Lint {
        /// The cluster file (optional: without one, manifests get the checks that need no topology).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// age identity file that opens kforge.secrets.age (or set KFORGE_AGE_IDENTITY).
        #[arg(long, value_name = "FILE")]
        age_identity: Option<PathBuf>,
        /// Manifest files, directories, or - for standard input.
        paths: Vec<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = LintFormat::Text)]
        output: LintFormat,
    },
    /// Check the cluster for real, over SSH: mesh, firewall, certificates, services, etcd.
    ///
    /// Every node dials every other node's mesh address; the firewall table must be
    /// loaded; each certificate file on a host must be the one the bundle issued; every
    /// unit kforge starts must be active; hardway: etcd must answer
    /// `endpoint health --cluster` over mTLS. Components installed as stand-ins are
    /// listed by name as not running. A check a host did not answer for is unknown, never ok.
    /// Exit: 0 all ok, 2 a check failed or is unknown (1 is a warning: doctor's rule too).
    Status(RemoteCheckArgs),
    /// Diagnose the running cluster, read-only: each check ok / warn / fail, with the
    /// evidence, the cause and the fix.
    ///
    /// Over SSH, every host at once: clock skew, swap, cgroup version, forwarding
    /// sysctls, duplicate machine-id/hostname, every mesh pair's handshake and a
    /// don't-fragment ping at the mesh MTU (MTU black holes), the loaded firewall
    /// against the plan and every required node-to-node port over the mesh (a rule that
    /// hides a node), certificates on disk against the bundle and their expiry, units,
    /// loopback resolvers (CoreDNS loops), flannel's VXLAN device, imported images gone
    /// or unpinned. Then, where the real control plane runs (hardway): etcd member by member (quorum, leader, stale
    /// members, alarms), /readyz?verbose, the scheduler's and controller-manager's
    /// leases, Pending pods with the scheduler's reason, CoreDNS answering.
    /// Nothing is written on any host.
    ///
    /// A check a host did not answer for is unknown, never ok. Exit: 0 all ok, 1 warnings
    /// only, 2 a check failed or is unknown (status follows the same rule).
    Doctor(RemoteCheckArgs),
    /// Take off hosts everything kforge installed, so a normal apply can add them again.
    ///
    /// Without --yes: a preview, one line per action, and nothing changes. With --yes:
    /// units kforge installed are stopped and disabled; kube-proxy cleans its rules;
    /// containers, mounts under the kubelet's and containerd's directories, CNI links and
    /// network namespaces, the mesh interface and the firewall table go; every file in
    /// the host's manifest and the programs' state directories are removed. SSH is left
    /// as it is. The secrets bundle is not changed: a node still in the file is added
    /// back by the next `kforge apply`.
    ///
    /// A control-plane node alone is refused (its etcd member would stay in the others'
    /// quorum); --all resets every node of the file together.
    Reset {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Nodes to reset (names from the cluster file).
        #[arg(value_name = "NODE", required_unless_present = "all", conflicts_with = "all")]
        nodes: Vec<String>,
        /// Every node of the cluster file (the whole cluster; needs --yes).
        #[arg(long)]
        all: bool,
        /// Do it (without: a preview that changes nothing).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        ssh: SshArgs,
    },
    /// Explain a node's files: what each is, which component reads it, and why its
    /// important fields have their values (the learner's view of the hard way).
    ///
    ///   kforge explain                     the nodes and what each runs
    ///   kforge explain NODE                every file of NODE, one line each
    ///   kforge explain NODE PATH           one file in full (PATH as in `kforge plan`)
    #[command(verbatim_doc_comment)]
    Explain {
        #[command(flatten)]
        cluster: ClusterArgs,
        node: Option<String>,
        path: Option<String>,
    },
    /// The certificates kforge issued: an expiry table, and renewal through apply.
    ///
    ///   kforge certs check                 every CA and leaf: issuer, expiry, days left, due?
    ///   kforge certs renew                 re-issue the leaves due, deliver with apply
    ///   kforge certs renew apiserver/cp-1  re-issue these leaves now, deliver with apply
    #[command(subcommand)]
    #[command(verbatim_doc_comment)]
    Certs(CertsCommand),
    /// The secrets bundle: record what the cluster file needs (touches no host).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// etcd of a hardway cluster: health, snapshot, restore (over SSH, mTLS).
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// GitOps (spec.gitops): the keys to give the forge and your team, the forge's host
    /// key to pin, and what the engine has fetched and applied.
    ///
    ///   kforge gitops deploy-key        the deploy key's public half: add it to the forge (read-only)
    ///   kforge gitops recipient         the age recipient: `sops --encrypt --age <it>` secrets for Git
    ///   kforge gitops host-key HOST     a forge's SSH host key line to check and pin in knownHosts
    ///   kforge gitops status            source revision, Kustomization ready, last error
    #[command(subcommand)]
    #[command(verbatim_doc_comment)]
    Gitops(GitopsCommand),
    /// Local lab machines to try kforge on (root; systemd-nspawn + network namespaces).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Print the JSON Schema of the cluster file (for editor completion and checks).
    Schema,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

/// A command that asks the hosts over SSH and reports: the cluster, SSH, the format.
#[derive(Args, Debug, Clone)]
pub struct RemoteCheckArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub ssh: SshArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Args, Debug, Clone)]
pub struct SshArgs {
    /// OpenSSH config to use (default: ssh_config beside the cluster file if there is one,
    /// else your own ~/.ssh/config).
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum EtcdCommand {
    /// `etcdctl endpoint health --cluster` with kforge's client certificate.
    Health {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        ssh: SshArgs,
    },
    /// Save a snapshot on a healthy controller and copy it here (mode 0600).
    Snapshot {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        ssh: SshArgs,
        /// Where to write the snapshot.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Rebuild every member from a snapshot, in one step.
    ///
    /// Checks the snapshot on a controller before stopping anything, then stops
    /// kube-apiserver and etcd on every controller, restores each member's data
    /// directory under its name and mesh peer URL (the old one is kept as
    /// /var/lib/etcd.before-restore-<time>), and starts all members together.
    /// Destructive for writes made after the snapshot: needs --yes.
    Restore {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        ssh: SshArgs,
        /// The snapshot file (from `kforge etcd snapshot`).
        #[arg(value_name = "FILE")]
        snapshot: PathBuf,
        /// Confirm: replace the cluster's data with the snapshot's.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Create and record what the cluster file needs and the bundle lacks — a new
    /// node's WireGuard key, mesh address, pod network and certificates, leaves due for
    /// renewal — and nothing else: no host is touched. `apply` does this too, before it
    /// delivers; use this one before `kforge render` for machines that boot from
    /// user-data. A node dropped from the file keeps its keys here until `apply` has
    /// removed it from the cluster.
    Update {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Refuse at once when another kforge works on this cluster, instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Every certificate in the secrets bundle: issuer, expiry, days left, and whether
    /// it is due (a leaf within pki.renewBeforeDays). Reads the bundle only; `kforge
    /// doctor` compares the hosts' files with it.
    ///
    /// Exit: 0 all ok, 2 something expired, 3 leaves due.
    Check {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Re-issue leaf certificates and deliver them with `kforge apply`: only the files
    /// that changed are written and only the units that read them restart.
    ///
    /// Without NAMES: the leaves due within pki.renewBeforeDays (apply and `kforge
    /// secrets update` re-issue those too; this one also delivers them). With NAMES
    /// (as `kforge certs check` lists them, e.g. apiserver/cp-1): those, now.
    /// CAs are not renewed here.
    Renew {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Leaf certificates to re-issue now.
        names: Vec<String>,
        /// Re-issue and save the bundle, but do not apply.
        #[arg(long)]
        no_apply: bool,
        /// OpenSSH config to use for the apply.
        #[arg(long, value_name = "FILE")]
        ssh_config: Option<PathBuf>,
        /// Refuse at once when another kforge works on this cluster, instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum GitopsCommand {
    /// Print the public half of the cluster's deploy key (`ssh-ed25519 AAAA… kforge-NAME-deploy`).
    ///
    /// Add it to the repository as a read-only deploy key. The private half stays in the
    /// secrets bundle and in the cluster's flux-system Secret; it is never printed.
    DeployKey {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the cluster's age recipient (`age1…`) for SOPS.
    ///
    /// Encrypt a Secret for the repository with it, e.g.
    ///   sops --encrypt --age "$(kforge gitops recipient)" --encrypted-regex '^(data|stringData)$' secret.yaml
    /// Only the cluster (its sops-age Secret) can decrypt it.
    Recipient {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Fetch a forge's SSH host keys (ssh-keyscan) and print the lines to pin.
    ///
    /// The keys come over the network unauthenticated: compare each fingerprint with
    /// the one your forge publishes before pasting a line into spec.gitops.knownHosts.
    /// kforge itself never trusts a host key on first use.
    HostKey {
        /// The forge's host name or address.
        host: String,
        /// Its SSH port.
        #[arg(long, default_value_t = 22)]
        port: u16,
    },
    /// What the GitOps engine reports, from the API (over SSH on the first controller).
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        ssh: SshArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LintFormat {
    Text,
    Json,
    /// SARIF 2.1.0 (GitHub code scanning and other tools read it).
    Sarif,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabExampleArg {
    /// K3s: one server, agents (default 4 machines, lab-4 behind NAT).
    K3s,
    /// K3s HA: three servers on embedded etcd, agents (default 4 machines, lab-4 behind NAT).
    K3sHa,
    /// Upstream Kubernetes the hard way: every machine a controller and a worker (default 3).
    Hardway,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabImageArg {
    /// Debian 13 (trixie), current stable.
    #[value(name = "debian-13")]
    Debian13,
    /// Debian 12 (bookworm).
    #[value(name = "debian-12")]
    Debian12,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabMirrorAction {
    /// Stop serving (the address stays: "connection refused").
    Stop,
    /// Serve again.
    Start,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Start Debian machines with systemd and sshd, on a private "internet" bridge.
    ///
    /// The machines are bare, as a provider hands a VPS out: the base system, sshd,
    /// cloud-init, and nothing kforge needs. `kforge apply` installs that with apt from
    /// the lab's package mirror, served on the lab's internet (requests in
    /// DIR/mirror.log; `kforge lab mirror stop` for an outage).
    ///
    /// Writes DIR/kforge.yaml (the lab example with these machines), DIR/ssh_config and
    /// DIR/known_hosts (strict host keys). Each image and its mirror are built once with
    /// debootstrap into /var/cache/kforge-lab (KFORGE_LAB_CACHE). Then:
    ///   kforge apply -f lab/kforge.yaml
    ///
    /// --example k3s (the default) is the seed operators' shape: lab-1 a server, lab-2..4
    /// agents, lab-4 "at home" behind NAT; --example k3s-ha has three servers on embedded
    /// etcd. DIR/images gets pause and busybox archives (K3s imports them from
    /// agent/images/); a k3s binary goes at DIR/bin/k3s.
    ///
    /// --example hardway: every machine a controller and a worker, running the real
    /// upstream programs: DIR/bin links to the components cache that
    /// `scripts/components v1.37.2` builds from the Go modules, and DIR/images gets the
    /// lab's image archives (pause, CoreDNS, busybox). Real kubelets need kernel-wide
    /// sysctls this workstation may lack; --host-sysctls lets the lab set them (each
    /// change printed, restored by `lab down`).
    Up {
        /// Which cluster file to write, and the machines' default shape.
        #[arg(long, value_enum, default_value = "k3s")]
        example: LabExampleArg,
        /// Lab directory.
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
        /// How many machines [default: 4 for k3s and k3s-ha, 3 for hardway].
        #[arg(long)]
        nodes: Option<usize>,
        /// Put this machine behind a masquerading router (no public endpoint). Repeatable.
        /// [default for k3s and k3s-ha: the last machine, when it is an agent]
        #[arg(long, value_name = "NAME", conflicts_with = "all_public")]
        behind_nat: Vec<String>,
        /// Every machine gets a public address (no machine behind NAT).
        #[arg(long)]
        all_public: bool,
        /// The machines' image, as a provider hands it out: the base system, sshd,
        /// cloud-init, ca-certificates, and nothing kforge needs (kforge installs that
        /// from the lab's package mirror).
        #[arg(long, value_enum, default_value = "debian-13")]
        image: LabImageArg,
        /// Debian mirror debootstrap and the lab's package mirror fetch from, once per
        /// image (default: this machine's apt sources).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// Set the kernel-wide sysctls kubelets require (vm.overcommit_memory=1,
        /// kernel.panic=10, kernel.panic_on_oops=1, …) on this workstation: lab machines
        /// share its kernel. Printed, and restored when the last such lab goes down.
        #[arg(long)]
        host_sysctls: bool,
        /// One more machine, `forge`: a git server over SSH (its own host key) with one
        /// repository, ssh://git@FORGE/srv/git/fleet.git. The cluster file's spec.gitops
        /// follows it with Flux (hardway). Give it the deploy key with
        ///   kforge gitops deploy-key -f DIR/kforge.yaml | ssh -F DIR/ssh_config forge forge-add-deploy-key
        /// and push with git over `ssh -F DIR/ssh_config` as git@forge.
        #[arg(long)]
        forge: bool,
        /// Boot every machine from the user-data `kforge render` writes for its node
        /// (into DIR/user-data), through cloud-init's NoCloud source, with the node's
        /// artifacts baked into its disk as a cluster image would carry them. The
        /// machines converge at boot with no SSH from kforge; see it with
        /// `ssh -F DIR/ssh_config lab-1 cloud-init status --long`, then `kforge status`,
        /// and `kforge apply` takes them over (docs/cloud-init.md).
        #[arg(long, conflicts_with = "forge")]
        user_data: bool,
    },
    /// Take the lab's package mirror away or bring it back, as a provider's mirror
    /// outage: machines meet "connection refused" on its address.
    Mirror {
        #[arg(value_enum)]
        action: LabMirrorAction,
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
    /// The lab's package mirror itself (started by `lab up` in the lab's network).
    #[command(hide = true)]
    ServeMirror {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        log: PathBuf,
    },
    /// Stop the machines and remove every namespace, interface, mount and file the lab made.
    Down {
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
        /// Every lab on this machine, even one whose directory was deleted.
        #[arg(long)]
        all: bool,
    },
    /// Show each machine: running, address, SSH reachable.
    Status {
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
    /// Reboot one machine (clean shutdown, boot on the same disk): what comes back is
    /// what its enabled units bring back, with no apply.
    Restart {
        /// The machine, e.g. lab-3.
        name: String,
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
    /// Reinstall a machine in place (empty disk, new SSH host key), as a provider's
    /// rebuild would: strict host keys refuse it until you accept the new key.
    Reinstall {
        /// The machine, e.g. lab-4.
        name: String,
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
    /// Add a bare machine to a running lab (public address, the lab's SSH key, its host
    /// key pinned in known_hosts): add it to the cluster file as a node, then apply.
    Add {
        /// The new machine's name, e.g. lab-4.
        name: String,
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
    /// Remove one machine from a running lab, as a cancelled VPS goes: stopped, its disk,
    /// network and host key gone. Take it out of the cluster first (drop it from the
    /// cluster file and apply), or the cluster keeps a node that never answers.
    Remove {
        /// The machine, e.g. lab-4.
        name: String,
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
}

/// `--user-data-limit`: bytes, `16K`/`16KiB`, or a provider's name.
fn parse_user_data_limit(s: &str) -> Result<usize, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("ec2") {
        return Ok(kforge_core::render::cloud_init::EC2_USER_DATA_LIMIT);
    }
    let upper = t.to_ascii_uppercase();
    let (digits, factor) = match upper.strip_suffix("KIB").or_else(|| upper.strip_suffix('K')) {
        Some(d) => (d, 1024),
        None => (upper.as_str(), 1),
    };
    match digits.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * factor),
        _ => Err(format!("`{s}` is not a size: give bytes (16384), KiB (16K), or `ec2`")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
