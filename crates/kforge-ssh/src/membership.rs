//! The hard way's etcd membership against the plan: a controller added to the file
//! joins the running etcd as a learner, one at a time, and votes once it has caught up;
//! a departed controller's member is removed before its host is wiped, and a stale
//! member (a machine gone, never removed; one added by hand) is removed by apply —
//! each removal only when the members left keep quorum. The judging is pure (`joins`,
//! `join_env`, `quorum_without`, `stale`), fed by one shell call (`read`).

use serde::Deserialize;

use crate::ssh::{Host, shell_quote};

const ETCD_SH: &str = include_str!("sh/etcd.sh");

/// One member as etcd lists it, with whether its client URL answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty for a member added but never started.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Where it serves clients (the API servers' `--etcd-servers`); empty until started.
    pub client_urls: Vec<String>,
    pub learner: bool,
    pub healthy: bool,
}

impl Member {
    /// As an operator recognises it: its name, or what an unstarted member has.
    pub fn describe(&self) -> String {
        if self.name.is_empty() {
            format!("an unstarted member {:x} at {}", self.id, self.peer_urls.join(","))
        } else {
            format!("{} ({:x})", self.name, self.id)
        }
    }
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    members: Vec<Listed>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(default, rename = "clientURLs")]
    client_urls: Vec<String>,
    #[serde(default)]
    is_learner: bool,
}

#[derive(Deserialize)]
struct Health {
    endpoint: String,
    health: bool,
}

/// `kf_membership`'s answer parsed; `None` when etcd gave no member list (not running,
/// no quorum).
pub fn parse(out: &str) -> Option<Vec<Member>> {
    let list: List = serde_json::from_str(out.lines().find_map(|l| l.strip_prefix("list "))?.trim()).ok()?;
    let health: Vec<Health> = out
        .lines()
        .find_map(|l| l.strip_prefix("health "))
        .and_then(|h| serde_json::from_str(h.trim()).ok())
        .unwrap_or_default();
    Some(
        list.members
            .into_iter()
            .map(|m| Member {
                healthy: m.client_urls.iter().any(|u| health.iter().any(|h| &h.endpoint == u && h.health)),
                id: m.id,
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                learner: m.is_learner,
            })
            .collect(),
    )
}

/// Whether removing `ids` leaves a voting majority healthy; the refusal says who is down.
pub fn quorum_without(members: &[Member], ids: &[u64]) -> Result<(), String> {
    let voters: Vec<&Member> = members.iter().filter(|m| !m.learner && !ids.contains(&m.id)).collect();
    let healthy = voters.iter().filter(|m| m.healthy).count();
    let needed = voters.len() / 2 + 1;
    if voters.is_empty() || healthy < needed {
        let down: Vec<String> = voters.iter().filter(|m| !m.healthy).map(|m| m.describe()).collect();
        return Err(format!(
            "removing it would leave {} voting member{} of which {healthy} answer{} ({needed} needed for quorum; down: {})",
            voters.len(),
            if voters.len() == 1 { "" } else { "s" },
            if healthy == 1 { "s" } else { "" },
            if down.is_empty() { "none".to_string() } else { down.join(", ") }
        ));
    }
    Ok(())
}

/// Whether member `id` may be removed: when the members left keep quorum, yes; when
/// they would not, only when the operator forced it — `Ok(Some(warning))`, said loudly,
/// since etcd then stops serving until enough of them answer again.
pub fn may_remove(members: &[Member], id: u64, force: bool) -> Result<Option<String>, String> {
    match quorum_without(members, &[id]) {
        Ok(()) => Ok(None),
        Err(why) if force => Ok(Some(format!(
            "FORCED (--force-quorum-loss): {why}; etcd serves nothing until enough of them answer again"
        ))),
        Err(why) => Err(why),
    }
}

/// Members the plan does not know: neither a planned name nor a planned peer URL.
pub fn stale<'a>(members: &'a [Member], planned: &[(String, String)]) -> Vec<&'a Member> {
    members
        .iter()
        .filter(|m| !planned.iter().any(|(name, peer)| &m.name == name || m.peer_urls.iter().any(|u| u == peer)))
        .collect()
}

/// The membership as the controller `host` sees it.
pub fn read(host: &Host, env_file: &str) -> Result<Option<Vec<Member>>, String> {
    let script = format!("{ETCD_SH}\nKF_ETCD_ENV={}\nkf_membership\n", shell_quote(env_file));
    let out = host.run_script("etcd membership", &script).map_err(|e| e.to_string())?;
    Ok(parse(&out))
}

