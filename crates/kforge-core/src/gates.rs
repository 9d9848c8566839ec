//! The health gates apply waits on after a phase changed a host, one list for both
//! distributions. A gate is a read-only shell test, retried every 2 s until it passes
//! or its time is up (then the host fails and a stage taken in turns stops there):
//!
//! | phase         | hard way                                         | K3s                          |
//! |---------------|--------------------------------------------------|------------------------------|
//! | datastore     | this etcd member healthy, a leader, at the release | (embedded in the server)   |
//! | control-plane | this API server `/readyz` ok, at the release     | this server's `/readyz` ok   |
//! | controllers   | controller-manager and scheduler serving, their leader leases renewed | —       |
//! | workers       | the Node Ready, its kubelet at the release (asked on a control-plane host) | same |
//! | addons        | CoreDNS available                                | —                            |

use crate::plan::Gate;

/// kubectl as the cluster admin on a control-plane host (the hard way's; K3s's is
/// `k3s kubectl`): gates that ask the API use the plan's `kubectl`.
fn gate(description: impl Into<String>, test: String, on_api_host: bool, timeout_secs: u64) -> Gate {
    Gate { description: description.into(), test, on_api_host, timeout_secs }
}

/// The etcd member on this host answers as healthy and the cluster has a leader: the
/// next member may restart without losing quorum. With the release the file delivers
/// known (`release`, from etcd's artifact name), the member must report it too, as an
/// API server its /version.
pub fn etcd_member(env_file: &str, release: Option<&str>) -> Gate {
    let mut description = "this etcd member healthy, with a leader".to_string();
    let mut test = format!(
        "set -a; . {env_file}; set +a; export ETCDCTL_ENDPOINTS=https://127.0.0.1:2379; \
         etcdctl endpoint health >/dev/null 2>&1 && s=$(etcdctl endpoint status -w json) && \
         echo \"$s\" | grep -q '\"leader\":[1-9]'"
    );
    if let Some(v) = release {
        description += &format!(" at {v}");
        test += &format!(" && echo \"$s\" | grep -q '\"version\":\"{v}\"'");
    }
    gate(description, test, false, 120)
}

/// This host's API server is ready, and it is the release the file asks for.
pub fn api_server(kubectl: &str, version: &str) -> Gate {
    gate(
        format!("this API server ready (/readyz) at {version}"),
        format!(
            "[ \"$({kubectl} get --raw=/readyz 2>/dev/null)\" = ok ] && {kubectl} get --raw=/version 2>/dev/null | grep -q '\"gitVersion\": \"{version}\"'"
        ),
        false,
        180,
    )
}

/// controller-manager and scheduler on this host serve (their secure ports accept),
/// and both leader leases were renewed within 30 s (some controller leads each).
pub fn controllers(kubectl: &str) -> Gate {
    let lease = |name: &str| {
        format!(
            "t=$({kubectl} -n kube-system get lease {name} -o jsonpath='{{.spec.renewTime}}' 2>/dev/null) && [ -n \"$t\" ] && [ $(( $(date +%s) - $(date -d \"$t\" +%s) )) -lt 30 ]"
        )
    };
    gate(
        "controller-manager and scheduler serving, their leases renewed",
        format!(
            "timeout 2 bash -c '</dev/tcp/127.0.0.1/10257' && timeout 2 bash -c '</dev/tcp/127.0.0.1/10259' && {} && {}",
            lease("kube-controller-manager"),
            lease("kube-scheduler")
        ),
        false,
        120,
    )
}

/// The node is Ready and its kubelet reports `version` (asked on a control-plane host:
/// a worker has no admin credentials).
pub fn node_ready(kubectl: &str, node: &str, version: &str) -> Gate {
    gate(
        format!("{node} Ready with its kubelet at {version}"),
        format!(
            "[ \"$({kubectl} get node {node} -o jsonpath='{{.status.nodeInfo.kubeletVersion}} {{.status.conditions[?(@.type==\"Ready\")].status}}' 2>/dev/null)\" = '{version} True' ]"
        ),
        true,
        180,
    )
}

/// CoreDNS has an available replica: apply ends with the cluster's DNS answering, not
/// half a minute before it does.
pub fn coredns(kubectl: &str) -> Gate {
    gate(
        "CoreDNS available",
        format!(
            "[ \"$({kubectl} -n kube-system get deployment coredns -o jsonpath='{{.status.availableReplicas}}' 2>/dev/null)\" -ge 1 ] 2>/dev/null"
        ),
        false,
        180,
    )
}

/// A K3s server answers `/readyz` (its embedded API server; the datastore is inside).
pub fn k3s_server(kubectl: &str) -> Gate {
    gate(
        "this K3s server ready (/readyz)",
        format!("[ \"$({kubectl} get --raw=/readyz 2>/dev/null)\" = ok ]"),
        false,
        300,
    )
}
