//! The repository a cluster follows: its URL and the forge's pinned SSH host keys.
//!
//! Parsed here once, for validation (line:column errors) and for the manifests.

/// How the engine reaches the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `ssh://[user@]host[:port]/path`: read with the cluster's deploy key, the host
    /// checked against the pinned keys.
    Ssh { port: u16 },
    /// `https://host/path`: a public repository (no credentials).
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub transport: Transport,
    pub host: String,
}

impl Repository {
    /// Parse a repository URL; the error says how to write it.
    pub fn parse(url: &str) -> Result<Repository, (String, String)> {
        if let Some(rest) = url.strip_prefix("ssh://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = split_port(host_port)
                .map_err(|why| (why, "e.g. ssh://git@forge.example.com:2222/ops/cluster.git".into()))?;
            if path.is_empty() {
                return Err((
                    format!("`{url}` names no repository path"),
                    "e.g. ssh://git@forge.example.com/ops/cluster.git".into(),
                ));
            }
            return Ok(Repository { transport: Transport::Ssh { port }, host });
        }
        if let Some(rest) = url.strip_prefix("https://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.contains('@') {
                return Err((
                    "credentials do not belong in the repository URL".into(),
                    "use an ssh:// URL: the cluster reads it with its own deploy key".into(),
                ));
            }
            let (host, _) =
                split_port(authority).map_err(|why| (why, "e.g. https://forge.example.com/ops/cluster.git".into()))?;
            if path.is_empty() {
                return Err((
                    format!("`{url}` names no repository path"),
                    "e.g. https://forge.example.com/ops/cluster.git".into(),
                ));
            }
            return Ok(Repository { transport: Transport::Https, host });
        }
        if url.starts_with("http://") || url.starts_with("git://") {
            return Err((
                format!("`{url}` is fetched in plaintext, so anyone on the path could change what the cluster runs"),
                "use ssh:// (with the deploy key) or https://".into(),
            ));
        }
        // scp-like `git@host:org/repo.git`, as forges print it.
        if let Some((user_host, path)) = url.split_once(':')
            && !user_host.contains('/')
            && !path.starts_with("//")
        {
            return Err((
                format!("`{url}` is scp-like syntax, which Flux does not accept"),
                format!("write ssh://{user_host}/{}", path.trim_start_matches('/')),
            ));
        }
        Err((
            format!("`{url}` is not an ssh:// or https:// URL"),
            "e.g. ssh://git@forge.example.com/ops/cluster.git".into(),
        ))
    }

    /// The host name as `known_hosts` writes it for this port.
    pub fn known_hosts_name(&self) -> String {
        match self.transport {
            Transport::Ssh { port } if port != 22 => format!("[{}]:{port}", self.host),
            _ => self.host.clone(),
        }
    }
}

