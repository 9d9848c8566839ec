//! cloud-init user-data: a `#cloud-config` that brings a fresh host to its plan.
//!
//! `write_files` carries every planned file (those handed over to K3s staged, for the
//! script to put in place where absent) (text as a literal block, anything else
//! base64) plus the bootstrap script; `runcmd` runs the script once. The user-data
//! holds the node's secrets: deliver it over a private channel (provider API), and
//! keep rendered copies 0600.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_saphyr::LitString;

use super::script::{PATH as SCRIPT_PATH, render_bootstrap};
use crate::plan::NodePlan;

/// EC2's limit on raw user-data; larger needs gzip (which cloud-init accepts).
pub const EC2_USER_DATA_LIMIT: usize = 16 * 1024;

#[derive(Serialize)]
struct CloudConfig {
    package_update: bool,
    packages: Vec<String>,
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
pub fn render_user_data(cluster: &str, node: &NodePlan) -> String {
    let mut files: Vec<WriteFile> =
        node.files().map(|f| write_file(&f.placed_path(), &f.owner, f.mode, &f.content)).collect();
    files.push(write_file(SCRIPT_PATH, "root:root", 0o700, render_bootstrap(cluster, node).as_bytes()));
    let cfg = CloudConfig {
        package_update: true,
        packages: node.packages.clone(),
        write_files: files,
        runcmd: vec![vec!["bash".into(), SCRIPT_PATH.into()]],
    };
    format!(
        "#cloud-config\n# kforge user-data for node {} of cluster {}. It contains the node's secrets:\n# deliver it privately and never commit it.\n{}",
        node.node,
        cluster,
        serde_saphyr::to_string(&cfg).expect("cloud-config serializes")
    )
}
