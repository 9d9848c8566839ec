//! kforge's integration tests: one binary, each module a user's session against
//! the real tools (openssl, wg, nft, cloud-init) where this machine has them.

mod util;

mod architecture;
mod cli;
mod cloud_init;
mod doctor;
mod firewall;
mod gitops;
mod hardway;
mod k3s_inputs;
mod lab;
mod lint;
mod mesh;
mod nodes;
mod pcap;
mod pki;
mod render;
mod secrets;
mod shell;
mod spec_errors;
mod upgrade;
mod versions;
