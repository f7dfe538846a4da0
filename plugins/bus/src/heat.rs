//! The resources of a stack that a Heat notification names, from Heat's API.
//!
//! Heat's `orchestration.stack.*` payloads name no resources, while the Heat collector
//! relates each stack to what it comprises (`heat.stack --comprises--> nova.instance:...`).
//! Two sources that disagree on the relations make the host's baseline report an update
//! on every poll and every notification. So, like Vitrage's
//! `HeatStackDriver.enrich_event`, the consumer asks Heat for the stack's resources
//! (`GET /v1/{tenant_id}/stacks/{stack_name}/{id}/resources?nested_depth=N`) before it
//! pushes a stack upsert, and relates them exactly as the collector does
//! (`synchronizer_openstack::heat_stack::comprises`, same resource type mapping).
//!
//! Only with the optional `heat` table of the configuration ([`HeatConfig`]). Without
//! it stacks are pushed without relations, as before; do not then also run the Heat
//! collector for `heat.stack`, the two would flap on every stack that has mapped
//! resources.
//!
//! Failure semantics:
//! - Heat answers the resources with 404: the stack was deleted since the notification
//!   was sent; its upsert is dropped (and the message acknowledged), a
//!   `orchestration.stack.delete.end` follows.
//! - Any other failure (Heat or Keystone unreachable, 5xx, 401 after re-authentication,
//!   a body that does not parse): [`crate::BusError::Heat`]. The batch is not pushed and
//!   none of its messages is acknowledged: the consumer reconnects with backoff and the
//!   broker redelivers them. A stack is never pushed with relations that may be wrong.
//! - Deletions are pushed as they are (no lookup).

use std::collections::{BTreeMap, HashMap};

use futures::{StreamExt, TryStreamExt};
use reqwest::Url;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use synchronizer_openstack::heat_stack::{
    self, ApiResources, COMPRISES, STACK, heat_root, resources_url,
};
use synchronizer_openstack::{CloudConfig, Session};
use synchronizer_plugin_api::{Change, Entity, Relation};

use crate::error::{BusError, ConfigError};

/// How many stacks' resources are requested at a time within one batch.
const CONCURRENCY: usize = 4;

/// The `heat` table of the configuration: where and how to look up a stack's resources.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeatConfig {
    /// The cloud: credentials, region, interface, endpoint override, TLS, timeouts (the
    /// same table as the Heat collector's `cloud`).
    pub cloud: CloudConfig,
    /// How deep into nested stacks resources are listed (Heat's `nested_depth`); must be
    /// the Heat collector's value for the two to agree.
    #[serde(default = "default_nested_depth")]
    pub nested_depth: u32,
    /// More resource types to relate, as the collector's `resource_types` (and equal to
    /// it for the two to agree).
    #[serde(default)]
    pub resource_types: BTreeMap<String, String>,
    /// The catalog service type of Heat.
    #[serde(default = "default_service_type")]
    pub service_type: String,
}

fn default_nested_depth() -> u32 {
    3
}

fn default_service_type() -> String {
    "orchestration".to_owned()
}

/// Looks up stacks' resources and adds them to stack upserts.
#[derive(Debug)]
pub struct Enricher {
    session: Session,
    nested_depth: u32,
    service_type: String,
    resource_types: HashMap<String, String>,
}

/// The outcome of one lookup.
enum Lookup {
    /// The relations, sorted.
    Found(Vec<String>),
    /// Heat answered 404: the stack is gone.
    Gone,
}

impl Enricher {
    /// Checks the configuration (no request is made yet).
    pub fn new(config: &HeatConfig) -> Result<Self, ConfigError> {
        let session = Session::new(&config.cloud).map_err(|e| match e {
            synchronizer_openstack::Error::Field(f) => {
                ConfigError::invalid(f.field_in("heat.cloud"), f.message)
            }
            e => ConfigError::invalid("heat.cloud", e.to_string()),
        })?;
        Ok(Enricher {
            session,
            nested_depth: config.nested_depth,
            service_type: config.service_type.clone(),
            resource_types: heat_stack::resource_types(&config.resource_types),
        })
    }

    /// The session (for tests and logs).
    pub fn session(&self) -> &Session {
        &self.session
    }

    async fn lookup(&self, root: &Url, endpoint: &Url, e: &Entity) -> Result<Lookup, BusError> {
        let url = match e.project() {
            Some(project) => resources_url(root, project, e.name(), e.id(), self.nested_depth),
            None => {
                // No tenant in the payload: the token's own project's URL (an admin's
                // token reads any project's stack there).
                let mut url = synchronizer_openstack::join_path(
                    endpoint,
                    &["stacks", e.name(), e.id(), "resources"],
                );
                url.query_pairs_mut()
                    .append_pair("nested_depth", &self.nested_depth.to_string());
                url
            }
        };
        match self
            .session
            .get_json::<ApiResources>(&url, &HeaderMap::new())
            .await
        {
            Ok(r) => Ok(Lookup::Found(heat_stack::comprises(
                &r.resources,
                &self.resource_types,
            ))),
            Err(err) if err.status() == Some(404) => Ok(Lookup::Gone),
            Err(err) => Err(BusError::Heat {
                stack: e.id().to_owned(),
                message: err.to_string(),
            }),
        }
    }

    /// The batch with every `heat.stack` upsert related to the stack's resources; upserts
    /// of stacks Heat no longer has are left out. Fails (nothing of the batch may be
    /// pushed) when a lookup fails.
    pub async fn enrich(&self, changes: Vec<Change>) -> Result<Vec<Change>, BusError> {
        let wanted = changes
            .iter()
            .any(|c| matches!(c, Change::Upsert(e) if e.entity_type() == STACK));
        if !wanted {
            return Ok(changes);
        }
        let endpoint = self
            .session
            .endpoint(&self.service_type)
            .await
            .map_err(|err| BusError::Heat {
                stack: String::new(),
                message: err.to_string(),
            })?;
        let root = heat_root(&endpoint);
        let (root, endpoint) = (&root, &endpoint);
        let out: Vec<Option<Change>> = futures::stream::iter(changes)
            .map(|c| async move {
                match c {
                    Change::Upsert(e) if e.entity_type() == STACK => {
                        match self.lookup(root, endpoint, &e).await? {
                            Lookup::Found(keys) => {
                                let mut e = e;
                                for key in keys {
                                    e = e.with_relation(Relation::to(COMPRISES, key));
                                }
                                Ok(Some(Change::Upsert(e)))
                            }
                            Lookup::Gone => {
                                tracing::debug!(stack = %e.id(), state = ?e.state(), "stack gone before its resources were read; its upsert is dropped");
                                Ok(None)
                            }
                        }
                    }
                    other => Ok::<_, BusError>(Some(other)),
                }
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(out.into_iter().flatten().collect())
    }
}
