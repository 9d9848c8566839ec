//! APIs removed or deprecated in the cluster's target version, from `apis.tsv`
//! (kept in the repo, with the version each stopped being served).

use super::{Finding, Level, Object};

const TABLE: &str = include_str!("apis.tsv");

struct Entry<'a> {
    api_version: &'a str,
    kind: &'a str,
    deprecated_in: &'a str,
    /// None: deprecated, still served.
    removed_in: Option<&'a str>,
    instead: &'a str,
}

fn table() -> impl Iterator<Item = Entry<'static>> {
    TABLE.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|l| {
        let c: Vec<&str> = l.split('\t').collect();
        let [api_version, kind, deprecated_in, removed_in, instead] = c[..] else { return None };
        Some(Entry { api_version, kind, deprecated_in, removed_in: (removed_in != "-").then_some(removed_in), instead })
    })
}

/// `1.37` of `v1.37.2`, `v1.36.4+k3s1`, `1.35`.
pub fn minor_of(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split(['.', '+', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn check(objects: &[Object], target: Option<&str>) -> Vec<Finding> {
    let target_minor = target.and_then(minor_of);
    let entries: Vec<Entry<'_>> = table().collect();
    let mut out = Vec::new();
    for o in objects {
        let Some(e) = entries.iter().find(|e| e.api_version == o.api_version && e.kind == o.kind) else { continue };
        let at = o.source();
        let pos = o.pos("apiVersion");
        let f = match (e.removed_in, target_minor) {
            (Some(removed), Some(t)) if minor_of(removed).is_some_and(|r| t >= r) => {
                Finding::new("api/removed", Level::Error, &at, pos)
                    .subject(o.subject())
                    .message(format!(
                        "{} {} was removed in Kubernetes {removed}; this cluster runs {}: the API server refuses it",
                        o.api_version,
                        o.kind,
                        target.unwrap_or_default()
                    ))
                    .fix(format!("use {} (and check the fields that changed with it)", e.instead))
            }
            (Some(removed), None) => Finding::new("api/removed", Level::Error, &at, pos)
                .subject(o.subject())
                .message(format!(
                    "{} {} was removed in Kubernetes {removed}: no release since serves it",
                    o.api_version, o.kind
                ))
                .fix(format!("use {} (and check the fields that changed with it)", e.instead)),
            (Some(removed), _) => Finding::new("api/deprecated", Level::Warning, &at, pos)
                .subject(o.subject())
                .message(format!(
                    "{} {} is deprecated since {} and removed in {removed}",
                    o.api_version, o.kind, e.deprecated_in
                ))
                .fix(format!("use {} before upgrading to {removed}", e.instead)),
            (None, _) => Finding::new("api/deprecated", Level::Warning, &at, pos)
                .subject(o.subject())
                .message(format!("{} {} is deprecated since Kubernetes {}", o.api_version, o.kind, e.deprecated_in))
                .fix(format!("use {}", e.instead)),
        };
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_line_parses() {
        let lines = TABLE.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count();
        assert_eq!(table().count(), lines);
        assert!(table().all(|e| minor_of(e.deprecated_in).is_some()));
    }

    #[test]
    fn minors_of_distribution_versions() {
        assert_eq!(minor_of("v1.37.2"), Some((1, 37)));
        assert_eq!(minor_of("v1.36.4+k3s1"), Some((1, 36)));
        assert_eq!(minor_of("1.22"), Some((1, 22)));
    }
}
