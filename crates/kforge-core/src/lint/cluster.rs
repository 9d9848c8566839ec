//! The cluster file itself: everything `kforge check` says (errors and warnings, as
//! findings), and what only a linter weighs: a Kubernetes line past end of life (the
//! dated table `releases.tsv`), cgroup v1 allowed on 1.35+, and the MTU budget of the
//! mesh (and of flannel's VXLAN inside it) against the underlay.

use time::Date;

use super::apis::minor_of;
use super::{Finding, Level, Source};
use crate::spec::{Cluster, Diagnostic, DistributionKind, LoadedSpec, Severity, SourceMap, SpecError};

const RELEASES: &str = include_str!("releases.tsv");
/// WireGuard's overhead over an IPv6 underlay (IPv6 40 + UDP 8 + WireGuard 32).
pub const WIREGUARD_OVERHEAD: u16 = 80;
/// VXLAN's overhead (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u16 = 50;

struct Release {
    minor: (u32, u32),
    end_of_life: Date,
}

fn releases() -> Vec<Release> {
    RELEASES
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            Some(Release { minor: minor_of(c.first()?)?, end_of_life: parse_date(c.get(2)?)? })
        })
        .collect()
}

/// `2027-02-28`.
pub fn parse_date(s: &str) -> Option<Date> {
    let mut p = s.split('-').map(|x| x.parse::<i32>().ok());
    let (y, m, d) = (p.next()??, p.next()??, p.next()??);
    Date::from_calendar_date(y, time::Month::try_from(u8::try_from(m).ok()?).ok()?, u8::try_from(d).ok()?).ok()
}

fn diagnostic_finding(file: &str, d: &Diagnostic) -> Finding {
    let at = Source { name: file, text: "" };
    let level = if d.severity == Severity::Error { Level::Error } else { Level::Warning };
    Finding::new("cluster-file/check", level, &at, d.pos)
        .subject(d.path.clone())
        .message(d.message.clone())
        .fix(d.help.clone().unwrap_or_default())
}

pub fn from_spec_warnings(spec: &LoadedSpec) -> Vec<Finding> {
    spec.warnings.iter().map(|d| diagnostic_finding(&spec.file, d)).collect()
}

pub fn from_spec_error(e: &SpecError) -> Vec<Finding> {
    e.diagnostics.iter().map(|d| diagnostic_finding(&e.file, d)).collect()
}

pub fn check(c: &Cluster, at: Source<'_>, today: Date) -> Vec<Finding> {
    let map = SourceMap::build(at.text);
    let finding = |rule, level, path: &str| Finding::new(rule, level, &at, map.locate(path)).subject(path.to_string());
    let mut out = Vec::new();
    let version = &c.spec.distribution.version;
    let minor = minor_of(version);
    let table = releases();
    let newest = table.iter().map(|r| r.minor).max();
    match minor.and_then(|m| table.iter().find(|r| r.minor == m)) {
        Some(r) if r.end_of_life < today => out.push(
            finding("cluster/end-of-life", Level::Error, "spec.distribution.version")
                .message(format!(
                    "Kubernetes {}.{} reached end of life on {}: no security fixes since",
                    r.minor.0, r.minor.1, r.end_of_life
                ))
                .fix(supported_lines(&table, today)),
        ),
        Some(r) if (r.end_of_life - today).whole_days() <= 60 => out.push(
            finding("cluster/end-of-life", Level::Warning, "spec.distribution.version")
                .message(format!("Kubernetes {}.{} reaches end of life on {}", r.minor.0, r.minor.1, r.end_of_life))
                .fix(format!("plan the upgrade now: {}", supported_lines(&table, today))),
        ),
        Some(_) => {}
        None if minor.is_some_and(|m| newest.is_some_and(|n| m > n)) => out.push(
            finding("cluster/unknown-release", Level::Note, "spec.distribution.version")
                .message(format!("{version} is newer than kforge's release table"))
                .fix("nothing to do if it is a released version; kforge's table is updated with each release"),
        ),
        None => out.push(
            finding("cluster/end-of-life", Level::Error, "spec.distribution.version")
                .message(format!("{version} is older than every line in kforge's release table: long past end of life"))
                .fix(supported_lines(&table, today)),
        ),
    }
    if c.spec.distribution.kind == DistributionKind::Hardway
        && c.spec.hardway.allow_cgroup_v1
        && minor.is_some_and(|m| m >= (1, 35))
    {
        out.push(
            finding("cluster/cgroup-v1", Level::Warning, "spec.hardway.allowCgroupV1")
                .message(format!(
                    "cgroup v1 is allowed on Kubernetes {version}: since 1.35 the kubelet refuses it unless told not to (failCgroupV1: false), and its support is being removed"
                ))
                .fix("boot the hosts with cgroup v2 (systemd.unified_cgroup_hierarchy=1, the default of every current distribution) and drop allowCgroupV1"),
        );
    }
    let m = &c.spec.mesh;
    if m.mtu + WIREGUARD_OVERHEAD > m.underlay_mtu {
        out.push(
            finding("cluster/mtu-budget", Level::Error, "spec.mesh.mtu")
                .message(format!(
                    "mesh MTU {} + WireGuard's {WIREGUARD_OVERHEAD} bytes = {} does not fit the underlay's {}: full-size packets are dropped (an MTU black hole: small requests work, large transfers hang)",
                    m.mtu,
                    m.mtu + WIREGUARD_OVERHEAD,
                    m.underlay_mtu
                ))
                .fix(format!("set spec.mesh.mtu to {} or less", m.underlay_mtu - WIREGUARD_OVERHEAD)),
        );
    }
    if c.spec.distribution.kind == DistributionKind::K3s && c.spec.k3s.flannel_backend == "vxlan" {
        let pods = m.mtu.saturating_sub(VXLAN_OVERHEAD);
        if pods < 1280 {
            out.push(
                finding("cluster/mtu-budget", Level::Warning, "spec.mesh.mtu")
                    .message(format!(
                        "flannel's VXLAN inside the mesh leaves pods an MTU of {pods} ({} - VXLAN's {VXLAN_OVERHEAD}), below IPv6's minimum of 1280",
                        m.mtu
                    ))
                    .fix(format!(
                        "raise the underlay or spec.mesh.mtu (budget: pods 1280 + VXLAN {VXLAN_OVERHEAD} + WireGuard {WIREGUARD_OVERHEAD} = {} on the underlay); host-gw would save the VXLAN bytes but cannot cross WireGuard",
                        1280 + VXLAN_OVERHEAD + WIREGUARD_OVERHEAD
                    )),
            );
        }
    }
    out
}

fn supported_lines(table: &[Release], today: Date) -> String {
    let lines: Vec<String> =
        table.iter().filter(|r| r.end_of_life >= today).map(|r| format!("{}.{}", r.minor.0, r.minor.1)).collect();
    format!("upgrade one minor version at a time to a supported line ({})", lines.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_table_parses_and_is_ordered() {
        let t = releases();
        let lines = RELEASES.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).count();
        assert_eq!(t.len(), lines);
        assert!(t.windows(2).all(|w| w[0].minor < w[1].minor && w[0].end_of_life < w[1].end_of_life));
    }
}
