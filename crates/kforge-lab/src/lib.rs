//! `kforge lab`: real Linux machines on one computer, to try kforge and to test it.
//!
//! N Debian machines with real systemd and sshd run as systemd-nspawn containers,
//! each in its own network namespace on a bridge that plays "the internet"; the
//! workstation joins through a veth. `up` writes, into the lab directory:
//!
//! ```text
//! lab/kforge.yaml     the `lab` example with these machines' addresses
//! lab/ssh_config      Host entries kforge apply uses (strict host keys)
//! lab/known_hosts     each machine's own host key, known before first contact
//! lab/id_ed25519      the lab's SSH key
//! lab/lab.json        what was created, so `down` can remove exactly that
//! ```
//!
//! `down` stops the machines and removes every namespace, veth, mount and file it
//! made. Requires root.

pub mod forge;
pub mod host_sysctls;
pub mod images;
mod machine;
pub use machine::MachineSeed;
pub mod mirror;
mod net;
pub mod rootfs;
pub use rootfs::Image;
mod sh;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use sh::CommandError;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl LabError {
    fn io(path: &Path, source: std::io::Error) -> LabError {
        LabError::Io { path: path.display().to_string(), source }
    }
}

pub struct UpOptions<'a> {
    pub dir: PathBuf,
    /// How many machines; `None`: the example's own shape ([`LabExample::default_nodes`]).
    pub nodes: Option<usize>,
    /// Machines behind NAT; `None`: the example's default ([`LabExample::default_behind_nat`]).
    pub behind_nat: Option<Vec<String>>,
    /// Where debootstrap and the lab's package mirror fetch from (default: this
    /// workstation's apt sources).
    pub mirror: Option<String>,
    /// The machines' image (what a provider hands out: nothing kforge needs).
    pub image: Image,
    pub example: LabExample,
    /// Let the lab set the kernel-wide sysctls real kubelets require (see
    /// [`host_sysctls`]); the hardway lab refuses to start without it.
    pub host_sysctls: bool,
    /// One more machine, `forge`: a git server over SSH on the lab's "internet", and
    /// the cluster file's `gitops` follows its repository (hardway; see [`forge`]).
    pub forge: bool,
    /// Boot every machine from its node's user-data (cloud-init NoCloud): the seeder
    /// renders it from the cluster file `up` wrote. The machines converge at boot with
    /// no SSH from kforge.
    pub user_data: Option<&'a Seeder<'a>>,
}

/// Which cluster file `up` writes for the machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabExample {
    /// k3s: lab-1 is the server, the others agents; bring a k3s binary to bin/k3s.
    /// By default the seed operators' shape: one server, three agents, the last one at
    /// "home" behind NAT.
    K3s,
    /// k3s, highly available: lab-1..lab-3 are servers on embedded etcd (lab-1 starts
    /// it with `cluster-init`, the others join), the rest agents; by default one agent,
    /// behind NAT.
    K3sHa,
    /// hardway: every machine a controller and a worker, every component the real
    /// upstream program from `scripts/components` (built from Go modules).
    Hardway,
}

impl LabExample {
    /// Machines when `--nodes` is not given.
    pub fn default_nodes(self) -> usize {
        match self {
            LabExample::K3s | LabExample::K3sHa => 4,
            LabExample::Hardway => 3,
        }
    }

    /// How many of the first machines run the control plane (hardway: all of them).
    pub fn servers(self, nodes: usize) -> usize {
        match self {
            LabExample::K3s => 1,
            LabExample::K3sHa => 3.min(nodes),
            LabExample::Hardway => nodes,
        }
    }

    /// Machines behind NAT when `--behind-nat` is not given: for K3s the last machine,
    /// if it is an agent (a home node dials out; servers keep public endpoints).
    pub fn default_behind_nat(self, nodes: usize) -> Vec<String> {
        match self {
            LabExample::K3s | LabExample::K3sHa if nodes > self.servers(nodes) => vec![format!("lab-{nodes}")],
            _ => Vec::new(),
        }
    }

    fn is_k3s(self) -> bool {
        matches!(self, LabExample::K3s | LabExample::K3sHa)
    }
}

/// The Kubernetes version of the hardway lab (its example pins the same).
pub const HARDWAY_VERSION: &str = "v1.37.2";

/// Where `scripts/components VERSION` puts the binaries (`KFORGE_COMPONENTS`, else
/// /var/cache/kforge-components).
pub fn components_dir(version: &str) -> PathBuf {
    let root = std::env::var_os("KFORGE_COMPONENTS").map(PathBuf::from);
    root.unwrap_or_else(|| PathBuf::from("/var/cache/kforge-components")).join(format!("bin-{version}"))
}

