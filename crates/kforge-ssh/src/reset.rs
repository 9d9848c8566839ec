//! `kforge reset`: hosts as kforge found them. What kforge wrote comes from each host's
//! manifest; what the programs it ran left behind (containers, mounts, CNI links and
//! namespaces, kube-proxy's rules, the mesh interface, the firewall table) is found on
//! the host. The actions live in `sh/reset.sh`, one function with a preview mode, so
//! the preview and the reset can never disagree about what is done.

use serde::Serialize;

use crate::Target;
use crate::ssh::{ControlDir, Host};

const RESET_SH: &str = include_str!("sh/reset.sh");

/// One host's reset (or its preview).
#[derive(Debug, Clone, Serialize)]
pub struct HostReset {
    pub node: String,
    /// `would …` (preview) or `did …` lines, in order.
    pub actions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reset each target (`preview`: only say what would be done), all at once.
/// Only files a record of `cluster` lists are removed: a record of another cluster (a
/// re-purposed machine) may list its owner's files.
pub fn reset(
    targets: &[Target],
    ssh_config: Option<std::path::PathBuf>,
    mesh_interface: &str,
    cluster: &str,
    preview: bool,
) -> Result<Vec<HostReset>, String> {
    let control = ControlDir::create()?;
    let script = format!(
        "{RESET_SH}\nkf_reset {} {} {}\n",
        crate::ssh::shell_quote(mesh_interface),
        if preview { "preview" } else { "do" },
        crate::ssh::shell_quote(cluster)
    );
    let hosts: Vec<Host> = targets.iter().map(|t| Host::of(t, ssh_config.clone(), control.path())).collect();
    let out = std::thread::scope(|s| {
        let runs: Vec<_> = hosts
            .iter()
            .map(|h| {
                let script = &script;
                s.spawn(move || match h.run_script("reset", script) {
                    Ok(out) => HostReset {
                        node: h.node.clone(),
                        actions: out.lines().map(String::from).collect(),
                        error: None,
                    },
                    Err(e) => HostReset { node: h.node.clone(), actions: Vec::new(), error: Some(e.to_string()) },
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().expect("reset thread")).collect()
    });
    crate::ssh::close_all(hosts.iter());
    Ok(out)
}
