//! A tiny harness: a temp directory holding a cluster, and `kforge` run inside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kforge_core::secrets::SecretsBundle;

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    #[track_caller]
    pub fn success(self) -> Output {
        assert_eq!(self.code, 0, "kforge failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

pub struct TestContext {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl TestContext {
    pub fn new() -> TestContext {
        TestContext { dir: tempfile::tempdir().expect("temp dir"), env: Vec::new() }
    }

    /// `kforge init --example NAME .` in a fresh directory.
    pub fn with_example(name: &str) -> TestContext {
        let ctx = TestContext::new();
        ctx.kforge(&["init", "--example", name, "."]).success();
        ctx
    }

    pub fn env(mut self, key: &str, value: &str) -> TestContext {
        self.set_env(key, value);
        self
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn kforge(&self, args: &[&str]) -> Output {
        self.kforge_from(Path::new(env!("CARGO_BIN_EXE_kforge")), args, &[])
    }

    /// `kforge` from another build of it (the fault matrix's, with failpoints), with
    /// extra environment.
    pub fn kforge_from(&self, binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(binary);
        cmd.args(args).current_dir(self.dir.path()).envs(env.iter().copied());
        for var in ["KFORGE_AGE_IDENTITY", "KFORGE_AGE_PASSPHRASE"] {
            cmd.env_remove(var);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run kforge");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }

    /// Edit kforge.yaml with a plain text replacement (must match).
    pub fn edit_spec(&self, from: &str, to: &str) {
        self.edit("kforge.yaml", from, to);
    }

    /// Edit a file with a plain text replacement (must match).
    pub fn edit(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        assert!(text.contains(from), "{rel} has no {from:?}");
        self.write(rel, &text.replacen(from, to, 1));
    }

    /// `secrets update` (what the file needs, recorded), then `render --out NAME`,
    /// returning the output directory.
    pub fn render(&self, out: &str) -> PathBuf {
        self.kforge(&["secrets", "update"]).success();
        self.kforge(&["render", "--out", out]).success();
        self.path(out)
    }

    /// The plain secrets bundle, parsed.
    pub fn bundle(&self) -> SecretsBundle {
        serde_saphyr::from_str(&self.read("kforge.secrets.yaml")).expect("bundle parses")
    }
}

/// Every regular file under `root` → (mode, bytes), keyed by relative path.
pub fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, (meta.permissions().mode() & 0o7777, std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Run a real tool; panic with its output if it fails.
#[track_caller]
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program} not runnable: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a real tool with stdin.
#[track_caller]
pub fn run_with_input(program: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} not runnable: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` (recursively) whose name ends in `.ext`.
pub fn files_with_extension(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_with_extension(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}