/// Check that every file the hardway lab example names under ./bin is in the
/// components cache; returns the cache directory `lab up` links as DIR/bin.
fn hardway_components() -> Result<PathBuf, LabError> {
    let dir = components_dir(HARDWAY_VERSION);
    let example = kforge_core::spec::examples::HARDWAY_LAB;
    let missing: Vec<&str> = example
        .split("path: ./bin/")
        .skip(1)
        .filter_map(|rest| rest.split('}').next())
        .filter(|f| !dir.join(f.trim()).exists())
        .collect();
    if !missing.is_empty() || !Path::new(images::BUSYBOX_STATIC).exists() {
        return Err(LabError::Setup(format!(
            "the hardway lab runs the real Kubernetes components, and {} {} missing\n  help: scripts/components {HARDWAY_VERSION} (builds them from their Go modules, cached), and apt-get install busybox-static",
            if missing.is_empty() {
                images::BUSYBOX_STATIC.to_string()
            } else {
                format!("{} in {}", missing.join(", "), dir.display())
            },
            if missing.len() > 1 { "are" } else { "is" },
        )));
    }
    Ok(dir)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Short id making this lab's namespace and interface names unique.
    pub id: String,
    pub dir: PathBuf,
    /// Overlays live here (outside the lab directory, which may be on overlayfs).
    pub runtime: PathBuf,
    pub subnet: Ipv4Net,
    pub workstation_ip: Ipv4Addr,
    pub wan_ns: String,
    pub host_veth: String,
    pub machines: Vec<MachineState>,
    /// This lab holds the kubelet's kernel-wide sysctls (restored when the last such
    /// lab goes down).
    #[serde(default)]
    pub host_sysctls: bool,
    /// The machines' image.
    #[serde(default)]
    pub image: Image,
    /// The package mirror on the lab's internet.
    #[serde(default)]
    pub mirror: Option<mirror::MirrorState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    pub name: String,
    pub ns: String,
    /// Public address on the lab bridge; `None` behind NAT.
    pub public_ip: Option<Ipv4Addr>,
    /// Where the workstation reaches its SSH.
    pub ssh_ip: Ipv4Addr,
    /// Router namespace, for a machine behind NAT.
    pub router_ns: Option<String>,
    pub pid: Option<u32>,
    /// The machine's own cgroup directory in each hierarchy (removed by `down`).
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// The lab's forge (not a cluster node).
    #[serde(default)]
    pub forge: bool,
}

impl MachineState {
    /// A machine with a public address on the lab's internet (SSH goes straight to it).
    fn public(state: &LabState, name: &str, ip: std::net::Ipv4Addr) -> MachineState {
        MachineState {
            name: name.to_string(),
            ns: format!("kfl{}-{name}", state.id),
            public_ip: Some(ip),
            ssh_ip: ip,
            router_ns: None,
            pid: None,
            cgroups: machine::cgroup_dirs(&format!("{}-{name}", state.id)),
            forge: name == forge::NAME,
        }
    }
}

impl LabState {
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join("lab.json");
        let text = fs::read_to_string(&path)
            .map_err(|_| LabError::Setup(format!("no lab in {} (run `kforge lab up` first)", dir.display())))?;
        serde_json::from_str(&text).map_err(|e| LabError::Setup(format!("{}: {e}", path.display())))
    }

    /// Saved in the lab directory and in the runtime directory, so `lab down --all`
    /// finds a lab even when its directory is gone.
    fn save(&self) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        fs::create_dir_all(&self.runtime).map_err(|e| LabError::io(&self.runtime, e))?;
        for path in [self.dir.join("lab.json"), self.runtime.join("lab.json")] {
            kforge_files::write_atomic(&path, text.as_bytes(), 0o600).map_err(|e| LabError::io(&path, e))?;
        }
        Ok(())
    }

    pub fn machine(&self, name: &str) -> Option<&MachineState> {
        self.machines.iter().find(|m| m.name == name)
    }
}

/// Bring a lab up. On any failure, everything created so far is torn down again.
/// Boots the lab from user-data: given the cluster file `up` wrote, each machine's
/// seed (`kforge render`'s user-data for its node, and the artifacts to bake in).
pub type Seeder<'a> = dyn Fn(&Path) -> Result<std::collections::BTreeMap<String, machine::MachineSeed>, String> + 'a;