/// Remove `m`, after checking quorum against a fresh read. etcd itself refuses a
/// removal until every member left has been connected to the leader for a few seconds
/// ("unhealthy cluster", its strict reconfiguration check): right after a member came
/// back, kforge asks again for up to 30 s rather than fail.
///
/// Once removed, the member's etcd stops itself when it learns so; until it has, every
/// API server still holds a connection to it, and a request sent on that connection as
/// it closes fails ("rpc error: code = Unavailable desc = error reading from server:
/// EOF": seen on the revocation kforge applies next). So the removal returns only once
/// the member's client URLs accept no connection (up to 30 s; past that its host's
/// reset stops it, and the step says so).
pub fn remove(host: &Host, env_file: &str, m: &Member) -> Result<Option<String>, String> {
    let urls: Vec<String> = m.client_urls.iter().map(|u| shell_quote(u)).collect();
    let script =
        format!("{ETCD_SH}\nKF_ETCD_ENV={}\nkf_member_remove {:x} {}\n", shell_quote(env_file), m.id, urls.join(" "));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = read(host, env_file)?.ok_or("etcd gave no member list (no quorum?)")?;
        if !now.iter().any(|x| x.id == m.id) {
            return Ok(None);
        }
        quorum_without(&now, &[m.id]).map_err(|why| format!("etcd member {} not removed: {why}", m.describe()))?;
        match host.run_script("etcd member remove", &script) {
            Ok(out) if out.lines().any(|l| l.starts_with("still serving")) => {
                return Ok(Some(format!(
                    "etcd member {} was removed but its etcd still served 30 s later (at {}); its host's reset stops it",
                    m.describe(),
                    m.client_urls.join(",")
                )));
            }
            Ok(_) => return Ok(None),
            Err(e) if e.to_string().contains("unhealthy cluster") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Where a planned controller stands in joining the running etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joining {
    /// Not a member: probe its peer URL, add it as a learner, start it, promote it.
    Add,
    /// Added as a learner by an earlier apply that stopped (started or not): start it
    /// (with the member list it joins, when it never started), promote it.
    Resume { id: u64 },
}

/// A planned controller that is not (yet) a voting member of the running etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub node: String,
    pub peer_url: String,
    pub joining: Joining,
}

/// The planned controllers that are not voting members, in the order they join: a
/// learner an earlier apply left first (etcd takes one learner at a time), then the
/// rest in the file's order.
pub fn joins(members: &[Member], planned: &[(String, String)]) -> Vec<Join> {
    let mut out: Vec<Join> = Vec::new();
    for (name, peer) in planned {
        let found = members.iter().find(|m| &m.name == name || m.peer_urls.contains(peer));
        let joining = match found {
            None => Joining::Add,
            Some(m) if m.learner => Joining::Resume { id: m.id },
            Some(_) => continue,
        };
        out.push(Join { node: name.clone(), peer_url: peer.clone(), joining });
    }
    out.sort_by_key(|j| j.joining == Joining::Add);
    out
}

/// What a joining member starts with (`/etc/etcd/join.env`): every member etcd lists,
/// under the name the joiner will publish, and `existing`. etcd checks the list
/// against the running cluster's, so it must be exactly that list: a member added
/// later, or one missing, stops the joiner at start.
pub fn join_env(members: &[Member], name: &str, peer_url: &str) -> Result<String, String> {
    let mut cluster = Vec::new();
    for m in members {
        let mine = m.name == name || m.peer_urls.iter().any(|u| u == peer_url);
        let member_name = match (mine, m.name.is_empty()) {
            (true, _) => name,
            (false, false) => m.name.as_str(),
            (false, true) => {
                return Err(format!(
                    "{} is in the way: etcd lists it, so {name} would have to name it at start, and it has no name; kforge apply removes it once it is not in the file (or etcdctl member remove {:x})",
                    m.describe(),
                    m.id
                ));
            }
        };
        cluster.extend(m.peer_urls.iter().map(|u| format!("{member_name}={u}")));
    }
    if !members.iter().any(|m| m.name == name || m.peer_urls.iter().any(|u| u == peer_url)) {
        return Err(format!("{name} is not a member of the running etcd: it cannot join before it is added"));
    }
    Ok(format!("ETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_CLUSTER_STATE=existing\n", cluster.join(",")))
}

/// Add `name` as a learner, from the member `host` runs. etcd refuses a member add
/// ("unhealthy cluster") unless its leader has been connected, for the last 5 s, to
/// enough voters to keep quorum with the new member counted (etcd 3.6's
/// `isConnectedToQuorumAfterAddingNewMemberSince`) — so right after the previous
/// joiner's promotion it may refuse; kforge asks again every second for up to `timeout`.
pub fn add_learner(
    host: &Host,
    env_file: &str,
    name: &str,
    peer_url: &str,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let script = format!(
        "{ETCD_SH}\nKF_ETCD_ENV={}\nkf_member_add {} {} >/dev/null\n",
        shell_quote(env_file),
        shell_quote(name),
        shell_quote(peer_url)
    );
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let said = match host.run_script("etcd member add --learner", &script) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if !said.contains("etcdserver: unhealthy cluster") || std::time::Instant::now() >= deadline {
            return Err(said);
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The member list a joiner starts with (`join_env`), written on the joiner `host`.
pub fn write_join_env(host: &Host, path: &str, env: &str) -> Result<(), String> {
    let script = format!("{ETCD_SH}\nkf_join_env_write {} <<'KF_JOIN_ENV'\n{env}KF_JOIN_ENV\n", shell_quote(path));
    host.run_script("write the member list it joins", &script).map(|_| ()).map_err(|e| e.to_string())
}

/// Whether `host` (a running member) reaches `ip`'s etcd peer port over the mesh.
pub fn probe_peer(host: &Host, ip: &str) -> Result<String, String> {
    let script = format!("{ETCD_SH}\nkf_probe_peer {} 2380\n", shell_quote(ip));
    host.run_script("probe the joining member's peer port", &script)
        .map(|o| o.trim().to_string())
        .map_err(|e| e.to_string())
}

/// Promote the learner `id` once it has caught up: etcd refuses while the learner's log
/// is behind the leader's, and kforge asks again every 2 s for up to `timeout`.
pub fn promote(host: &Host, env_file: &str, id: u64, timeout: std::time::Duration) -> Result<(), String> {
    let script = format!("{ETCD_SH}\nKF_ETCD_ENV={}\nkf_member_promote {id:x}\n", shell_quote(env_file));
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = read(host, env_file)?.ok_or("etcd gave no member list (no quorum?)")?;
        match now.iter().find(|m| m.id == id) {
            None => return Err(format!("member {id:x} is no longer in etcd's list")),
            Some(m) if !m.learner => return Ok(()),
            Some(_) => {}
        }
        let said = match host.run_script("etcd member promote", &script) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if !said.contains("in sync with leader") || std::time::Instant::now() >= deadline {
            return Err(format!("etcd did not promote learner {id:x}: {said}"));
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"list {"header":{"cluster_id":1},"members":[{"ID":11,"name":"lab-1","peerURLs":["https://10.4.0.1:2380"],"clientURLs":["https://10.4.0.1:2379"]},{"ID":12,"name":"lab-2","peerURLs":["https://10.4.0.2:2380"],"clientURLs":["https://10.4.0.2:2379"]},{"ID":13,"name":"lab-3","peerURLs":["https://10.4.0.3:2380"],"clientURLs":["https://10.4.0.3:2379"]},{"ID":255,"peerURLs":["https://10.4.0.99:2380"]}]}
health [{"endpoint":"https://10.4.0.1:2379","health":true},{"endpoint":"https://10.4.0.3:2379","health":true},{"endpoint":"https://10.4.0.2:2379","health":false,"error":"context deadline exceeded"}]"#;

    #[test]
    fn a_removal_that_would_lose_quorum_names_who_is_down() {
        let members = parse(ANSWER).unwrap();
        assert_eq!(members.len(), 4);
        assert_eq!(members.iter().filter(|m| m.healthy).count(), 2);
        // 4 voters (one never started), lab-2 down: without lab-3, 3 voters and 1 healthy.
        let err = quorum_without(&members, &[13]).unwrap_err();
        assert!(err.contains("3 voting members of which 1 answers (2 needed"), "{err}");
        assert!(err.contains("lab-2 (c)") && err.contains("an unstarted member ff at https://10.4.0.99:2380"), "{err}");
        // The unstarted member's removal keeps quorum: lab-1 and lab-3 of 3.
        assert_eq!(quorum_without(&members, &[255]), Ok(()));
        // Forced, lab-3 goes anyway, and the operator is told what that costs.
        assert_eq!(may_remove(&members, 255, false), Ok(None));
        assert!(may_remove(&members, 13, false).unwrap_err().contains("(2 needed for quorum; down: lab-2 (c)"));
        let warned = may_remove(&members, 13, true).unwrap().unwrap();
        assert!(
            warned.starts_with("FORCED (--force-quorum-loss): removing it would leave 3 voting members"),
            "{warned}"
        );
        assert!(warned.contains("etcd serves nothing until enough of them answer again"), "{warned}");
    }

    #[test]
    fn stale_members_are_those_the_plan_does_not_name() {
        let members = parse(ANSWER).unwrap();
        let planned: Vec<(String, String)> =
            ["1", "2", "3"].iter().map(|i| (format!("lab-{i}"), format!("https://10.4.0.{i}:2380"))).collect();
        let stale: Vec<u64> = stale(&members, &planned).iter().map(|m| m.id).collect();
        assert_eq!(stale, [255]);
        assert_eq!(stale_of(&members, &planned[..2]), [13, 255]);
        assert!(parse("list \nhealth ").is_none(), "no member list: etcd not answering");
    }

    fn stale_of(members: &[Member], planned: &[(String, String)]) -> Vec<u64> {
        stale(members, planned).iter().map(|m| m.id).collect()
    }

    #[test]
    fn controllers_join_one_at_a_time_a_leftover_learner_first() {
        let m = |id: u64, name: &str, ip: u8, learner: bool| Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://10.4.0.{ip}:2380")],
            client_urls: vec![format!("https://10.4.0.{ip}:2379")],
            learner,
            healthy: true,
        };
        let planned: Vec<(String, String)> =
            [1, 2, 3].iter().map(|i| (format!("lab-{i}"), format!("https://10.4.0.{i}:2380"))).collect();
        // lab-3 was added as a learner by an apply that stopped before starting it.
        let members = [m(11, "lab-1", 1, false), m(13, "", 3, true)];
        let joins = joins(&members, &planned);
        assert_eq!(joins.iter().map(|j| j.node.as_str()).collect::<Vec<_>>(), ["lab-3", "lab-2"]);
        assert_eq!(joins[0].joining, Joining::Resume { id: 13 });
        assert_eq!(joins[1].joining, Joining::Add);
        // lab-3 starts with exactly the list etcd has, under the name it will publish.
        assert_eq!(
            join_env(&members, "lab-3", "https://10.4.0.3:2380").unwrap(),
            "ETCD_INITIAL_CLUSTER=lab-1=https://10.4.0.1:2380,lab-3=https://10.4.0.3:2380\nETCD_INITIAL_CLUSTER_STATE=existing\n"
        );
        // lab-2 cannot start while an unnamed member it would have to list is there.
        let err =
            join_env(&[members[0].clone(), members[1].clone(), m(12, "", 2, true)], "lab-2", "https://10.4.0.2:2380")
                .unwrap_err();
        assert!(err.contains("an unstarted member d at https://10.4.0.3:2380 is in the way"), "{err}");
        assert!(join_env(&members[..1], "lab-2", "https://10.4.0.2:2380").unwrap_err().contains("not a member"));
        // Every planned controller a voter: nothing joins.
        let all = [m(11, "lab-1", 1, false), m(12, "lab-2", 2, false), m(13, "lab-3", 3, false)];
        assert!(super::joins(&all, &planned).is_empty());
    }

    /// `kf_member_remove`'s wait, against real sockets on loopback (etcdctl's own part
    /// is the lab's: a controller leaves a running etcd there).
    #[test]
    fn a_removal_returns_once_the_removed_members_client_url_takes_no_connection() {
        let run = |url: &str| {
            let script = format!("{ETCD_SH}\netcdctl() {{ :; }}\nKF_ETCD_ENV=/dev/null\nkf_member_remove ff {url}\n");
            let started = std::time::Instant::now();
            let out = std::process::Command::new("bash").arg("-c").arg(script).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            (started.elapsed(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        // Still listening for 1.5 s after the removal (etcd stopping itself): waited out.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            drop(listener);
        });
        let (took, said) = run(&url);
        closer.join().unwrap();
        assert!(took >= std::time::Duration::from_millis(1400), "returned while the member still served: {took:?}");
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
        assert!(!said.contains("still serving"), "{said}");
        // Nothing listens (stopped already): no wait.
        let (took, said) = run(&url);
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
        assert!(said.is_empty(), "{said}");
    }
}
