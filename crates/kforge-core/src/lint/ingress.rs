//! Ingresses served by ingress-nginx: annotation values the controller rejects (it
//! then fails closed — one bad CIDR in an allow-list made every host answer 503 in
//! the seed write-ups), snippet annotations, and the retirement of ingress-nginx
//! itself (no security fixes since March 2026) with the Gateway API HTTPRoute that
//! would replace each Ingress.

use std::fmt::Write;

use ipnet::IpNet;

use super::yaml::Node;
use super::{Finding, Level, Object};

const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// The value each annotation takes (a subset: the ones that fail closed when wrong).
#[derive(Clone, Copy)]
enum Kind {
    CidrList,
    Bool,
    /// Whole seconds (`proxy-read-timeout: "60"`); ingress-nginx takes no unit.
    Seconds,
    Count,
    /// nginx size: `8m`, `512k`, `1g`, bytes.
    Size,
    OneOf(&'static [&'static str]),
    Url,
    /// Raw nginx configuration: disabled by default since controller v1.9.
    Snippet,
    Free,
}

const ANNOTATIONS: &[(&str, Kind)] = &[
    ("whitelist-source-range", Kind::CidrList),
    ("allowlist-source-range", Kind::CidrList),
    ("denylist-source-range", Kind::CidrList),
    ("ssl-redirect", Kind::Bool),
    ("force-ssl-redirect", Kind::Bool),
    ("ssl-passthrough", Kind::Bool),
    ("use-regex", Kind::Bool),
    ("enable-cors", Kind::Bool),
    ("cors-allow-credentials", Kind::Bool),
    ("enable-access-log", Kind::Bool),
    ("enable-opentelemetry", Kind::Bool),
    ("service-upstream", Kind::Bool),
    ("proxy-ssl-verify", Kind::OneOf(&["on", "off"])),
    ("proxy-buffering", Kind::OneOf(&["on", "off"])),
    ("proxy-request-buffering", Kind::OneOf(&["on", "off"])),
    ("proxy-connect-timeout", Kind::Seconds),
    ("proxy-send-timeout", Kind::Seconds),
    ("proxy-read-timeout", Kind::Seconds),
    ("limit-rps", Kind::Count),
    ("limit-rpm", Kind::Count),
    ("limit-connections", Kind::Count),
    ("limit-burst-multiplier", Kind::Count),
    ("proxy-next-upstream-tries", Kind::Count),
    ("proxy-body-size", Kind::Size),
    ("client-body-buffer-size", Kind::Size),
    ("proxy-buffer-size", Kind::Size),
    ("backend-protocol", Kind::OneOf(&["HTTP", "HTTPS", "GRPC", "GRPCS", "AUTO_HTTP", "FCGI"])),
    ("load-balance", Kind::OneOf(&["round_robin", "ewma"])),
    ("affinity", Kind::OneOf(&["cookie"])),
    ("auth-type", Kind::OneOf(&["basic", "digest"])),
    ("auth-url", Kind::Url),
    ("auth-signin", Kind::Url),
    ("permanent-redirect", Kind::Url),
    ("temporal-redirect", Kind::Url),
    ("configuration-snippet", Kind::Snippet),
    ("server-snippet", Kind::Snippet),
    ("auth-snippet", Kind::Snippet),
    ("stream-snippet", Kind::Snippet),
    ("rewrite-target", Kind::Free),
    ("app-root", Kind::Free),
    ("auth-secret", Kind::Free),
    ("auth-realm", Kind::Free),
    ("auth-response-headers", Kind::Free),
    ("auth-tls-secret", Kind::Free),
    ("auth-tls-verify-client", Kind::OneOf(&["on", "off", "optional", "optional_no_ca"])),
    ("session-cookie-name", Kind::Free),
    ("session-cookie-path", Kind::Free),
    ("session-cookie-max-age", Kind::Seconds),
    ("session-cookie-expires", Kind::Seconds),
    ("cors-allow-origin", Kind::Free),
    ("cors-allow-methods", Kind::Free),
    ("cors-allow-headers", Kind::Free),
    ("upstream-vhost", Kind::Free),
    ("x-forwarded-prefix", Kind::Free),
    ("canary", Kind::Bool),
    ("canary-weight", Kind::Count),
    ("canary-by-header", Kind::Free),
    ("from-to-www-redirect", Kind::Bool),
    ("server-alias", Kind::Free),
    ("ssl-ciphers", Kind::Free),
    ("custom-http-errors", Kind::Free),
    ("default-backend", Kind::Free),
    ("upstream-hash-by", Kind::Free),
    ("proxy-redirect-from", Kind::Free),
    ("proxy-redirect-to", Kind::Free),
];

/// Served by ingress-nginx: its class, or its annotations.
fn is_nginx(o: &Object) -> bool {
    let class = o.root.str_at("spec.ingressClassName").or_else(|| {
        o.root
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get("kubernetes.io/ingress.class"))
            .and_then(Node::str)
    });
    class.is_some_and(|c| c.contains("nginx")) || annotations(o).iter().any(|(k, ..)| k.starts_with(PREFIX))
}

fn annotations(o: &Object) -> &[(String, crate::spec::Pos, Node)] {
    o.root.at("metadata.annotations").map(Node::entries).unwrap_or_default()
}

