//! Where the bundle lives: `kforge.secrets.yaml` (plain, 0600) or
//! `kforge.secrets.age` (age-encrypted to a passphrase or an X25519 recipient),
//! beside the cluster file.
//!
//! The bundle is the cluster's identity, so this module is defensive about it:
//! - Writes are atomic, in the directory of the file they replace. A symlinked bundle
//!   is followed: the link stays a link and its target gets the new content.
//! - A path that exists in any form (a dangling link, a FIFO, a directory, a file
//!   kforge cannot read) is an error, never a reason to create a new PKI.
//! - Nothing is read from a FIFO or a device: the file is opened non-blocking and
//!   checked to be a regular file before a byte is read.
//! - A plain bundle that group or others can read is refused.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use kforge_core::secrets::{BUNDLE_KIND, SecretsBundle};

use crate::atomic::write_atomic;

pub const PLAIN_NAME: &str = "kforge.secrets.yaml";
pub const AGE_NAME: &str = "kforge.secrets.age";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "{path} is readable by group or others (mode {mode:04o})\n  help: run `chmod 600 {path}`; kforge refuses to use a secrets bundle others can read"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(
        "{path} is not a valid secrets bundle: {reason}\n  help: restore it from your backup; kforge never regenerates an existing bundle"
    )]
    Corrupt { path: String, reason: String },
    #[error(
        "{path} belongs to cluster `{found}`, but the cluster file is `{expected}`\n  help: use the bundle made for this cluster, or rename metadata.name back"
    )]
    WrongCluster { path: String, found: String, expected: String },
    #[error(
        "{path} is age-encrypted and no key to open it was given\n  help: set KFORGE_AGE_IDENTITY=FILE (an age identity) or KFORGE_AGE_PASSPHRASE, or pass --age-identity FILE"
    )]
    NoCredentials { path: String },
    #[error("cannot decrypt {path}: {reason}\n  help: check the age identity or passphrase")]
    Decrypt { path: String, reason: String },
    #[error(
        "both {plain} and {age} exist\n  help: keep one: delete the plain file once the encrypted one is confirmed"
    )]
    Ambiguous { plain: String, age: String },
    #[error("cannot load age identity {path}: {reason}")]
    Identity { path: String, reason: String },
    #[error(
        "{path} is a symbolic link to {target}, which does not exist\n  help: restore the bundle at {target} (or fix the link); kforge does not create a new PKI while {path} exists"
    )]
    DanglingLink { path: String, target: String },
    #[error(
        "{path} is {kind}, not a regular file\n  help: point kforge at the bundle file itself; kforge reads secrets only from regular files"
    )]
    NotRegular { path: String, kind: &'static str },
}

/// How to open and seal an age-encrypted bundle.
#[derive(Default)]
pub struct AgeCredentials {
    pub identity_file: Option<PathBuf>,
    pub passphrase: Option<SecretString>,
}

impl AgeCredentials {
    /// From `KFORGE_AGE_IDENTITY` / `KFORGE_AGE_PASSPHRASE`, with an explicit
    /// identity file taking precedence.
    pub fn from_env(identity_flag: Option<PathBuf>) -> AgeCredentials {
        AgeCredentials {
            identity_file: identity_flag.or_else(|| std::env::var_os("KFORGE_AGE_IDENTITY").map(PathBuf::from)),
            passphrase: std::env::var("KFORGE_AGE_PASSPHRASE").ok().filter(|p| !p.is_empty()).map(SecretString::from),
        }
    }

