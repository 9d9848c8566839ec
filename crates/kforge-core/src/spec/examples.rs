//! Built-in example cluster files (`kforge init --example NAME`).
//!
//! They live as plain YAML beside the crate so they read like documentation, and
//! every one must pass validation with no warning (tested).

pub const HOMELAB: &str = include_str!("../../examples/homelab.yaml");
pub const HA: &str = include_str!("../../examples/ha.yaml");
pub const LAB: &str = include_str!("../../examples/lab.yaml");
pub const HARDWAY: &str = include_str!("../../examples/hardway.yaml");
pub const HARDWAY_LAB: &str = include_str!("../../examples/hardway-lab.yaml");

/// Name → text, in the order `kforge init --help` lists them.
pub const ALL: &[(&str, &str)] =
    &[("homelab", HOMELAB), ("ha", HA), ("hardway", HARDWAY), ("lab", LAB), ("hardway-lab", HARDWAY_LAB)];

pub fn get(name: &str) -> Option<&'static str> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|(n, _)| *n).collect()
}
