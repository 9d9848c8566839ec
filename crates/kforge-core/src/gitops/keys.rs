//! The cluster's GitOps keys, created once in the secrets bundle: an ed25519 deploy
//! key (the engine reads the repository with it; its public half is the one thing the
//! operator adds to the forge) and an age identity for SOPS (people encrypt secrets in
//! Git to its recipient; only the cluster can decrypt them).

use serde::{Deserialize, Serialize};
use ssh_key::LineEnding;
use ssh_key::private::{Ed25519Keypair, PrivateKey};
use zeroize::Zeroize;

use crate::random::random_bytes;

/// Both keys are checked when the bundle is read (`try_from`): a hand-edited bundle
/// fails to load with a clear error instead of failing at apply.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawKeys")]
pub struct GitOpsKeys {
    /// OpenSSH private key (ed25519), as Flux's `identity`.
    pub deploy_key: String,
    /// `AGE-SECRET-KEY-1…`, as kustomize-controller's `*.agekey`.
    pub sops_age_key: String,
}

impl std::fmt::Debug for GitOpsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GitOpsKeys { .. }")
    }
}

impl GitOpsKeys {
    pub fn generate(cluster: &str) -> GitOpsKeys {
        let mut seed = random_bytes::<32>();
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        seed.zeroize();
        key.set_comment(deploy_key_comment(cluster));
        let deploy_key = key.to_openssh(LineEnding::LF).expect("an ed25519 key encodes").to_string();
        let sops_age_key = crate::random::age_identity();
        GitOpsKeys { deploy_key, sops_age_key }
    }

    /// `ssh-ed25519 AAAA… kforge-CLUSTER-deploy`: what the forge is given.
    pub fn deploy_key_public(&self) -> String {
        let key = PrivateKey::from_openssh(&self.deploy_key).expect("the bundle holds a valid deploy key");
        key.public_key().to_openssh().expect("a public key encodes")
    }

    /// `age1…`: what people encrypt the cluster's secrets to.
    pub fn sops_recipient(&self) -> String {
        let id: age::x25519::Identity = self.sops_age_key.parse().expect("the bundle holds a valid age identity");
        id.to_public().to_string()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawKeys {
    deploy_key: String,
    sops_age_key: String,
}

impl TryFrom<RawKeys> for GitOpsKeys {
    type Error = String;

    fn try_from(raw: RawKeys) -> Result<GitOpsKeys, String> {
        let key = PrivateKey::from_openssh(&raw.deploy_key)
            .map_err(|e| format!("gitops.deployKey is not an OpenSSH private key: {e}"))?;
        if key.public_key().to_openssh().is_err() {
            return Err("gitops.deployKey has no encodable public half".into());
        }
        raw.sops_age_key
            .parse::<age::x25519::Identity>()
            .map_err(|e| format!("gitops.sopsAgeKey is not an age identity: {e}"))?;
        Ok(GitOpsKeys { deploy_key: raw.deploy_key, sops_age_key: raw.sops_age_key })
    }
}

fn deploy_key_comment(cluster: &str) -> String {
    format!("kforge-{cluster}-deploy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_valid_and_their_public_halves_derive() {
        let a = GitOpsKeys::generate("lab");
        let b = GitOpsKeys::generate("lab");
        assert_ne!(a.deploy_key, b.deploy_key);
        assert_ne!(a.sops_age_key, b.sops_age_key);
        let json = serde_json::to_string(&a).unwrap();
        let back: GitOpsKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a, "a bundle round-trips");
        let broken = json.replace("AGE-SECRET-KEY-1", "AGE-SECRET-KEY-X");
        let err = serde_json::from_str::<GitOpsKeys>(&broken).unwrap_err().to_string();
        assert!(err.contains("gitops.sopsAgeKey is not an age identity"), "{err}");
        assert!(a.deploy_key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "Flux reads OpenSSH keys");
        let public = a.deploy_key_public();
        assert!(
            public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") && public.ends_with(" kforge-lab-deploy"),
            "{public}"
        );
        assert!(a.sops_recipient().starts_with("age1"));
        assert!(a.sops_age_key.starts_with("AGE-SECRET-KEY-1"));
        assert_eq!(format!("{a:?}"), "GitOpsKeys { .. }", "Debug never shows a key");
    }
}