    pub fn is_set(&self) -> bool {
        self.identity_file.is_some() || self.passphrase.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFormat {
    Plain,
    Age,
}

pub struct SecretsStore {
    /// The path the operator knows (beside the cluster file); shown in messages.
    pub path: PathBuf,
    /// Where the bytes live: `path`, or the file a symlink at `path` points to.
    target: PathBuf,
    pub format: StoreFormat,
    credentials: AgeCredentials,
}

impl SecretsStore {
    /// The bundle beside `cluster_file`: an existing one wins; a new one is encrypted
    /// when age credentials are configured, plain otherwise.
    pub fn beside(cluster_file: &Path, credentials: AgeCredentials) -> Result<SecretsStore, SecretsError> {
        let dir = cluster_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let plain = dir.join(PLAIN_NAME);
        let age = dir.join(AGE_NAME);
        let format = match (present(&plain), present(&age)) {
            (true, true) => {
                return Err(SecretsError::Ambiguous { plain: show(&plain), age: show(&age) });
            }
            (true, false) => StoreFormat::Plain,
            (false, true) => StoreFormat::Age,
            (false, false) if credentials.is_set() => StoreFormat::Age,
            (false, false) => StoreFormat::Plain,
        };
        let path = if format == StoreFormat::Plain { plain } else { age };
        let target = resolve(&path)?;
        Ok(SecretsStore { path, target, format, credentials })
    }

    /// A bundle is there (checked to be a regular file, or a link to one, by `beside`).
    pub fn exists(&self) -> bool {
        present(&self.path)
    }

    /// Load the bundle if there is one; check it belongs to `cluster`.
    pub fn load(&self, cluster: &str) -> Result<Option<SecretsBundle>, SecretsError> {
        if !self.exists() {
            return Ok(None);
        }
        let path = show(&self.path);
        let read_err = |source| SecretsError::Read { path: path.clone(), source };
        let (raw, mode) = read_regular(&self.target).map_err(|e| match e {
            ReadFailure::Io(source) => read_err(source),
            ReadFailure::NotRegular(kind) => SecretsError::NotRegular { path: path.clone(), kind },
        })?;
        let bytes = match self.format {
            StoreFormat::Plain => {
                if mode & 0o077 != 0 {
                    return Err(SecretsError::TooOpen { path: show(&self.target), mode });
                }
                raw
            }
            StoreFormat::Age => self.decrypt(&raw)?,
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| SecretsError::Corrupt { path: path.clone(), reason: "not UTF-8 text".into() })?;
        // The bundle's own parse errors could quote a secret line: report the position only.
        let bundle: SecretsBundle = serde_saphyr::from_str(&text).map_err(|e| SecretsError::Corrupt {
            path: path.clone(),
            reason: match e.location() {
                Some(l) => format!("unexpected content at line {}, column {}", l.line(), l.column()),
                None => "unexpected content".into(),
            },
        })?;
        if bundle.kind != BUNDLE_KIND {
            return Err(SecretsError::Corrupt {
                path,
                reason: format!("kind is `{}`, expected `{BUNDLE_KIND}`", bundle.kind),
            });
        }
        if bundle.cluster != cluster {
            return Err(SecretsError::WrongCluster { path, found: bundle.cluster, expected: cluster.into() });
        }
        Ok(Some(bundle))
    }

    /// Write the bundle atomically, 0600, encrypted when the store is age.
    pub fn save(&self, bundle: &SecretsBundle) -> Result<(), SecretsError> {
        let path = show(&self.path);
        let text = serde_saphyr::to_string(bundle)
            .map_err(|e| SecretsError::Write { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
        let header =
            "# kforge secrets bundle: CAs, keys, tokens. Keep it private (mode 0600); never commit it unencrypted.\n";
        let plain = format!("{header}{text}");
        let bytes = match self.format {
            StoreFormat::Plain => plain.into_bytes(),
            StoreFormat::Age => self.encrypt(plain.as_bytes())?,
        };
        // The target, not the link: a symlinked bundle stays one bundle.
        write_atomic(&self.target, &bytes, 0o600).map_err(|source| SecretsError::Write { path, source })
    }

    fn identities(&self) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, SecretsError> {
        let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        if let Some(file) = &self.credentials.identity_file {
            let err = |reason: String| SecretsError::Identity { path: show(file), reason };
            let parsed = age::IdentityFile::from_file(file.display().to_string()).map_err(|e| err(e.to_string()))?;
            ids.extend(parsed.into_identities().map_err(|e| err(e.to_string()))?);
        }
        if let Some(p) = &self.credentials.passphrase {
            ids.push(Box::new(age::scrypt::Identity::new(p.clone())));
        }
        Ok(ids)
    }

    fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let path = show(&self.path);
        if !self.credentials.is_set() {
            return Err(SecretsError::NoCredentials { path });
        }
        let ids = self.identities()?;
        let fail = |reason: String| SecretsError::Decrypt { path: path.clone(), reason };
        let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))
            .map_err(|e| fail(e.to_string()))?;
        let mut reader =
            decryptor.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| fail(e.to_string()))?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).map_err(|e| fail(e.to_string()))?;
        Ok(out)
    }

    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let path = show(&self.path);
        let fail = |reason: String| SecretsError::Write { path: path.clone(), source: std::io::Error::other(reason) };
        // Seal to the identity's own recipient when there is one, else to the passphrase.
        let encryptor = if let Some(file) = &self.credentials.identity_file {
            let err = |reason: String| SecretsError::Identity { path: show(file), reason };
            let parsed = age::IdentityFile::from_file(file.display().to_string()).map_err(|e| err(e.to_string()))?;
            let recipients = parsed.to_recipients().map_err(|e| err(e.to_string()))?;
            if recipients.is_empty() {
                return Err(err("contains no identity".into()));
            }
            age::Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient))
                .map_err(|e| fail(e.to_string()))?
        } else if let Some(p) = &self.credentials.passphrase {
            age::Encryptor::with_user_passphrase(p.clone())
        } else {
            return Err(SecretsError::NoCredentials { path });
        };
        let mut out = Vec::new();
        let armored = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
            .map_err(|e| fail(e.to_string()))?;
        let mut writer = encryptor.wrap_output(armored).map_err(|e| fail(e.to_string()))?;
        writer.write_all(plaintext).map_err(|e| fail(e.to_string()))?;
        writer.finish().and_then(|a| a.finish()).map_err(|e| fail(e.to_string()))?;
        Ok(out)
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The path exists in any form: a file, a directory, a FIFO, or a link (even dangling).
fn present(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Where a bundle's bytes are: `path` itself, or what a symlink there points to.
/// A dangling link or a non-regular file is refused here, before anything is read.
fn resolve(path: &Path) -> Result<PathBuf, SecretsError> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(path.to_path_buf());
    };
    let target = if meta.file_type().is_symlink() {
        match fs::canonicalize(path) {
            Ok(t) => t,
            Err(_) => {
                let link = fs::read_link(path).map(|t| show(&t)).unwrap_or_else(|_| "?".into());
                return Err(SecretsError::DanglingLink { path: show(path), target: link });
            }
        }
    } else {
        path.to_path_buf()
    };
    let meta = fs::metadata(&target).map_err(|source| SecretsError::Read { path: show(path), source })?;
    match file_kind(&meta.file_type()) {
        None => Ok(target),
        Some(kind) => Err(SecretsError::NotRegular { path: show(path), kind }),
    }
}

/// What a non-regular file is, in words; `None` for a regular file.
fn file_kind(t: &fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

enum ReadFailure {
    Io(io::Error),
    NotRegular(&'static str),
}

/// Read a regular file and its permission bits. Opened non-blocking and checked with
/// fstat before reading, so a FIFO swapped in after `resolve` cannot hang kforge.
fn read_regular(target: &Path) -> Result<(Vec<u8>, u32), ReadFailure> {
    let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(target).map_err(ReadFailure::Io)?;
    let meta = f.metadata().map_err(ReadFailure::Io)?;
    if let Some(kind) = file_kind(&meta.file_type()) {
        return Err(ReadFailure::NotRegular(kind));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes).map_err(ReadFailure::Io)?;
    Ok((bytes, meta.permissions().mode() & 0o777))
}
