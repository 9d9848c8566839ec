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
    /// Digests of local files by path and stat, as the hosts' facts keep theirs: hashing
    /// ~760 MB of binaries at every apply was most of a no-op apply's time here.
    digests: Option<Digests>,
}

/// The digest cache as loaded: its file, `path → (stat, sha256)`, and whether it changed.
struct Digests {
    file: PathBuf,
    known: HashMap<String, (String, String)>,
    changed: bool,
}

/// `path → (size:mtime:inode, sha256)`, one line each, in the artifact cache directory.
const DIGESTS: &str = "local-digests";

impl ArtifactStore {
    /// The sha256 of a local file, from the digest cache when its size, modification
    /// time and inode are unchanged (git's index does the same), else read and hashed.
    fn digest(&mut self, file: &Path, cache: &Path) -> std::io::Result<String> {
        use std::os::unix::fs::MetadataExt;
        let Digests { known, changed, .. } = self.digests.get_or_insert_with(|| {
            let path = cache.join(DIGESTS);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let known = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.splitn(3, ' ');
                    let (stat, sum, p) = (w.next()?, w.next()?, w.next()?);
                    Some((p.to_string(), (stat.to_string(), sum.to_string())))
                })
                .collect();
            Digests { file: path, known, changed: false }
        });
        let m = std::fs::metadata(file)?;
        let stat = format!("{}:{}.{}:{}", m.size(), m.mtime(), m.mtime_nsec(), m.ino());
        let key = file.canonicalize()?.display().to_string();
        if let Some((s, sum)) = known.get(&key)
            && *s == stat
        {
            return Ok(sum.clone());
        }
        let sum = sha256_hex(&std::fs::read(file)?);
        known.insert(key, (stat, sum.clone()));
        *changed = true;
        Ok(sum)
    }

    /// Keep the digests learnt in this apply for the next one (best effort: a cache).
    pub fn save(&self) {
        let Some(Digests { file: path, known, changed: true }) = &self.digests else { return };
        let mut lines: Vec<String> = known.iter().map(|(p, (stat, sum))| format!("{stat} {sum} {p}")).collect();
        lines.sort();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, lines.join("\n") + "\n").is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }

    pub fn resolve(&mut self, a: &PlannedArtifact, base: &Path, cache: &Path) -> Result<LocalArtifact, String> {
        let key = format!("{:?}", a.source);
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r.clone());
        }
        let r = match &a.source {
            ArtifactSource::Path { path } => {
                let file = base.join(path);
                let sum = self.digest(&file, cache).map_err(|e| {
                    format!(
                        "artifact {} at {}: {e}\n  help: put the binary there, or set artifacts.{}.url + sha256",
                        a.name,
                        file.display(),
                        a.name
                    )
                })?;
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
