//! `render --out DIR`: the plan as a directory tree.
//!
//! ```text
//! DIR/.kforge-render                 marks the tree as kforge's (safe to replace)
//! DIR/NODE/<absolute path>           every planned file, with its mode
//! DIR/NODE/var/lib/kforge/bootstrap.sh
//! DIR/NODE/user-data                 the same state as #cloud-config
//! DIR/NODE/user-data.gz              instead, with --gzip (cloud-init reads gzip)
//! DIR/_peers/PEER/<iface>.conf       access peers' mesh configs
//! ```
//!
//! The tree is built beside DIR and swapped in, so DIR is always a whole render,
//! and a stale file from a removed node never lingers. A non-empty DIR without
//! the marker is refused: kforge does not delete what it did not write.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kforge_core::plan::Plan;
use kforge_core::render::cloud_init::{gzip, render_user_data};
use kforge_core::render::script::{PATH as SCRIPT_PATH, render_bootstrap};

pub const MARKER: &str = ".kforge-render";
pub const PEERS_DIR: &str = "_peers";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "{0} exists and was not written by kforge\n  help: pick an empty or new directory; kforge only replaces its own renders"
    )]
    NotOurs(String),
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// How the tree is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeOptions {
    /// Each node's user-data gzip-compressed (`user-data.gz`), for providers whose
    /// size limit the plain text exceeds.
    pub gzip: bool,
}

/// Write the whole plan under `out`, replacing a previous render there.
pub fn render_tree(plan: &Plan, out: &Path, opts: TreeOptions) -> Result<(), RenderError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| RenderError::Io { path, source }
    };
    if out.exists() && fs::read_dir(out).map_err(io_err(out))?.next().is_some() && !out.join(MARKER).exists() {
        return Err(RenderError::NotOurs(out.display().to_string()));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "render".into());
    let staging = parent.join(format!(".{name}.kforge-staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    let result =
        write_all(plan, &staging, opts).map_err(|(p, e)| RenderError::Io { path: p.display().to_string(), source: e });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Swap: old tree aside, new tree in, old tree gone.
    let old = parent.join(format!(".{name}.kforge-old-{}", std::process::id()));
    if out.exists() {
        fs::rename(out, &old).map_err(io_err(out))?;
    }
    fs::rename(&staging, out).map_err(io_err(out))?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

fn write_all(plan: &Plan, root: &Path, opts: TreeOptions) -> Result<(), (PathBuf, io::Error)> {
    mkdir(root, 0o700)?;
    write(&root.join(MARKER), format!("cluster: {}\n", plan.cluster).as_bytes(), 0o644)?;
    for node in &plan.nodes {
        let node_root = root.join(&node.node);
        mkdir(&node_root, 0o700)?;
        for f in node.files() {
            write(&node_root.join(f.placed_path().trim_start_matches('/')), &f.content, f.mode)?;
        }
        let script = render_bootstrap(plan, node);
        write(&node_root.join(SCRIPT_PATH.trim_start_matches('/')), script.as_bytes(), 0o700)?;
        let user_data = render_user_data(plan, node);
        if opts.gzip {
            write(&node_root.join("user-data.gz"), &gzip(&user_data), 0o600)?;
        } else {
            write(&node_root.join("user-data"), user_data.as_bytes(), 0o600)?;
        }
    }
    for peer in &plan.peers {
        write(&root.join(PEERS_DIR).join(&peer.peer).join(&peer.config.path), &peer.config.content, peer.config.mode)?;
    }
    Ok(())
}

fn mkdir(path: &Path, mode: u32) -> Result<(), (PathBuf, io::Error)> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(|e| (path.to_path_buf(), e))
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), (PathBuf, io::Error)> {
    let fail = |e| (path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        mkdir(dir, 0o755)?;
    }
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path).map_err(fail)?;
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(fail)?;
    f.write_all(data).map_err(fail)
}
