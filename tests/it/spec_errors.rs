//! The corpus of broken cluster files: each one's exact diagnostic is a snapshot.
//!
//! Every file under `broken/` must fail `kforge check` with exit code 2, point at
//! file:line:column, say how to fix it, and leave no secrets bundle behind.

use crate::util::TestContext;

#[test]
fn every_broken_file_fails_with_its_exact_error() {
    let mut seen = 0;
    insta::glob!("broken/*.yaml", |path| {
        seen += 1;
        let ctx = TestContext::new();
        std::fs::copy(path, ctx.path("kforge.yaml")).unwrap();
        let out = ctx.kforge(&["plan"]);
        assert_eq!(out.code, 2, "{}: expected exit 2\n{}", path.display(), out.stderr);
        assert!(out.stderr.contains("--> kforge.yaml:"), "{}: no file:line:column\n{}", path.display(), out.stderr);
        assert!(out.stderr.contains("= help:"), "{}: no fix hint\n{}", path.display(), out.stderr);
        assert!(out.stdout.is_empty());
        assert!(!ctx.path("kforge.secrets.yaml").exists(), "an invalid file must not create secrets");
        insta::assert_snapshot!(out.stderr);
    });
    assert!(seen >= 30, "the corpus has {seen} files; keep at least 30");
}

#[test]
fn an_even_number_of_servers_warns_but_passes() {
    let ctx = TestContext::with_example("ha");
    ctx.edit_spec("    - {name: server-3, role: server", "    - {name: server-3, role: agent");
    let out = ctx.kforge(&["check"]).success();
    assert!(out.stderr.contains("warning: 2 servers: an even number adds no fault tolerance"), "{}", out.stderr);
    assert!(out.stderr.contains("--> kforge.yaml:"), "{}", out.stderr);
    assert!(out.stdout.contains("warnings  1"), "{}", out.stdout);
}

/// A generated or pasted file past the parser's limits is "too large", not a syntax
/// error the operator would hunt for; the line shown is cut to a readable window.
#[test]
fn a_huge_document_is_too_large_not_a_syntax_error() {
    let ctx = TestContext::with_example("hardway");
    let nodes: String = (0..60_000)
        .map(|i| format!("    - {{name: w-{i}, role: worker, endpoint: 198.51.{}.{}}}\n", i / 250, i % 250 + 1))
        .collect();
    ctx.edit_spec("  nodes:\n", &format!("  nodes:\n{nodes}"));
    let out = ctx.kforge(&["check"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("error: the document is too large for kforge's YAML parser"), "{}", out.stderr);
    assert!(!out.stderr.contains("syntax"), "{}", out.stderr);
    assert!(out.stderr.lines().all(|l| l.chars().count() < 400), "{}", out.stderr);
}