fn split_port(host_port: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or_else(|| format!("`{host_port}`: unclosed `[`"))?;
        (h, rest.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{host_port}` names no host"));
    }
    let port = match port {
        None => 22,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("`{p}` is not a port"))?,
    };
    Ok((host.to_string(), port))
}

/// Key types a `known_hosts` line may carry (what OpenSSH and Flux's Go SSH accept).
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One pinned host key: `HOSTS KEYTYPE BASE64 [comment]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHost {
    pub hosts: Vec<String>,
    pub key_type: String,
}

impl KnownHost {
    pub fn parse(line: &str) -> Result<KnownHost, (String, String)> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let help = "a known_hosts line: `forge.example.com ssh-ed25519 AAAA…` (kforge gitops host-key HOST prints one)";
        if fields.first().is_some_and(|f| f.starts_with('@')) {
            return Err(("markers (@cert-authority, @revoked) are not supported here".into(), help.into()));
        }
        if fields.first().is_some_and(|f| f.starts_with("|1|")) {
            return Err((
                "hashed host names cannot be checked against the repository".into(),
                "write the host name in clear (ssh-keyscan without -H)".into(),
            ));
        }
        let [hosts, key_type, key, ..] = fields[..] else {
            return Err(("not a known_hosts line".into(), help.into()));
        };
        if !KEY_TYPES.contains(&key_type) {
            return Err((
                format!("`{key_type}` is not an SSH host key type"),
                format!("one of {}", KEY_TYPES.join(", ")),
            ));
        }
        use base64::Engine;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| ("the key is not base64".to_string(), help.to_string()))?;
        // The blob starts with its own type name (uint32 length + name): a key pasted
        // under the wrong type is caught here rather than as a handshake failure.
        let named = blob.get(4..).and_then(|b| {
            let n = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
            b.get(..n)
        });
        match named {
            Some(n) if n == key_type.as_bytes() => {}
            Some(n) if KEY_TYPES.iter().any(|t| t.as_bytes() == n) => {
                let actual = String::from_utf8_lossy(n);
                return Err((
                    format!("the key is an `{actual}` key, written as `{key_type}`"),
                    format!("write `{hosts} {actual} {key}`"),
                ));
            }
            _ => return Err((format!("the key's data is not an SSH `{key_type}` key"), help.into())),
        }
        Ok(KnownHost { hosts: hosts.split(',').map(str::to_string).collect(), key_type: key_type.into() })
    }

    /// Whether this line is for the repository's host (and port).
    pub fn covers(&self, repo: &Repository) -> bool {
        let name = repo.known_hosts_name();
        self.hosts.contains(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn repository_urls() {
        let r = Repository::parse("ssh://git@forge.example.com:2222/ops/cluster.git").unwrap();
        assert_eq!(r.transport, Transport::Ssh { port: 2222 });
        assert_eq!(r.known_hosts_name(), "[forge.example.com]:2222");
        let r = Repository::parse("ssh://git@forge.example.com/ops/cluster.git").unwrap();
        assert_eq!(r.known_hosts_name(), "forge.example.com");
        assert_eq!(Repository::parse("https://forge.example.com/ops/c.git").unwrap().transport, Transport::Https);
        let (why, fix) = Repository::parse("git@github.com:ops/cluster.git").unwrap_err();
        assert!(why.contains("scp-like"), "{why}");
        assert_eq!(fix, "write ssh://git@github.com/ops/cluster.git");
        assert!(Repository::parse("http://forge/x.git").unwrap_err().0.contains("plaintext"));
        assert!(Repository::parse("https://user:pw@forge/x.git").unwrap_err().0.contains("credentials"));
        assert!(Repository::parse("ssh://git@forge:0/x.git").unwrap_err().0.contains("not a port"));
        assert!(Repository::parse("ssh://git@forge").unwrap_err().0.contains("no repository path"));
    }

    #[test]
    fn known_hosts_lines() {
        let repo = Repository::parse("ssh://git@forge.example.com:2222/x.git").unwrap();
        let k = KnownHost::parse(&format!("[forge.example.com]:2222,other ssh-ed25519 {ED25519} comment")).unwrap();
        assert!(k.covers(&repo));
        let plain = KnownHost::parse(&format!("forge.example.com ssh-ed25519 {ED25519}")).unwrap();
        assert!(!plain.covers(&repo), "port 2222 needs [host]:2222");
        let (why, fix) = KnownHost::parse(&format!("forge ecdsa-sha2-nistp256 {ED25519}")).unwrap_err();
        assert_eq!(why, "the key is an `ssh-ed25519` key, written as `ecdsa-sha2-nistp256`");
        assert_eq!(fix, format!("write `forge ssh-ed25519 {ED25519}`"));
        assert!(KnownHost::parse("forge ssh-ed25519 AAAA").unwrap_err().0.contains("not an SSH `ssh-ed25519` key"));
        assert!(KnownHost::parse("forge ssh-ed25519 !!!").unwrap_err().0.contains("base64"));
        assert!(KnownHost::parse("forge ssh-dss AAAA").unwrap_err().0.contains("not an SSH host key type"));
        assert!(KnownHost::parse(&format!("|1|abc|def ssh-ed25519 {ED25519}")).unwrap_err().0.contains("hashed"));
        assert!(KnownHost::parse("forge").unwrap_err().0.contains("not a known_hosts line"));
    }
}
