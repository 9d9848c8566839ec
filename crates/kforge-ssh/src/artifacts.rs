//! Artifacts on the workstation: a local path (hashed) or a URL fetched once into a
//! cache keyed by sha256 and verified. Hosts get a copy only when theirs differs —
//! the air-gap path is the normal path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kforge_core::hashing::sha256_hex;
use kforge_core::plan::{ArtifactSource, PlannedArtifact};

/// A resolved artifact: the local file to upload and its digest.
#[derive(Debug, Clone)]
pub struct LocalArtifact {
    pub file: PathBuf,
    pub sha256: String,
}

#[derive(Default)]
pub struct ArtifactStore {
    resolved: HashMap<String, LocalArtifact>,
}

impl ArtifactStore {
    pub fn resolve(&mut self, a: &PlannedArtifact, base: &Path, cache: &Path) -> Result<LocalArtifact, String> {
        let key = format!("{:?}", a.source);
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r.clone());
        }
        let r = match &a.source {
            ArtifactSource::Path { path } => {
                let file = base.join(path);
                let bytes = std::fs::read(&file).map_err(|e| {
                    format!(
                        "artifact {} at {}: {e}\n  help: put the binary there, or set artifacts.{}.url + sha256",
                        a.name,
                        file.display(),
                        a.name
                    )
                })?;
                let sum = sha256_hex(&bytes);
                if let Some(want) = &a.sha256
                    && want != &sum
                {
                    return Err(format!(
                        "artifact {} at {} has sha256 {sum}, the file pins {want}",
                        a.name,
                        file.display()
                    ));
                }
                LocalArtifact { file, sha256: sum }
            }
            ArtifactSource::Url { url } => {
                let want = a.sha256.clone().ok_or("a URL artifact is always pinned (validated)")?;
                let cached = cache.join(&want);
                if !cached.exists() {
                    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
                    let tmp = cache.join(format!(".{want}.download"));
                    let status = std::process::Command::new("curl")
                        .args(["-fsSL", "--retry", "3", "-o"])
                        .arg(&tmp)
                        .arg(url)
                        .status()
                        .map_err(|e| format!("cannot run curl: {e}"))?;
                    if !status.success() {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(format!("cannot download {} from {url}", a.name));
                    }
                    let sum = sha256_hex(&std::fs::read(&tmp).map_err(|e| e.to_string())?);
                    if sum != want {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(format!("{} from {url} has sha256 {sum}, expected {want}; not used", a.name));
                    }
                    std::fs::rename(&tmp, &cached).map_err(|e| e.to_string())?;
                }
                LocalArtifact { file: cached, sha256: want }
            }
        };
        self.resolved.insert(key, r.clone());
        Ok(r)
    }
}

/// `boringtun-cli` on this workstation's PATH or in cargo's bin directory.
pub fn find_boringtun() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("boringtun-cli")).find(|p| p.is_file())
}
