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

const LABELS_FILE: &str = "/etc/kforge/node-labels";
/// The list as last applied: what the next change compares with (labels it dropped are
/// taken off their Node).
const LABELS_APPLIED: &str = "/var/lib/kforge/node-labels.applied";

/// Each Node's labels as the cluster file gives them, set through the API: the role
/// labels (`kubectl get nodes` shows ROLES, `<none>` without them; a kubelet may not
/// set node-role.kubernetes.io on itself under NodeRestriction), and each node's own
/// `labels` — the kubelet's --node-labels reach a Node only when it registers, so a
/// label changed on a running node would never arrive. The list is a file: a node
/// joining or leaving, or a label changed, changes this phase and the list is applied
/// again; a label the file no longer gives is taken off (a Node already gone is fine).
/// A Node that has not registered after 60 s (its kubelet failed, or its host did) does
/// not stop the others: its lines stay out of the applied list, so the next apply labels it.
fn role_labels(model: &Model<'_>, kubectl: &str) -> Option<(PlannedFile, PlannedCommand)> {
    use crate::spec::Role;
    let mut lines = String::new();
    for (_, node) in model.nodes().filter(|(_, n)| n.role.has(Role::Worker)) {
        if node.role.has(Role::Controller) {
            lines.push_str(&format!("{} node-role.kubernetes.io/control-plane=\n", node.name));
        }
        lines.push_str(&format!("{} node-role.kubernetes.io/worker=\n", node.name));
        for (k, v) in &node.labels {
            lines.push_str(&format!("{} {k}={v}\n", node.name));
        }
    }
    if lines.is_empty() {
        return None;
    }
    let file = PlannedFile::new(LABELS_FILE, 0o644, lines).about(
        "Each node with a kubelet and the labels kforge gives its Node (one per line): its roles and the file's labels.",
        "kforge's addons step: kubectl label node NODE LABEL (a label dropped from this list is removed)",
        vec![
            ("roles".into(), "node-role.kubernetes.io/control-plane on controllers, /worker on workers: the ROLES column of kubectl get nodes".into()),
            ("labels".into(), "spec.nodes[].labels: set through the API, since the kubelet's --node-labels apply only when a Node registers".into()),
        ],
    );
    let command = PlannedCommand {
        description: "label each node with its roles and the file's labels (and take off those the file dropped)"
            .into(),
        run: format!(
            "mkdir -p /var/lib/kforge && : > {LABELS_APPLIED}.new && missing=' ' && \
             while read -r n label; do case \"$missing\" in *\" $n \"*) continue ;; esac; \
             up=; for _ in $(seq 30); do {kubectl} get node \"$n\" >/dev/null 2>&1 && {{ up=1; break; }}; sleep 2; done; \
             if [ -z \"$up\" ]; then missing=\"$missing$n \"; echo \"kforge: no Node $n after 60 s: its labels wait for the next apply\" >&2; continue; fi; \
             {kubectl} label node \"$n\" \"$label\" --overwrite >/dev/null || exit 1; echo \"$n $label\" >> {LABELS_APPLIED}.new; done < {LABELS_FILE} && \
             {{ [ ! -f {LABELS_APPLIED} ] || cat {LABELS_APPLIED}; }} | while read -r n label; do k=${{label%%=*}}; awk -v n=\"$n\" -v k=\"$k\" '$1 == n && index($2, k \"=\") == 1 {{ f = 1 }} END {{ exit !f }}' {LABELS_FILE} || {kubectl} label node \"$n\" \"$k-\" >/dev/null 2>&1 || true; done && \
             mv {LABELS_APPLIED}.new {LABELS_APPLIED}"
        ),
        unless: Some(format!("cmp -s {LABELS_FILE} {LABELS_APPLIED}")),
        recheck: None,
    };
    Some((file, command))
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
