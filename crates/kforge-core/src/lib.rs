//! kforge's pure pipeline, from one cluster file to every artifact every node needs.
//!
//! ```text
//! kforge.yaml ─▶ spec ─▶ secrets ─▶ model ─▶ plan ─▶ render (dir tree, cloud-init)
//! ```
//!
//! Nothing in this crate touches a host. Same spec + same secrets bundle → a
//! byte-identical plan, which is what makes `plan`, snapshots and cloud-init cheap.

pub mod balancer;
pub mod component;
pub mod firewall;
pub mod gates;
pub mod gitops;
pub mod hardway;
pub mod hashing;
pub mod ini;
pub mod k3s;
pub mod kubeconfig;
pub mod lint;
pub mod manifest;
pub mod mesh;
pub mod model;
pub mod node_labels;
pub mod packages;
pub mod paths;
pub mod pipeline;
pub mod pki;
pub mod plan;
pub mod random;
pub mod render;
pub mod secrets;
pub mod spec;
pub mod systemd;
pub mod upgrade;
pub mod wireguard;