/// Create the machines and boot them; with `opts.user_data`, each boots from its
/// node's user-data (cloud-init NoCloud) and converges with no SSH from kforge.
pub fn up(opts: &UpOptions, log: &dyn Fn(&str)) -> Result<LabState, LabError> {
    let seeder = opts.user_data;
    let nodes = opts.nodes.unwrap_or(opts.example.default_nodes());
    if nodes == 0 || nodes > 40 {
        return Err(LabError::Setup("--nodes must be between 1 and 40".into()));
    }
    if opts.example == LabExample::K3sHa && nodes < 3 {
        return Err(LabError::Setup(format!(
            "--example k3s-ha needs at least 3 machines (three servers), not {nodes}"
        )));
    }
    let behind_nat = opts.behind_nat.clone().unwrap_or_else(|| opts.example.default_behind_nat(nodes));
    let mut names: Vec<String> = (1..=nodes).map(|i| format!("lab-{i}")).collect();
    for n in &behind_nat {
        if !names.contains(n) {
            return Err(LabError::Setup(format!("--behind-nat {n}: no such machine (they are {})", names.join(", "))));
        }
    }
    if behind_nat.len() == nodes {
        return Err(LabError::Setup("at least one machine must have a public address".into()));
    }
    if opts.forge && opts.example != LabExample::Hardway {
        return Err(LabError::Setup(
            "--forge needs --example hardway: GitOps needs a real API server, and real K3s cannot be built here (docs/lab.md)".into(),
        ));
    }
    inotify_allows(names.len() + usize::from(opts.forge))?;
    if opts.forge && seeder.is_some() {
        return Err(LabError::Setup(
            "--user-data and --forge cannot be combined (the forge is no cluster node)".into(),
        ));
    }
    if opts.forge {
        names.push(forge::NAME.into());
    }
    if opts.example.is_k3s() && !Path::new(images::BUSYBOX_STATIC).exists() {
        return Err(LabError::Setup(format!(
            "the K3s lab's image archives are built from {}, which is missing\n  help: apt-get install busybox-static",
            images::BUSYBOX_STATIC
        )));
    }
    let components = match opts.example {
        LabExample::Hardway => {
            let differing = host_sysctls::differing()?;
            if !opts.host_sysctls && !differing.is_empty() {
                let list: Vec<String> = differing.iter().map(|(n, now, need)| format!("{n} {now} -> {need}")).collect();
                return Err(LabError::Setup(format!(
                    "the hardway lab runs real kubelets, which require kernel-wide settings this workstation does not have: {}.\n  They are not per-namespace: lab machines share this kernel, so the lab would change the workstation's own.\n  help: add --host-sysctls to let the lab set them (printed, and restored by `kforge lab down`)",
                    list.join(", ")
                )));
            }
            Some(hardway_components()?)
        }
        LabExample::K3s | LabExample::K3sHa => None,
    };
    if opts.dir.join("lab.json").exists() {
        return Err(LabError::Setup(format!(
            "a lab is already up in {} (run `kforge lab down` first)",
            opts.dir.display()
        )));
    }
    let image = rootfs::ensure(opts.image, opts.mirror.as_deref(), log)?;
    fs::create_dir_all(&opts.dir).map_err(|e| LabError::io(&opts.dir, e))?;
    let dir = fs::canonicalize(&opts.dir).map_err(|e| LabError::io(&opts.dir, e))?;
    let id = kforge_core::hashing::sha256_hex(dir.display().to_string().as_bytes())[..4].to_string();
    let subnet = net::pick_subnet()?;
    net::assert_clear_of_cluster(subnet);
    let mut state = LabState {
        runtime: PathBuf::from(RUNTIME_ROOT).join(&id),
        dir: dir.clone(),
        subnet,
        workstation_ip: net::host(subnet, 1),
        wan_ns: format!("kfl{id}-wan"),
        host_veth: format!("kfl{id}"),
        machines: Vec::new(),
        host_sysctls: false,
        image: opts.image,
        mirror: None,
        id,
    };
    state.save()?;
    match prepare_and_build(&mut state, &image, &names, &behind_nat, opts, components.as_deref(), log) {
        Ok(()) => Ok(state),
        Err(e) => {
            // The machines' boot logs stay (the error may point at one).
            log(&format!(
                "lab up failed; removing what was created (the machines' logs stay in {})",
                state.dir.join("machines").display()
            ));
            down_state(&LabState::load(&state.dir)?, &|_| {});
            Err(e)
        }
    }
}

/// Each machine's systemd holds inotify instances (about 5 once booted, measured: 24
/// idle machines held 108), all counted against the workstation's one per-user limit:
/// past it, machines never finish booting. Checked before anything is created, against
/// what is in use already, with the fix; kforge does not change the setting.
fn inotify_allows(machines: usize) -> Result<(), LabError> {
    const SETTING: &str = "/proc/sys/fs/inotify/max_user_instances";
    let Some(limit) = fs::read_to_string(SETTING).ok().and_then(|s| s.trim().parse::<usize>().ok()) else {
        return Ok(());
    };
    match inotify_shortfall(limit, inotify_instances_in_use(), machines) {
        None => Ok(()),
        Some(why) => Err(LabError::Setup(why)),
    }
}

/// Why `machines` more machines would not boot under the inotify `limit` (None: they fit).
fn inotify_shortfall(limit: usize, in_use: usize, machines: usize) -> Option<String> {
    const PER_MACHINE: usize = 5;
    if in_use + PER_MACHINE * machines <= limit {
        return None;
    }
    Some(format!(
        "fs.inotify.max_user_instances is {limit}: {in_use} are in use and {machines} machines need about {} more (each machine's systemd holds several; past the limit machines never finish booting)\n  help: sysctl -w fs.inotify.max_user_instances=1024 (a workstation-wide setting; kforge does not change it for you), then run lab up again",
        PER_MACHINE * machines
    ))
}

/// inotify instances open on this workstation now (every process's descriptors).
fn inotify_instances_in_use() -> usize {
    let mut n = 0;
    for proc_dir in fs::read_dir("/proc").into_iter().flatten().flatten() {
        for fd in fs::read_dir(proc_dir.path().join("fd")).into_iter().flatten().flatten() {
            if fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:inotify") {
                n += 1;
            }
        }
    }
    n
}

/// Everything `up` creates after its state is saved (so a failure can be undone).
fn prepare_and_build(
    state: &mut LabState,
    image: &rootfs::Cached,
    names: &[String],
    behind_nat: &[String],
    opts: &UpOptions,
    components: Option<&Path>,
    log: &dyn Fn(&str),
) -> Result<(), LabError> {
    if let Some(components) = components {
        // ./bin is the components cache; ./images the lab's own image archives.
        let bin = state.dir.join("bin");
        if bin.is_symlink() || bin.is_file() {
            fs::remove_file(&bin).map_err(|e| LabError::io(&bin, e))?;
        } else if bin.is_dir() {
            fs::remove_dir_all(&bin).map_err(|e| LabError::io(&bin, e))?;
        }
        std::os::unix::fs::symlink(components, &bin).map_err(|e| LabError::io(&bin, e))?;
        let coredns = components.join("coredns");
        let out = state.dir.join("images");
        log("writing the lab's image archives (pause, CoreDNS, busybox) from static binaries");
        images::write_lab_images(Path::new(images::BUSYBOX_STATIC), Some(&coredns), &out)
            .map_err(|e| LabError::io(&out, e))?;
        if opts.forge {
            log("writing Flux's image archives (source-controller, kustomize-controller) from the components cache");
            images::write_flux_images(components, &out).map_err(|e| LabError::io(&out, e))?;
        }
        if opts.host_sysctls {
            state.host_sysctls = true;
            state.save()?;
            host_sysctls::acquire(&state.id, log)?;
        }
    } else {
        // The k3s example names ./bin/k3s: the directory is there for the binary.
        let bin = state.dir.join("bin");
        fs::create_dir_all(&bin).map_err(|e| LabError::io(&bin, e))?;
        if !bin.join("k3s").exists() {
            log(&format!("put a k3s binary at {} before `kforge apply`", bin.join("k3s").display()));
        }
        // K3s imports these from agent/images/: pause and a test workload, no registry.
        let out = state.dir.join("images");
        log("writing the lab's image archives (pause, busybox) from static binaries");
        images::write_lab_images(Path::new(images::BUSYBOX_STATIC), None, &out).map_err(|e| LabError::io(&out, e))?;
    }
    build(state, image, names, behind_nat, opts.example, opts.user_data, log)
}

