//! The health gates apply waits on after a phase changed a host, one list for both
//! distributions. A gate is a read-only shell test, retried every 2 s until it passes
//! or its time is up (then the host fails and a stage taken in turns stops there):
//!
//! | phase         | hard way                                         | K3s                          |
//! |---------------|--------------------------------------------------|------------------------------|
//! | datastore     | this etcd member healthy, a leader, at the release | (embedded in the server)   |
//! | control-plane | this API server `/readyz` ok, at the release     | this server's `/readyz` ok   |
//! | controllers   | controller-manager and scheduler serving, each lease renewed by a live leader of 3 s or more | — |
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

/// controller-manager and scheduler on this host serve (their secure ports accept), and
/// each leader lease belongs to a live leader that has led for 3 s or more: the lease
/// is renewed during a 2.5 s look (a leader renews every 2 s) and its holder acquired it
/// at least 3 s before that renewal (time to start its controllers).
///
/// A lease renewed "recently" is not enough: kube-controller-manager 1.36 and 1.37 keep
/// their lease when they stop (releasing it on exit is the alpha feature gate
/// `ControllerManagerReleaseLeaderElectionLockOnExit`, off by default), so after a
/// restart of the leading one the lease still names the dead process for up to its 15 s
/// duration and no controller runs. A drain started in that gap evicts a pod whose
/// endpoints nobody removes: requests reach it after it stopped serving. Both times in
/// a lease are the holder's own clock, so no clock is compared across hosts.
pub fn controllers(kubectl: &str) -> Gate {
    let lease = |name: &str| {
        format!("{kubectl} -n kube-system get lease {name} -o jsonpath='{{.spec.acquireTime}} {{.spec.renewTime}}'")
    };
    gate(
        "controller-manager and scheduler serving, each lease renewed by a leader of 3 s or more",
        format!(
            "led() {{ set -- $1 $2; [ $# = 3 ] && [ \"$1\" != \"$3\" ] && [ $(( $(date -d \"$3\" +%s) - $(date -d \"$2\" +%s) )) -ge 3 ]; }}; \
             timeout 2 bash -c '</dev/tcp/127.0.0.1/10257' && timeout 2 bash -c '</dev/tcp/127.0.0.1/10259' && \
             c=$({cm}) && s=$({sched}) && sleep 2.5 && \
             led \"${{c#* }}\" \"$({cm})\" && led \"${{s#* }}\" \"$({sched})\"",
            cm = lease("kube-controller-manager"),
            sched = lease("kube-scheduler")
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
