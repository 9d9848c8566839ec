//! Kubeconfig files, typed and serialized (never string-templated).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::pki::CertAndKey;

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named<ClusterEntry>>,
    users: Vec<Named<UserEntry>>,
    contexts: Vec<Named<ContextEntry>>,
    current_context: String,
    preferences: Empty,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    item: T,
}

#[derive(Serialize)]
struct ClusterEntry {
    cluster: ClusterData,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterData {
    server: String,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct UserEntry {
    user: UserData,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserData {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Serialize)]
struct ContextEntry {
    context: ContextData,
}

#[derive(Serialize)]
struct ContextData {
    cluster: String,
    user: String,
}

/// A kubeconfig for `user` on `cluster` at `server`, CA and client cert embedded.
pub fn render_kubeconfig(cluster: &str, server: &str, ca_cert_pem: &str, user: &str, client: &CertAndKey) -> String {
    let context = format!("{user}@{cluster}");
    let cfg = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: cluster.into(),
            item: ClusterEntry {
                cluster: ClusterData {
                    server: server.into(),
                    certificate_authority_data: STANDARD.encode(ca_cert_pem),
                },
            },
        }],
        users: vec![Named {
            name: context.clone(),
            item: UserEntry {
                user: UserData {
                    client_certificate_data: STANDARD.encode(&client.cert),
                    client_key_data: STANDARD.encode(&client.key),
                },
            },
        }],
        contexts: vec![Named {
            name: context.clone(),
            item: ContextEntry { context: ContextData { cluster: cluster.into(), user: context.clone() } },
        }],
        current_context: context,
        preferences: Empty {},
    };
    serde_saphyr::to_string(&cfg).expect("kubeconfig serializes")
}