fn build(
    state: &mut LabState,
    image: &rootfs::Cached,
    names: &[String],
    nat: &[String],
    example: LabExample,
    seeder: Option<&Seeder>,
    log: &dyn Fn(&str),
) -> Result<(), LabError> {
    let dir = state.dir.clone();
    let key = dir.join("id_ed25519");
    let _ = fs::remove_file(&key);
    let _ = fs::remove_file(dir.join("id_ed25519.pub"));
    sh::run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "kforge-lab", "-f", &key.display().to_string()])?;
    let authorized = fs::read_to_string(dir.join("id_ed25519.pub")).map_err(|e| LabError::io(&key, e))?;
    let prefix = state.subnet.prefix_len();
    net::create_wan(&state.wan_ns, &state.host_veth, state.workstation_ip, prefix)?;
    fs::create_dir_all(dir.join("machines")).map_err(|e| LabError::io(&dir, e))?;
    // The provider's package mirror, up before any machine boots (user-data installs
    // packages at boot).
    let mut m = mirror::MirrorState {
        ip: net::host(state.subnet, mirror::HOST),
        root: image.mirror.clone(),
        log: dir.join("mirror.log"),
        pid: None,
    };
    state.mirror = Some(m.clone());
    state.save()?;
    mirror::start(state, &mut m)?;
    log(&format!(
        "package mirror: http://{}{} ({} image, requests in {})",
        m.ip,
        mirror::PATH,
        state.image,
        m.log.display()
    ));
    state.mirror = Some(m);
    state.save()?;

    let mut known_hosts = String::new();
    let mut forge_host_key = None;
    let mut nat_count = 0u8;
    for (i, name) in names.iter().enumerate() {
        let ns = format!("kfl{}-{name}", state.id);
        let public = net::host(state.subnet, 11 + i as u32);
        let port = format!("m{i}");
        let machine = if nat.contains(name) {
            nat_count += 1;
            let router_ns = format!("kfl{}-r{nat_count}", state.id);
            let router_public = net::host(state.subnet, 100 + nat_count as u32);
            let private = net::private_net(nat_count);
            state.machines.push(MachineState {
                name: name.clone(),
                ns: ns.clone(),
                public_ip: None,
                ssh_ip: net::host(private, 2),
                router_ns: Some(router_ns.clone()),
                pid: None,
                cgroups: machine::cgroup_dirs(&format!("{}-{name}", state.id)),
                forge: false,
            });
            state.save()?;
            net::attach(&state.wan_ns, &router_ns, &format!("r{nat_count}"), router_public, prefix)?;
            net::behind_nat(&router_ns, &ns, private, router_public, &state.host_veth)?;
            state.machines.len() - 1
        } else {
            state.machines.push(MachineState::public(state, name, public));
            state.save()?;
            net::attach(&state.wan_ns, &ns, &port, public, prefix)?;
            state.machines.len() - 1
        };
        let mdir = state.runtime.join(name);
        // Its own address as nameserver: nothing answers DNS there, and no query leaves
        // the machine (CoreDNS forwards outside names to the node's resolver).
        let host_key =
            machine::prepare(&image.root, &mdir, name, &authorized, state.machines[machine].ssh_ip, mirror_ip(state))?;
        known_hosts.push_str(&format!("{} {host_key}\n", state.machines[machine].ssh_ip));
        if state.machines[machine].forge {
            forge_host_key =
                Some(forge::Forge { ip: state.machines[machine].ssh_ip, host_key: host_key.trim().to_string() });
        }
    }
    write_file(&dir.join("known_hosts"), &known_hosts, 0o644)?;
    write_file(&dir.join("ssh_config"), &ssh_config(state), 0o644)?;
    write_file(&dir.join("kforge.yaml"), &cluster_file(state, example, forge_host_key.as_ref()), 0o644)?;
    // Seeded machines boot with their node's user-data, as a cloud image would.
    if let Some(seeder) = seeder {
        log("rendering each node's user-data from the cluster file (kforge render)");
        let seeds = seeder(&dir.join("kforge.yaml")).map_err(LabError::Setup)?;
        for m in &state.machines {
            let seed = seeds.get(&m.name).ok_or_else(|| LabError::Setup(format!("no user-data for {}", m.name)))?;
            let mb: u64 = seed.bake.iter().filter_map(|(f, _, _)| fs::metadata(f).ok()).map(|m| m.len()).sum();
            log(&format!(
                "{}: seeding user-data ({} bytes) and baking {} artifacts ({} MB) into its disk",
                m.name,
                seed.user_data.len(),
                seed.bake.len(),
                mb / 1_000_000
            ));
            machine::seed(&state.runtime.join(&m.name), &m.name, seed)?;
        }
    }
    for i in 0..state.machines.len() {
        let (name, ns) = (state.machines[i].name.clone(), state.machines[i].ns.clone());
        let log_path = dir.join("machines").join(format!("{name}.log"));
        let pid = machine::boot(&state.runtime.join(&name), &name, &ns, &state.machines[i].cgroups, &log_path)?;
        state.machines[i].pid = Some(pid);
        state.save()?;
        log(&format!(
            "{name}: booting ({}){}",
            state.machines[i].public_ip.map_or("behind NAT".to_string(), |ip| ip.to_string()),
            if seeder.is_some() { " from its user-data" } else { "" }
        ));
    }
    wait_for_ssh(state, log)?;
    if forge_host_key.is_some() {
        forge::setup(state, log)?;
    }
    Ok(())
}

