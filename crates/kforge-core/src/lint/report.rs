//! How findings are printed: text like `kforge check` (file:line:column, the line,
//! a caret, the fix), JSON, or SARIF 2.1.0 for code-scanning tools.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

use super::{Finding, Level};

/// Text for a terminal; `sources` maps file names to their text (for the echoed line).
pub fn text(findings: &[Finding], sources: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(out, "{}[{}]: {}", f.level.label(), f.rule, f.message);
        let (num, pad) = match f.line {
            Some(l) => (l.to_string(), " ".repeat(l.to_string().len())),
            None => (String::new(), " ".into()),
        };
        match (f.line, f.column) {
            (Some(line), Some(column)) => {
                let _ = writeln!(out, "{pad}--> {}:{line}:{column}", f.file);
                if let Some(src) = sources.get(&f.file).and_then(|t| t.lines().nth(line - 1)) {
                    let (src, column) = crate::spec::excerpt(src, column);
                    let _ = writeln!(out, "{pad} |\n{num} | {src}\n{pad} | {}^", " ".repeat(column - 1));
                }
            }
            _ => {
                let _ = writeln!(out, "{pad}--> {}", f.file);
            }
        }
        if !f.subject.is_empty() {
            let _ = writeln!(out, "{pad} = in: {}", f.subject);
        }
        if !f.fix.is_empty() {
            let _ = writeln!(out, "{pad} = fix: {}", f.fix);
        }
        if let Some(s) = &f.suggestion {
            let _ = writeln!(out, "{pad} = replacement:");
            for l in s.lines() {
                let _ = writeln!(out, "{pad}     {l}");
            }
        }
        out.push('\n');
    }
    out.push_str(&summary(findings));
    out
}

pub fn summary(findings: &[Finding]) -> String {
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    format!(
        "kforge lint: {}, {}, {}\n",
        plural(count(Level::Error), "error"),
        plural(count(Level::Warning), "warning"),
        plural(count(Level::Note), "note")
    )
}

pub fn json(findings: &[Finding]) -> String {
    serde_json::to_string_pretty(&json!({ "findings": findings })).expect("findings serialize")
}

/// SARIF 2.1.0: one run, kforge as the tool, a rule per rule id, a result per finding.
pub fn sarif(findings: &[Finding]) -> String {
    let mut rules: Vec<&str> = findings.iter().map(|f| f.rule).collect();
    rules.sort();
    rules.dedup();
    let results: Vec<_> = findings
        .iter()
        .map(|f| {
            let mut region = serde_json::Map::new();
            if let (Some(line), Some(column)) = (f.line, f.column) {
                region.insert("startLine".into(), json!(line));
                region.insert("startColumn".into(), json!(column));
            }
            let mut text = f.message.clone();
            if !f.fix.is_empty() {
                text.push_str(&format!(" Fix: {}", f.fix));
            }
            json!({
                "ruleId": f.rule,
                "level": f.level.label(),
                "message": { "text": text },
                "locations": [{ "physicalLocation": {
                    "artifactLocation": { "uri": f.file },
                    "region": region,
                }}],
            })
        })
        .collect();
    let doc = json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": { "driver": {
                "name": "kforge",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules.iter().map(|r| json!({ "id": r, "shortDescription": { "text": r } })).collect::<Vec<_>>(),
            }},
            "results": results,
        }],
    });
    serde_json::to_string_pretty(&doc).expect("sarif serializes")
}
