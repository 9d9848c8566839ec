//! GitOps from the cluster file (`spec.gitops`): the repository and its pinned host
//! keys ([`source`]), the cluster's deploy key and SOPS age key kept in the secrets
//! bundle ([`keys`]), and the engine's install-and-sync plan ([`flux`]).

pub mod flux;
pub mod keys;
pub mod source;

pub use keys::GitOpsKeys;
pub use source::{KnownHost, Repository, Transport};
