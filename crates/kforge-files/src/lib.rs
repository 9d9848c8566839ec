//! The workstation side of kforge's pipeline: everything that touches the local disk
//! or the environment, so that kforge-core stays pure (no file, no env var, no clock
//! it was not handed).
//!
//! * [`load_cluster_file`]: the cluster file from disk, then `kforge_core::spec::parse`.
//! * [`secrets_store`]: where the secrets bundle lives, plain or age-encrypted, and
//!   the rules that keep it from being lost (symlinks followed, never a new PKI while a
//!   path exists, never a read from a FIFO).
//! * [`tree`]: `render --out DIR`, the plan as a directory tree swapped in whole.
//! * [`atomic`]: temp file, fsync, rename, fsync the directory.
//! * [`lock`]: one operator at a time per cluster file (the commands that write the bundle).

pub mod atomic;
pub mod lock;
pub mod secrets_store;
pub mod tree;

use std::path::Path;

use kforge_core::spec::{Diagnostic, LoadedSpec, SpecError, parse};

pub use atomic::write_atomic;
pub use secrets_store::{AgeCredentials, SecretsError, SecretsStore, StoreFormat};

/// Read and validate a cluster file from disk.
pub fn load_cluster_file(path: &Path) -> Result<LoadedSpec, SpecError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: file.clone(),
        source_text: String::new(),
        diagnostics: vec![
            Diagnostic::error("", format!("cannot read the cluster file: {e}"))
                .help("run `kforge init` to write one, or point at it with `-f FILE`"),
        ],
    })?;
    parse(&file, &text)
}
