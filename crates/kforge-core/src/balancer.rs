//! kforge's local TCP balancer: an nginx instance of its own (stream module) listening
//! on 127.0.0.1 and passing connections to every API server on the mesh, so a client on
//! this node survives any one server. Hard-way workers dial their API servers through
//! it; K3s agents and joining servers register through it (K3s's "fixed registration
//! address"), so a join never depends on the first server being up.

use std::net::SocketAddrV4;

use crate::plan::{PlannedFile, PlannedUnit};
use crate::systemd::UnitFile;

/// nginx's stream module where Debian's `libnginx-mod-stream` installs it (`nginx`
/// neither depends on nor recommends that package: `packages::Package::NginxStream`).
pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx.conf of a balancer: `listen 127.0.0.1:PORT`, TCP passthrough to `backends`.
pub fn nginx_stream_conf(title: &str, unit: &str, port: u16, backends: &[SocketAddrV4]) -> String {
    let upstreams: String =
        backends.iter().map(|b| format!("        server {b} max_fails=1 fail_timeout=5s;\n")).collect();
    format!(
        "# {title}. Managed by kforge.\n\
         # TCP passthrough: TLS is end to end between the client and an API server, so the\n\
         # certificates and client identities are untouched.\n\
         load_module {STREAM_MODULE};\n\
         pid /run/{pid}.pid;\n\
         error_log stderr;\n\
         worker_processes 1;\n\
         events {{ worker_connections 1024; }}\n\
         stream {{\n\
         \x20   upstream kube_apiservers {{\n\
         {upstreams}\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       proxy_pass kube_apiservers;\n\
         \x20       proxy_connect_timeout 2s;\n\
         \x20       proxy_timeout 24h;\n\
         \x20   }}\n\
         }}\n",
        pid = unit.trim_end_matches(".service"),
    )
}

/// An nginx instance of kforge's own, with its own configuration and pid file (the
/// distribution's nginx.service stays untouched).
pub fn nginx_unit(why: &str, description: &str, after: &str, unit: &str, conf: &str) -> UnitFile {
    let pid = unit.trim_end_matches(".service");
    UnitFile::new(format!("Managed by kforge: {why}."))
        .section("Unit")
        .set("Description", description)
        .set("After", format!("network-online.target {after}"))
        .set("Wants", "network-online.target")
        .section("Service")
        .set("Type", "forking")
        .set("PIDFile", format!("/run/{pid}.pid"))
        .set("ExecStartPre", format!("/usr/sbin/nginx -t -q -c {conf}"))
        .set("ExecStart", format!("/usr/sbin/nginx -c {conf}"))
        .set("ExecReload", format!("/usr/sbin/nginx -c {conf} -s reload"))
        .set("ExecStop", format!("/usr/sbin/nginx -c {conf} -s quit"))
        .set("Restart", "on-failure")
        .wanted_by_multi_user()
}

/// The planned unit of an nginx instance: restarted when any of its files changes.
pub fn planned_unit(name: &str, files: &[PlannedFile]) -> PlannedUnit {
    PlannedUnit {
        name: name.into(),
        enable: true,
        start: true,
        restart_on: files.iter().map(|f| f.path.clone()).collect(),
        reload_command: None,
        recheck: None,
        joins: None,
    }
}
