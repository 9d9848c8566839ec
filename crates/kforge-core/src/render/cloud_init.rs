//! cloud-init user-data: a `#cloud-config` that brings a fresh host to its plan.
//!
//! `write_files` carries every planned file (those handed over to K3s staged, for the
//! script to put in place where absent) (text as a literal block, anything else
//! base64) plus the bootstrap script; `runcmd` runs the script once. Packages are
//! the script's job too (it installs only what is missing, as over SSH), so a host
//! that has them boots without a package mirror. The user-data holds the node's
//! secrets: deliver it over a private channel (provider API), and keep rendered
//! copies 0600. Providers cap its size ([`UserDataSize`]); cloud-init reads it
//! gzip-compressed ([`gzip`]).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_saphyr::LitString;

use super::script::{PATH as SCRIPT_PATH, render_bootstrap};
use crate::plan::{NodePlan, Plan};

/// EC2's limit on raw user-data; larger needs gzip (which cloud-init accepts).
pub const EC2_USER_DATA_LIMIT: usize = 16 * 1024;

#[derive(Serialize)]
struct CloudConfig {
    write_files: Vec<WriteFile>,
    runcmd: Vec<Vec<String>>,
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    owner: String,
    permissions: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
    content: Content,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Content {
    Text(LitString),
    Base64(String),
}

fn write_file(path: &str, owner: &str, mode: u32, content: &[u8]) -> WriteFile {
    // A literal block cannot hold every text faithfully (a final line without a
    // newline, trailing spaces, carriage returns): those go base64.
    let literal_safe = std::str::from_utf8(content).ok().filter(|t| {
        t.ends_with('\n') && !t.contains('\r') && !t.lines().any(|l| l.ends_with(' ') || l.ends_with('\t'))
    });
    let (encoding, content) = match literal_safe {
        Some(text) => (None, Content::Text(LitString(text.to_string()))),
        None => (Some("b64"), Content::Base64(STANDARD.encode(content))),
    };
    WriteFile { path: path.into(), owner: owner.into(), permissions: format!("{mode:04o}"), encoding, content }
}

/// Render the node's user-data.
pub fn render_user_data(plan: &Plan, node: &NodePlan) -> String {
    let mut files: Vec<WriteFile> =
        node.files().map(|f| write_file(&f.placed_path(), &f.owner, f.mode, &f.content)).collect();
    files.push(write_file(SCRIPT_PATH, "root:root", 0o700, render_bootstrap(plan, node).as_bytes()));
    let cfg = CloudConfig { write_files: files, runcmd: vec![vec!["bash".into(), SCRIPT_PATH.into()]] };
    format!(
        "#cloud-config\n# kforge user-data for node {} of cluster {}. It contains the node's secrets:\n# deliver it privately and never commit it.\n{}",
        node.node,
        plan.cluster,
        serde_saphyr::to_string(&cfg).expect("cloud-config serializes")
    )
}

/// User-data gzip-compressed, as cloud-init reads it (and EC2 passes it on).
pub fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(text.as_bytes()).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// A node's user-data size, plain and gzip-compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDataSize {
    pub raw: usize,
    pub gzipped: usize,
}

impl UserDataSize {
    pub fn of(text: &str) -> UserDataSize {
        UserDataSize { raw: text.len(), gzipped: gzip(text).len() }
    }

    /// Why this user-data does not fit `limit` bytes as it will be delivered
    /// (`compressed`), with the way out; None when it fits.
    pub fn exceeds(&self, node: &str, limit: usize, compressed: bool) -> Option<String> {
        let kb = |n: usize| format!("{:.1} KiB", n as f64 / 1024.0);
        let size = if compressed { self.gzipped } else { self.raw };
        if size <= limit {
            return None;
        }
        let way_out = if !compressed && self.gzipped <= limit {
            format!("render with --gzip: compressed it is {}, which fits", kb(self.gzipped))
        } else {
            "the node's files do not fit even compressed (binaries never travel in user-data; its files and bootstrap script do): raise the limit if the provider allows more, or deliver the rendered tree another way (copy it, or kforge apply over SSH)".to_string()
        };
        Some(format!(
            "{node}: user-data is {}{} but the limit is {}\n  help: {way_out}",
            kb(size),
            if compressed { " gzipped" } else { "" },
            kb(limit)
        ))
    }
}
