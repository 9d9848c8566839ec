//! The host's record of what kforge deployed there (`paths::MANIFEST`): its cluster,
//! its node name, the releases, every file kforge wrote with its digest, and which
//! delivery wrote the record. Both deliveries write it — an apply over SSH, and the
//! node's bootstrap script (user-data, a rendered tree) — so the next apply knows the
//! host as kforge's either way and can take it over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::{NodePlan, Plan};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub cluster: String,
    #[serde(default)]
    pub node: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub releases: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
    /// Who wrote this record. Records from before this field are apply's.
    #[serde(default)]
    pub by: Delivery,
}

/// How the desired state reached the host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// `kforge apply` over SSH.
    #[default]
    Apply,
    /// The node's bootstrap script, run by cloud-init or by hand from a rendered tree.
    Bootstrap,
}

impl Manifest {
    /// The record of a host that holds every file of `node` as planned: what the
    /// bootstrap writes, and what an apply has recorded once it converged the host.
    /// Files handed over to another program (K3s's CA files) are never kforge's.
    pub fn planned(plan: &Plan, node: &NodePlan, by: Delivery) -> Manifest {
        Manifest {
            cluster: plan.cluster.clone(),
            node: node.node.clone(),
            releases: plan.releases.clone(),
            files: node
                .files()
                .filter(|f| f.handed_over.is_none())
                .map(|f| (f.path.clone(), f.sha256.clone()))
                .collect(),
            by,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("manifest serializes")
    }
}
