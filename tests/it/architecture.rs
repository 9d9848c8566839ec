//! The architecture's promises, checked on the source so they stay true
//! (docs/architecture.md draws the pipeline these keep honest).

use std::path::Path;

use crate::util::files_with_extension;

/// kforge-core is the pure pipeline: same input, same plan. Reading a file, the
/// environment or the clock, or running a program, belongs in kforge-files, the
/// executors or the binary. Comments may mention these names, and unit tests (after
/// `#[cfg(test)]`) may read the clock; the code may not.
#[test]
fn kforge_core_does_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/kforge-core/src");
    let mut files = Vec::new();
    files_with_extension(&root, "rs", &mut files);
    assert!(files.len() > 20, "found the core's sources");
    let forbidden = [
        "std::fs",
        "std::env",
        "std::process",
        "std::net::Tcp",
        "std::net::Udp",
        "File::open",
        "File::create",
        "SystemTime::now",
        "now_utc()",
        "include_bytes!(\"/",
    ];
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate().take_while(|(_, l)| !l.starts_with("#[cfg(test)]")) {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                if code.contains(word) {
                    found.push(format!("{}:{}: {word}", f.strip_prefix(&root).unwrap().display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "kforge-core must not do I/O:\n{}", found.join("\n"));
}