pub fn check(objects: &[Object]) -> Vec<Finding> {
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.kind == "Ingress" && is_nginx(o)) {
        let at = o.source();
        for (key, kpos, value) in annotations(o) {
            let Some(name) = key.strip_prefix(PREFIX) else { continue };
            let text = value.str().unwrap_or("");
            let Some((_, kind)) = ANNOTATIONS.iter().find(|(n, _)| *n == name) else {
                out.push(
                    Finding::new("ingress-nginx/unknown-annotation", Level::Warning, &at, Some(*kpos))
                        .subject(o.subject())
                        .message(format!("ingress-nginx has no annotation `{name}`: it is ignored"))
                        .fix("check the spelling against the ingress-nginx annotations reference"),
                );
                continue;
            };
            if let Err(why) = valid(*kind, text) {
                let level = if matches!(kind, Kind::Snippet) { Level::Warning } else { Level::Error };
                let rule = if matches!(kind, Kind::Snippet) {
                    "ingress-nginx/snippet"
                } else {
                    "ingress-nginx/invalid-annotation"
                };
                out.push(
                    Finding::new(rule, level, &at, Some(value.pos))
                        .subject(o.subject())
                        .message(format!("{key}: {why}"))
                        .fix(fix_for(*kind)),
                );
            }
        }
        out.push(
            Finding::new("ingress-nginx/retired", Level::Warning, &at, o.pos("kind"))
                .subject(o.subject())
                .message("served by ingress-nginx, which is retired upstream (no security fixes since March 2026)")
                .suggestion(http_route(o))
                .fix("move to Gateway API: a Gateway (from any maintained implementation) and this HTTPRoute"),
        );
    }
    out
}

fn valid(kind: Kind, v: &str) -> Result<(), String> {
    let v = v.trim();
    match kind {
        Kind::CidrList => {
            let bad: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|c| c.parse::<IpNet>().is_err() && c.parse::<std::net::IpAddr>().is_err())
                .collect();
            if bad.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "`{}` is not a CIDR: ingress-nginx rejects the whole list and fails closed — every request to this Ingress's hosts answers 503",
                    bad.join("`, `")
                ))
            }
        }
        Kind::Bool => match v {
            "true" | "false" => Ok(()),
            _ => Err(format!("`{v}` is not `true` or `false`: the annotation is rejected and the Ingress's location is not configured")),
        },
        Kind::Seconds | Kind::Count => match v.parse::<u64>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("`{v}` is not a whole number{}", if matches!(kind, Kind::Seconds) { " of seconds (no unit)" } else { "" })),
        },
        Kind::Size => {
            let digits = v.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
            match !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && v.len() - digits.len() <= 1 {
                true => Ok(()),
                false => Err(format!("`{v}` is not an nginx size (e.g. `8m`, `512k`, `0` for unlimited)")),
            }
        }
        Kind::OneOf(values) => match values.contains(&v) {
            true => Ok(()),
            false => Err(format!("`{v}` is not one of {}", values.join(", "))),
        },
        Kind::Url => match v.starts_with("http://") || v.starts_with("https://") {
            true => Ok(()),
            false => Err(format!("`{v}` is not an http:// or https:// URL")),
        },
        Kind::Snippet => Err(
            "snippet annotations inject raw nginx configuration: refused unless allow-snippet-annotations is on (off by default since v1.9; CVE-2025-1974)".into(),
        ),
        Kind::Free => Ok(()),
    }
}

fn fix_for(kind: Kind) -> &'static str {
    match kind {
        Kind::CidrList => "list CIDRs or addresses separated by commas, e.g. `203.0.113.0/24,198.51.100.7`",
        Kind::Bool => "quote `\"true\"` or `\"false\"`",
        Kind::Seconds => "give whole seconds as a quoted number, e.g. `\"60\"`",
        Kind::Count => "give a quoted whole number, e.g. `\"10\"`",
        Kind::Size => "give a size such as `\"8m\"`",
        Kind::OneOf(_) => "use one of the listed values",
        Kind::Url => "give a full URL, e.g. `https://auth.example.com/verify`",
        Kind::Snippet => {
            "express it with ordinary annotations, or as a Gateway API filter after moving off ingress-nginx"
        }
        Kind::Free => "",
    }
}

/// The Gateway API HTTPRoute carrying the same hosts, paths and backends.
fn http_route(o: &Object) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {}\n  namespace: {}",
        o.name, o.namespace
    );
    let _ = writeln!(y, "spec:\n  parentRefs:\n    - name: gateway   # your Gateway (and its namespace, if another)");
    let rules: Vec<&Node> = o.root.at("spec.rules").map(Node::items).unwrap_or_default().iter().collect();
    let hosts: Vec<&str> = rules.iter().filter_map(|r| r.str_at("host")).collect();
    if !hosts.is_empty() {
        let _ = writeln!(y, "  hostnames:");
        for h in &hosts {
            let _ = writeln!(y, "    - {h:?}");
        }
    }
    let _ = writeln!(y, "  rules:");
    let mut any = false;
    for r in &rules {
        for p in r.at("http.paths").map(Node::items).unwrap_or_default() {
            any = true;
            let path = p.str_at("path").unwrap_or("/");
            let kind = if p.str_at("pathType") == Some("Exact") { "Exact" } else { "PathPrefix" };
            let service = p.str_at("backend.service.name").unwrap_or("SERVICE");
            let port = p.at("backend.service.port.number").and_then(Node::str).unwrap_or("PORT");
            let _ = writeln!(y, "    - matches:\n        - path: {{type: {kind}, value: {path:?}}}");
            let _ = writeln!(y, "      backendRefs:\n        - name: {service}\n          port: {port}");
        }
    }
    if let Some(d) = o.root.at("spec.defaultBackend.service") {
        any = true;
        let _ = writeln!(
            y,
            "    - backendRefs:\n        - name: {}\n          port: {}",
            d.str_at("name").unwrap_or("SERVICE"),
            d.str_at("port.number").unwrap_or("PORT")
        );
    }
    if !any {
        let _ = writeln!(y, "    []");
    }
    y
}