/// Wait until every machine answers SSH with its known host key and its systemd has
/// finished booting (sshd answers before boot jobs are done). A real host is handed
/// over booted; so is a lab machine.
fn wait_for_ssh(state: &LabState, log: &dyn Fn(&str)) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let config = state.dir.join("ssh_config").display().to_string();
    for m in &state.machines {
        loop {
            let addr = SocketAddr::from((m.ssh_ip, 22));
            let port_open = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
            let booted = "timeout 60 systemctl is-system-running --wait || true";
            if port_open && let Ok(state) = sh::run("ssh", &["-F", &config, "-o", "ConnectTimeout=5", &m.name, booted])
            {
                log(&format!("{}: ssh ready, system {}", m.name, state.trim()));
                break;
            }
            if Instant::now() > deadline {
                return Err(LabError::Setup(format!(
                    "{} did not answer SSH within 120 s; see {}/machines/{}.log",
                    m.name,
                    state.dir.display(),
                    m.name
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(())
}

fn ssh_config(state: &LabState) -> String {
    let mut s = String::from("# kforge lab: SSH to the lab machines with the lab key and strict host keys.\n");
    for m in &state.machines {
        s.push_str(&format!(
            "\nHost {name}\n  HostName {ip}\n  User root\n  IdentityFile {dir}/id_ed25519\n  IdentitiesOnly yes\n  UserKnownHostsFile {dir}/known_hosts\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
            name = m.name,
            ip = m.ssh_ip,
            dir = state.dir.display()
        ));
    }
    s
}

/// The lab example with this lab's machines as nodes: k3s with the first (k3s-ha: the
/// first three) as servers, or hardway with every machine a controller and a worker. The example is
/// parsed into the cluster file's types, its nodes replaced, and written back (with the
/// example's header comment): what `lab up` writes is always a valid cluster file.
fn cluster_file(state: &LabState, example: LabExample, forge: Option<&forge::Forge>) -> String {
    use kforge_core::spec::{IpAddress, Node, NodeSsh, Role, Roles};
    let text = match example {
        LabExample::K3s | LabExample::K3sHa => kforge_core::spec::examples::LAB,
        LabExample::Hardway => kforge_core::spec::examples::HARDWAY_LAB,
    };
    let nodes: Vec<&MachineState> = state.machines.iter().filter(|m| !m.forge).collect();
    let servers = example.servers(nodes.len());
    let mut cluster = kforge_core::spec::parse("lab example", text).expect("the lab examples are valid").cluster;
    cluster.spec.nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, m)| Node {
            name: m.name.clone(),
            role: match example {
                LabExample::Hardway => Roles::new(vec![Role::Controller, Role::Worker]),
                _ if i < servers => Roles::one(Role::Server),
                _ => Roles::one(Role::Agent),
            },
            // No public address: the machine is behind NAT.
            endpoint: m.public_ip.map(|ip| IpAddress(ip.into())),
            ssh: NodeSsh { host: Some(m.name.clone()), ..NodeSsh::default() },
            location: None,
            labels: Default::default(),
            taints: Vec::new(),
            mesh_ip: None,
            // The lab's machines share this workstation's kernel; apply learns it.
            arch: None,
        })
        .collect();
    if let Some(forge) = forge {
        forge::follow(&mut cluster, forge);
    }
    let header: String = text.lines().take_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    format!(
        "{header}# Written by `kforge lab up` for this lab's machines (nodes without an endpoint are behind NAT).\n{}",
        serde_saphyr::to_string(&cluster).expect("a cluster file serializes")
    )
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    kforge_files::write_atomic(path, text.as_bytes(), mode).map_err(|e| LabError::io(path, e))
}

/// Add a machine to a running lab: a bare host with a public address on the lab's
/// internet, the lab's SSH key, and its host key pinned in the lab's known_hosts — the
/// next node for `apply` to grow the cluster onto. The cluster file is not changed: the
/// operator adds the node to it.
pub fn add(dir: &Path, name: &str, log: &dyn Fn(&str)) -> Result<MachineState, LabError> {
    let mut state = LabState::load(dir)?;
    if state.machine(name).is_some() {
        return Err(LabError::Setup(format!("this lab already has a machine {name}")));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') || name.len() > 20 {
        return Err(LabError::Setup(format!(
            "`{name}`: a machine name is lowercase letters, digits and '-' (at most 20)"
        )));
    }
    let image = rootfs::ensure(state.image, None, log)?;
    let authorized = fs::read_to_string(state.dir.join("id_ed25519.pub")).map_err(|e| LabError::io(&state.dir, e))?;
    // The next free public address and port name after every machine the lab has had.
    let used: Vec<std::net::Ipv4Addr> = state.machines.iter().filter_map(|m| m.public_ip).collect();
    let i = (0u32..).find(|i| !used.contains(&net::host(state.subnet, 11 + i))).expect("a free address");
    if 11 + i >= 100 {
        return Err(LabError::Setup("the lab's internet has no public address left".into()));
    }
    let public = net::host(state.subnet, 11 + i);
    let machine = MachineState::public(&state, name, public);
    let ns = machine.ns.clone();
    state.machines.push(machine);
    state.save()?;
    net::attach(&state.wan_ns, &ns, &format!("m{i}"), public, state.subnet.prefix_len())?;
    let mdir = state.runtime.join(name);
    let host_key = machine::prepare(&image.root, &mdir, name, &authorized, public, mirror_ip(&state))?;
    let known_hosts = state.dir.join("known_hosts");
    let mut known = fs::read_to_string(&known_hosts).map_err(|e| LabError::io(&known_hosts, e))?;
    known.push_str(&format!("{public} {host_key}\n"));
    write_file(&known_hosts, &known, 0o644)?;
    write_file(&state.dir.join("ssh_config"), &ssh_config(&state), 0o644)?;
    let log_path = state.dir.join("machines").join(format!("{name}.log"));
    let pid = machine::boot(&mdir, name, &ns, &state.machines.last().expect("pushed").cgroups, &log_path)?;
    state.machines.last_mut().expect("pushed").pid = Some(pid);
    state.save()?;
    log(&format!("{name}: booting ({public})"));
    wait_for_ssh(&state, log)?;
    Ok(state.machines.last().expect("pushed").clone())
}

/// Reinstall a machine in place, as a provider's "rebuild" would: same name, address and
/// network, an empty disk and a new SSH host key. The lab's known_hosts keeps the old
/// key, so strict host keys refuse the machine until the operator accepts the new one;
/// the new key line is returned for that (to be checked, as on a real host).
pub fn reinstall(dir: &Path, name: &str, log: &dyn Fn(&str)) -> Result<String, LabError> {
    let mut state = LabState::load(dir)?;
    let Some(i) = state.machines.iter().position(|m| m.name == name) else {
        let names: Vec<&str> = state.machines.iter().map(|m| m.name.as_str()).collect();
        return Err(LabError::Setup(format!("no machine {name} in this lab (it has {})", names.join(", "))));
    };
    if let Some(pid) = state.machines[i].pid.take() {
        log(&format!("{name}: shutting down"));
        machine::stop(pid);
    }
    let mdir = state.runtime.join(name);
    machine::remove(&mdir);
    machine::remove_cgroups(&state.machines[i].cgroups);
    state.save()?;
    let image = rootfs::ensure(state.image, None, log)?;
    let authorized = fs::read_to_string(state.dir.join("id_ed25519.pub")).map_err(|e| LabError::io(&state.dir, e))?;
    let m = state.machines[i].clone();
    let host_key = machine::prepare(&image.root, &mdir, name, &authorized, m.ssh_ip, mirror_ip(&state))?;
    let log_path = state.dir.join("machines").join(format!("{name}.log"));
    let pid = machine::boot(&mdir, name, &m.ns, &m.cgroups, &log_path)?;
    state.machines[i].pid = Some(pid);
    state.save()?;
    log(&format!("{name}: reinstalled, booting with a new host key (known_hosts still has the old one)"));
    wait_for_port(m.ssh_ip, name, &state, log)?;
    Ok(format!("{} {}", m.ssh_ip, host_key.trim()))
}

/// Remove one machine, as a cancelled VPS goes: stopped, its disk, cgroups and network
/// namespaces deleted, its SSH config entry and known_hosts line dropped.
pub fn remove(dir: &Path, name: &str, log: &dyn Fn(&str)) -> Result<(), LabError> {
    let mut state = LabState::load(dir)?;
    let Some(i) = state.machines.iter().position(|m| m.name == name) else {
        let names: Vec<&str> = state.machines.iter().map(|m| m.name.as_str()).collect();
        return Err(LabError::Setup(format!("no machine {name} in this lab (it has {})", names.join(", "))));
    };
    let m = state.machines.remove(i);
    if let Some(pid) = m.pid {
        log(&format!("{name}: shutting down"));
        machine::stop(pid);
    }
    machine::remove(&state.runtime.join(name));
    machine::remove_cgroups(&m.cgroups);
    net::delete_ns(&m.ns);
    if let Some(r) = &m.router_ns {
        net::delete_ns(r);
    }
    state.save()?;
    let known_hosts = state.dir.join("known_hosts");
    let known = fs::read_to_string(&known_hosts).map_err(|e| LabError::io(&known_hosts, e))?;
    let ips = [Some(m.ssh_ip), m.public_ip].map(|ip| ip.map(|ip| format!("{ip} ")));
    let kept: String = known
        .lines()
        .filter(|l| !ips.iter().flatten().any(|ip| l.starts_with(ip.as_str())))
        .map(|l| format!("{l}\n"))
        .collect();
    write_file(&known_hosts, &kept, 0o644)?;
    write_file(&state.dir.join("ssh_config"), &ssh_config(&state), 0o644)?;
    let _ = fs::remove_file(state.dir.join("machines").join(format!("{name}.log")));
    log(&format!("{name}: removed"));
    Ok(())
}

/// Wait for a machine's SSH port (its host key is not checked: known_hosts may not
/// have it yet).
fn wait_for_port(ip: std::net::Ipv4Addr, name: &str, state: &LabState, log: &dyn Fn(&str)) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect_timeout(&SocketAddr::from((ip, 22)), Duration::from_millis(500)).is_err() {
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "{name} did not answer SSH within 120 s; see {}/machines/{name}.log",
                state.dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    log(&format!("{name}: ssh port open"));
    Ok(())
}

/// Restart one machine as a reboot would: systemd inside shuts down cleanly, then the
/// machine boots again on the same disk, network and cgroups. Nothing is re-applied:
/// what comes back is what the machine's own enabled units bring back.
pub fn restart(dir: &Path, name: &str, log: &dyn Fn(&str)) -> Result<(), LabError> {
    let mut state = LabState::load(dir)?;
    let Some(i) = state.machines.iter().position(|m| m.name == name) else {
        let names: Vec<&str> = state.machines.iter().map(|m| m.name.as_str()).collect();
        return Err(LabError::Setup(format!("no machine {name} in this lab (it has {})", names.join(", "))));
    };
    if let Some(pid) = state.machines[i].pid {
        log(&format!("{name}: shutting down"));
        machine::stop(pid);
    }
    let m = &state.machines[i];
    let log_path = state.dir.join("machines").join(format!("{name}.log"));
    let pid = machine::boot(&state.runtime.join(name), name, &m.ns, &m.cgroups, &log_path)?;
    state.machines[i].pid = Some(pid);
    state.save()?;
    log(&format!("{name}: booting"));
    wait_for_ssh(&state, log)
}

/// Tear the lab down: machines, mounts, namespaces, veths, routes, files.
pub fn down(dir: &Path, log: &dyn Fn(&str)) -> Result<(), LabError> {
    down_state(&LabState::load(dir)?, log);
    let _ = fs::remove_dir_all(dir.join("machines"));
    Ok(())
}

/// Tear down every lab on this machine (found through their runtime directories).
pub fn down_all(log: &dyn Fn(&str)) -> Result<usize, LabError> {
    let mut n = 0;
    for entry in fs::read_dir(RUNTIME_ROOT).into_iter().flatten().flatten() {
        let Ok(text) = fs::read_to_string(entry.path().join("lab.json")) else { continue };
        let Ok(state) = serde_json::from_str::<LabState>(&text) else { continue };
        log(&format!("lab {} ({})", state.id, state.dir.display()));
        down_state(&state, log);
        n += 1;
    }
    Ok(n)
}

pub(crate) const RUNTIME_ROOT: &str = "/var/lib/kforge-lab";

fn down_state(state: &LabState, log: &dyn Fn(&str)) {
    if let Some(m) = &state.mirror {
        mirror::stop(&mut m.clone());
    }
    for m in &state.machines {
        if let Some(pid) = m.pid {
            machine::stop(pid);
        }
        machine::remove(&state.runtime.join(&m.name));
        machine::remove_cgroups(&m.cgroups);
        net::delete_ns(&m.ns);
        if let Some(r) = &m.router_ns {
            net::delete_ns(r);
        }
        log(&format!("{}: removed", m.name));
    }
    net::delete_ns(&state.wan_ns);
    net::delete_link(&state.host_veth);
    if state.host_sysctls {
        host_sysctls::release(&state.id, log);
    }
    let _ = fs::remove_dir_all(&state.runtime);
    for f in ["lab.json", "ssh_config", "known_hosts", "id_ed25519", "id_ed25519.pub"] {
        let _ = fs::remove_file(state.dir.join(f));
    }
}

/// The address machines reach the lab's package mirror at (a lab from before the
/// mirror has none: its machines keep whatever sources their image had).
fn mirror_ip(state: &LabState) -> Option<Ipv4Addr> {
    state.mirror.as_ref().map(|m| m.ip)
}

/// Take the lab's package mirror down (`false`) or bring it back (`true`), as a
/// provider's mirror outage: machines meet "connection refused" on its address.
pub fn set_mirror(dir: &Path, up: bool) -> Result<mirror::MirrorState, LabError> {
    let mut state = LabState::load(dir)?;
    let mut m = state.mirror.clone().ok_or_else(|| LabError::Setup("this lab has no package mirror".into()))?;
    match (up, m.pid.is_some_and(mirror::is_running)) {
        (true, false) => mirror::start(&state, &mut m)?,
        (false, true) => mirror::stop(&mut m),
        (false, false) => m.pid = None,
        (true, true) => {}
    }
    state.mirror = Some(m.clone());
    state.save()?;
    Ok(m)
}

/// One line per machine: running, address, SSH reachable.
pub fn status(dir: &Path) -> Result<Vec<(MachineState, bool, bool)>, LabError> {
    let state = LabState::load(dir)?;
    Ok(state
        .machines
        .iter()
        .map(|m| {
            let running = m.pid.is_some_and(machine::is_running);
            let ssh = running
                && TcpStream::connect_timeout(&SocketAddr::from((m.ssh_ip, 22)), Duration::from_millis(500)).is_ok();
            (m.clone(), running, ssh)
        })
        .collect())
}

/// What a lab leaves on the machine (for tests that assert `down` removed it all).
pub fn leftovers(state: &LabState) -> Vec<String> {
    let mut v = Vec::new();
    for m in &state.machines {
        if net::ns_exists(&m.ns) {
            v.push(format!("namespace {}", m.ns));
        }
        if m.pid.is_some_and(machine::is_running) {
            v.push(format!("process of {}", m.name));
        }
        if machine::is_mounted(&state.runtime.join(&m.name).join("root")) {
            v.push(format!("overlay of {}", m.name));
        }
        for c in m.cgroups.iter().filter(|c| c.exists()) {
            v.push(format!("cgroup {}", c.display()));
        }
        if let Some(r) = m.router_ns.as_ref().filter(|r| net::ns_exists(r)) {
            v.push(format!("namespace {r}"));
        }
    }
    if net::ns_exists(&state.wan_ns) {
        v.push(format!("namespace {}", state.wan_ns));
    }
    if let Some(pid) = state.mirror.as_ref().and_then(|m| m.pid).filter(|p| mirror::is_running(*p)) {
        v.push(format!("mirror process {pid}"));
    }
    if Path::new("/sys/class/net").join(&state.host_veth).exists() {
        v.push(format!("interface {}", state.host_veth));
    }
    if state.runtime.exists() {
        v.push(format!("directory {}", state.runtime.display()));
    }
    if host_sysctls::held_by(&state.id) {
        v.push("host sysctls held".into());
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lab_past_the_inotify_limit_is_refused_with_the_fix() {
        // Measured here: 24 idle machines held 108 instances and booted at 128.
        assert_eq!(inotify_shortfall(128, 0, 24), None);
        let why = inotify_shortfall(128, 20, 24).unwrap();
        assert!(
            why.starts_with("fs.inotify.max_user_instances is 128: 20 are in use and 24 machines need about 120 more"),
            "{why}"
        );
        assert!(why.contains("sysctl -w fs.inotify.max_user_instances=1024"), "{why}");
    }

    use super::*;

    fn machine(name: &str, public: Option<[u8; 4]>) -> MachineState {
        MachineState {
            name: name.into(),
            ns: format!("ns-{name}"),
            public_ip: public.map(Ipv4Addr::from),
            ssh_ip: Ipv4Addr::new(10, 99, 0, 1),
            router_ns: None,
            pid: None,
            cgroups: Vec::new(),
            forge: false,
        }
    }

    fn lab_of(machines: Vec<MachineState>) -> LabState {
        LabState {
            id: "t".into(),
            dir: PathBuf::from("/tmp/lab"),
            runtime: PathBuf::from("/tmp/run"),
            subnet: "10.99.0.0/24".parse().unwrap(),
            workstation_ip: Ipv4Addr::new(10, 99, 0, 1),
            wan_ns: "wan".into(),
            host_veth: "veth".into(),
            machines,
            host_sysctls: false,
            image: Image::default(),
            mirror: None,
        }
    }

    #[test]
    fn the_lab_cluster_file_is_the_example_with_these_machines_as_nodes() {
        let state = lab_of(vec![machine("lab-1", Some([198, 18, 0, 11])), machine("lab-2", None)]);
        for (example, roles) in [
            (LabExample::K3s, ["server", "agent"]),
            (LabExample::K3sHa, ["server", "server"]),
            (LabExample::Hardway, ["controller", "controller"]),
        ] {
            let text = cluster_file(&state, example, None);
            assert!(text.starts_with("# kforge cluster file"), "the example's header comment is kept:\n{text}");
            let spec =
                kforge_core::spec::parse("lab/kforge.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}")).cluster;
            let nodes: Vec<_> = spec
                .spec
                .nodes
                .iter()
                .map(|n| (n.name.as_str(), n.role.to_string(), n.endpoint.map(|e| e.0.to_string())))
                .collect();
            assert_eq!(nodes[0].0, "lab-1");
            assert!(nodes[0].1.starts_with(roles[0]), "{nodes:?}");
            assert!(nodes[1].1.starts_with(roles[1]), "{nodes:?}");
            assert_eq!(nodes[0].2.as_deref(), Some("198.18.0.11"));
            assert_eq!(nodes[1].2, None, "lab-2 is behind NAT");
            assert!(spec.spec.nodes.iter().all(|n| n.ssh.host.as_deref() == Some(n.name.as_str())));
        }
    }

    #[test]
    fn with_a_forge_the_cluster_file_follows_its_repository_with_the_host_key_pinned() {
        let mut forge = machine("forge", Some([198, 18, 0, 13]));
        forge.forge = true;
        let state =
            lab_of(vec![machine("lab-1", Some([198, 18, 0, 11])), machine("lab-2", Some([198, 18, 0, 12])), forge]);
        let host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let f = forge::Forge { ip: Ipv4Addr::new(198, 18, 0, 13), host_key: host_key.into() };
        let text = cluster_file(&state, LabExample::Hardway, Some(&f));
        let spec = kforge_core::spec::parse("lab/kforge.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}")).cluster;
        let names: Vec<&str> = spec.spec.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lab-1", "lab-2"], "the forge is not a node");
        let g = spec.spec.gitops.expect("gitops follows the forge");
        assert_eq!(g.repository, "ssh://git@198.18.0.13/srv/git/fleet.git");
        assert_eq!(g.known_hosts, [format!("198.18.0.13 {host_key}")]);
        assert_eq!(g.controllers(), ["source-controller", "kustomize-controller"]);
        let images: Vec<&str> = spec.spec.images.iter().map(|i| i.name.as_str()).collect();
        assert!(images.contains(&"kforge.lab/fluxcd/source-controller:v1.9.3"), "{images:?}");
    }
}
