//! Cluster addons: RBAC so the API server may talk to kubelets, and CoreDNS. Applied
//! from the initialising controller once its API server answers.

use super::{ADDONS_DIR, is_stand_in};
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;
use serde_saphyr::LitString;

use crate::component::Component;
use crate::hashing::sha256_hex;
use crate::model::Model;
use crate::plan::{NodePlan, Phase, PlannedCommand, PlannedFile};

const STAMP: &str = "/var/lib/kforge/addons.applied";

/// The stand-in that keeps addons from being applied, if any.
pub fn blocked_by(model: &Model<'_>) -> Option<String> {
    [Component::KubeApiserver, Component::Kubectl].into_iter().find(|c| is_stand_in(model, *c)).map(|c| c.key().into())
}

pub fn plan(model: &Model<'_>, secrets: &crate::secrets::SecretsBundle, np: &mut NodePlan) {
    let rbac = PlannedFile::new(format!("{ADDONS_DIR}/10-apiserver-to-kubelet.yaml"), 0o644, rbac()).about(
        "ClusterRole system:kube-apiserver-to-kubelet and its binding to user `kubernetes`.",
        "kubectl apply (kforge, once the API answers); then the kubelets' webhook authorizer",
        vec![
            (
                "rules".into(),
                "nodes/proxy, stats, log, spec, metrics: what `kubectl logs/exec/top` need from a kubelet".into(),
            ),
            ("subjects".into(), "user `kubernetes`: the CN of the API server's kubelet client certificate".into()),
        ],
    );
    let dns = PlannedFile::new(format!("{ADDONS_DIR}/20-coredns.yaml"), 0o644, coredns(model)).about(
        "CoreDNS: the cluster's DNS server (Deployment, Service kube-dns, RBAC, Corefile).",
        "kubectl apply (kforge); pods resolve through it",
        vec![
            (
                "Service clusterIP".into(),
                format!(
                    "{}: the address every kubelet gives pods as their nameserver (clusterDNS)",
                    model.cluster_dns_ip
                ),
            ),
            ("Corefile kubernetes".into(), format!("{}: the cluster domain", model.spec.spec.network.cluster_domain)),
        ],
    );
    let revoked = (!secrets.revoked.is_empty()).then(|| {
        PlannedFile::new(format!("{ADDONS_DIR}/{REVOKED_FILE}"), 0o644, revoked_credentials(secrets)).about(
            "ValidatingAdmissionPolicy kforge-revoked-credentials: the API refuses every write made with a removed node's certificate.",
            "kubectl apply (kforge, at the node's removal and with the addons); the API server's admission",
            vec![(
                "validations".into(),
                "the request's credential id (X509SHA256 of the client certificate, set by the API server) is not one of the secrets bundle's revoked certificates".into(),
            )],
        )
    });
    let digest = sha256_hex(
        format!("{}{}{}", rbac.sha256, dns.sha256, revoked.as_ref().map(|f| f.sha256.as_str()).unwrap_or(""))
            .as_bytes(),
    );
    let p = np.phase(Phase::Addons);
    p.files.extend([rbac, dns]);
    p.files.extend(revoked);
    if blocked_by(model).is_some() {
        return;
    }
    let kubectl = super::admin_kubectl();
    p.gate = Some(crate::gates::coredns(&kubectl));
    p.commands.push(PlannedCommand {
        description: "wait for the API server, then apply the addons".into(),
        run: format!(
            "for _ in $(seq 90); do {kubectl} get --raw=/readyz >/dev/null 2>&1 && break; sleep 2; done; {kubectl} apply -f {ADDONS_DIR} && mkdir -p /var/lib/kforge && echo {digest} > {STAMP}"
        ),
        unless: Some(format!("[ \"$(cat {STAMP} 2>/dev/null)\" = {digest} ]")),
        recheck: None,
    });
    if let Some((file, label)) = role_labels(model, &kubectl) {
        p.files.push(file);
        p.commands.push(label);
    }
}

/// Each worker's Node as the file describes it (`node_labels`): its roles
/// (`kubectl get nodes` shows ROLES, `<none>` without them; a kubelet may not set
/// node-role.kubernetes.io on itself under NodeRestriction), its labels and its taints.
fn role_labels(model: &Model<'_>, kubectl: &str) -> Option<(PlannedFile, PlannedCommand)> {
    use crate::node_labels::Mark;
    use crate::spec::Role;
    let mut marks = Vec::new();
    for (_, node) in model.nodes().filter(|(_, n)| n.role.has(Role::Worker)) {
        let mut mark = |m: Mark| marks.push((node.name.clone(), m));
        if node.role.has(Role::Controller) {
            mark(Mark::Label("node-role.kubernetes.io/control-plane=".into()));
        }
        mark(Mark::Label("node-role.kubernetes.io/worker=".into()));
        for (k, v) in &node.labels {
            mark(Mark::Label(format!("{k}={v}")));
        }
        for t in &node.taints {
            mark(Mark::Taint(t.clone()));
        }
    }
    crate::node_labels::plan(
        &marks,
        kubectl,
        vec![
            ("roles".into(), "node-role.kubernetes.io/control-plane on controllers, /worker on workers: the ROLES column of kubectl get nodes".into()),
            ("labels, taints".into(), "spec.nodes[].labels and .taints: set through the API, since the kubelet's --node-labels and --register-with-taints apply only when a Node registers".into()),
        ],
    )
}

