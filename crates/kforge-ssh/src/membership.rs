//! The hard way's etcd membership against the plan: a departed controller's member is
//! removed before its host is wiped, and a stale member (a machine gone, never removed;
//! one added by hand) is removed by apply — each only when the members left keep
//! quorum. The judging is pure (`judge`, `quorum_without`), fed by one shell call.

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
pub fn remove(host: &Host, env_file: &str, m: &Member) -> Result<(), String> {
    let script = format!("{ETCD_SH}\nKF_ETCD_ENV={}\nkf_member_remove {:x}\n", shell_quote(env_file), m.id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = read(host, env_file)?.ok_or("etcd gave no member list (no quorum?)")?;
        if !now.iter().any(|x| x.id == m.id) {
            return Ok(());
        }
        quorum_without(&now, &[m.id]).map_err(|why| format!("etcd member {} not removed: {why}", m.describe()))?;
        match host.run_script("etcd member remove", &script) {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("unhealthy cluster") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e.to_string()),
        }
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
}