/// The addon file that revokes removed nodes' certificates.
pub const REVOKED_FILE: &str = "30-revoked-credentials.yaml";

/// Kubernetes has no certificate revocation, and a removed node's kubelet certificate
/// stays valid until it expires: with it, the node's name could register the Node
/// again and update its status (NodeRestriction allows a node that much). The API
/// server names each client certificate it authenticated by its SHA-256
/// (`authentication.kubernetes.io/credential-id`), and this policy denies every
/// create, update, delete and connect made with a revoked one, whatever the resource.
/// Reads stay possible for what the Node authorizer still grants a name with no pods.
pub fn revoked_credentials(secrets: &crate::secrets::SecretsBundle) -> String {
    const KEY: &str = "authentication.kubernetes.io/credential-id";
    let ids: Vec<String> = secrets.revoked.keys().map(|id| format!("'{id}'")).collect();
    let nodes: std::collections::BTreeSet<&str> = secrets.revoked.values().map(|r| r.node.as_str()).collect();
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "kforge-revoked-credentials"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["*"],
                "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE", "DELETE", "CONNECT"],
                // Every resource and every subresource (the API allows `*/*` alone).
                "resources": ["*/*"],
            }]},
            // Total for every request: the API server's own loopback writes (a PDB's status
            // during an eviction) carry no `extra` at all, and an expression that errors
            // there would deny them (failurePolicy Fail) — every drain would stall.
            "validations": [{
                "expression": format!(
                    "!has(request.userInfo.extra) || !('{KEY}' in request.userInfo.extra) || !request.userInfo.extra['{KEY}'].exists(id, id in [{}])",
                    ids.join(", ")
                ),
                "message": "this client certificate belonged to a node removed from the cluster by kforge, and is revoked",
                "reason": "Forbidden",
            }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "kforge-revoked-credentials"},
        "spec": {"policyName": "kforge-revoked-credentials", "validationActions": ["Deny"]},
    });
    manifests(
        &format!(
            "Managed by kforge: certificates of removed nodes ({}) are refused.",
            nodes.into_iter().collect::<Vec<_>>().join(", ")
        ),
        &[yaml(&policy), yaml(&binding)],
    )
}

/// YAML documents (`---` between them) under a header comment.
fn manifests(header: &str, docs: &[String]) -> String {
    format!("# {header}\n{}", docs.join("---\n"))
}

fn yaml(doc: &impl Serialize) -> String {
    serde_saphyr::to_string(doc).expect("manifest serializes")
}

fn rbac() -> String {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": "system:kube-apiserver-to-kubelet",
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        },
        "rules": [{
            "apiGroups": [""],
            "resources": ["nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec", "nodes/metrics"],
            "verbs": ["*"],
        }],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:kube-apiserver"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kube-apiserver-to-kubelet"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubernetes"}],
    });
    manifests(
        "Managed by kforge: lets the API server (user `kubernetes`) use the kubelet API.",
        &[yaml(&role), yaml(&binding)],
    )
}

/// The ConfigMap holding the Corefile as a literal block (readable on the host).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CorefileConfigMap {
    api_version: &'static str,
    kind: &'static str,
    metadata: serde_json::Value,
    data: BTreeMap<&'static str, LitString>,
}

fn corefile(domain: &str) -> String {
    format!(
        ".:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}}
"
    )
}

fn coredns(model: &Model<'_>) -> String {
    let domain = &model.spec.spec.network.cluster_domain;
    let dns_ip = model.cluster_dns_ip.to_string();
    let image = &model.spec.spec.hardway.coredns_image;
    let labels = json!({"k8s-app": "kube-dns"});
    let account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "coredns", "namespace": "kube-system"},
    });
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:coredns"},
        "rules": [
            {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:coredns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
        "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
    });
    let config = CorefileConfigMap {
        api_version: "v1",
        kind: "ConfigMap",
        metadata: json!({"name": "coredns", "namespace": "kube-system"}),
        data: BTreeMap::from([("Corefile", LitString(corefile(domain)))]),
    };
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "coredns",
                    "priorityClassName": "system-cluster-critical",
                    // The node's resolv.conf for names outside the cluster (ClusterFirst
                    // would send CoreDNS's own upstream queries back to itself: a loop
                    // its `loop` plugin kills).
                    "dnsPolicy": "Default",
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": labels},
                    }],
                    "containers": [{
                        "name": "coredns",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["-conf", "/etc/coredns/Corefile"],
                        "ports": [
                            {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                            {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                        ],
                        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                            "readOnlyRootFilesystem": true,
                        },
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": true}],
                    }],
                    "volumes": [{
                        "name": "config",
                        "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]},
                    }],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "selector": labels,
            "clusterIP": dns_ip,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        },
    });
    manifests(
        &format!("Managed by kforge: CoreDNS, the cluster DNS at {dns_ip}."),
        &[yaml(&account), yaml(&role), yaml(&binding), yaml(&config), yaml(&deployment), yaml(&service)],
    )
}
