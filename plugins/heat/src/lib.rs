//! The Heat collector plugin: the stacks of one cloud region and the resources they
//! comprise, as complete snapshots for the synchronizer's baseline.
//!
//! What it asks Heat:
//! - The stacks of every project: `GET /v1/{project}/stacks?global_tenant=True[&limit=N]`,
//!   following the `links` entry with `rel = "next"` (Heat writes one only when a page is
//!   full). Top-level stacks only, as Heat lists them.
//! - Each stack's resources: `GET /v1/{stack project}/stacks/{name}/{id}/resources?nested_depth=N`
//!   (one flat list that includes the resources of nested stacks down to `nested_depth`),
//!   several stacks at a time (`concurrency`).
//!
//! `heat.stack:<id>` is the shared model of `synchronizer_openstack::heat_stack`, the
//! same entity the bus plugin builds from Heat's notifications (enriched with the
//! stack's resources), so that a poll of the state a notification reported changes
//! nothing: name = `stack_name`, state = `stack_status` as Heat reports it
//! (`CREATE_COMPLETE`, `UPDATE_FAILED`, ...), project = `project`, source timestamp =
//! `updated_time` (or `creation_time` for a stack never updated); the properties
//! `stack_status_reason`, `creation_time`, `updated_time`, `stack_owner` and `tags`
//! (`description` and `parent` are not kept: notifications cannot fill them alike). Each
//! resource whose type maps to an entity type (`OS::Nova::Server` → `nova.instance`,
//! `OS::Cinder::Volume` → `cinder.volume`, `OS::Neutron::Net` → `neutron.network`,
//! `OS::Neutron::Port` → `neutron.port`, plus `resource_types` from the configuration)
//! and has a physical id gives the relation `comprises` from the stack to
//! `<entity type>:<physical id>`. Relations are sorted, so that Heat's order of
//! resources cannot make a change.
//!
//! Heat's default policy refuses `global_tenant` to everybody, admins included
//! (`stacks:global_index`: `rule:deny_everybody`). With `stack_listing = "global"` that
//! 403 is an error naming the rule and both fixes; with `per_project` the plugin lists
//! the projects from Keystone (`GET /v3/projects`) and each project's stacks under its
//! own URL with the same admin token, which Heat allows; `auto` tries the global listing
//! and falls back (for the life of the instance) on its 403. A real Heat 24 answers an
//! admin token with every project's stacks under any project's URL: when the listing of
//! the token's own project shows another project's stack, that listing is taken as
//! complete and no other project is listed; stacks are deduplicated by id either way.
//!
//! A stack Heat lists in `DELETE_COMPLETE` is left out and its resources are not asked
//! for, so the baseline deletes it and its relations: it is never reported as an entity
//! in that state. (Heat 24 records `DELETE_COMPLETE` in `Stack.delete` before it marks
//! the stack's row deleted, which hides it from the listing: a listing in between shows
//! it.)
//!
//! Failure semantics: any failure to list the stacks, or the resources of a stack, fails
//! the snapshot (the host then deletes nothing and retries with backoff), because a stack
//! without its resources would be reported as changed. A stack whose resources answer
//! 404 was deleted between the two requests and is left out.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use reqwest::Url;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use synchronizer_openstack::heat_stack::{self, ApiResources, ApiStack, heat_root};
use synchronizer_openstack::{AuthMethod, CloudConfig, Link, Pager, Session, join_path, plugin};
use synchronizer_plugin_api::{Context, Entity, Error, Plugin, PluginInfo, PluginKind, Snapshot};

pub use synchronizer_openstack::heat_stack::{DEFAULT_RESOURCE_TYPES, STACK};

/// How the stacks of every project are listed.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StackListing {
    /// One listing with `global_tenant=True` (needs the `stacks:global_index` policy).
    #[default]
    Global,
    /// The projects from Keystone, then each project's stacks.
    PerProject,
    /// `global`, falling back to `per_project` on a 403.
    Auto,
}

/// The instance's configuration (`[instances.config]`). Every option is documented in
/// the crate's README.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cloud: credentials, region, interface, endpoint override, TLS, timeouts.
    pub cloud: CloudConfig,
    /// How the stacks of every project are listed.
    #[serde(default)]
    pub stack_listing: StackListing,
    /// How deep into nested stacks resources are listed (Heat's `nested_depth`; 0: the
    /// stack's own resources only).
    #[serde(default = "default_nested_depth")]
    pub nested_depth: u32,
    /// Stacks per page (`limit`). Unset: Heat's default.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// How many stacks' resources (or projects' stacks) are requested at a time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// More resource types to relate, `"OS::Trove::Instance" = "trove.instance"`; they
    /// add to (or replace) the defaults.
    #[serde(default)]
    pub resource_types: BTreeMap<String, String>,
    /// The catalog service type of Heat.
    #[serde(default = "default_service_type")]
    pub service_type: String,
}

fn default_nested_depth() -> u32 {
    3
}

fn default_concurrency() -> usize {
    4
}

fn default_service_type() -> String {
    "orchestration".to_owned()
}

/// The plugin: one cloud region's Heat.
#[derive(Debug)]
pub struct HeatPlugin {
    session: Session,
    config: Config,
    resource_types: HashMap<String, String>,
    instance: String,
    /// `auto` saw the 403: list per project from now on.
    fell_back: AtomicBool,
}

#[derive(Deserialize)]
struct StacksPage {
    stacks: Vec<ApiStack>,
    #[serde(default)]
    links: Vec<Link>,
}

#[derive(Deserialize)]
struct Projects {
    projects: Vec<ProjectRow>,
    #[serde(default)]
    truncated: bool,
}

#[derive(Deserialize)]
struct ProjectRow {
    id: String,
    #[serde(default)]
    is_domain: bool,
}

type OsError = synchronizer_openstack::Error;

/// The part of the 403 explanation common to every listing mode.
const GLOBAL_INDEX_HELP: &str = "the account lacks the role or policy to list the stacks of all projects: Heat's policy rule `stacks:global_index` denies everybody by default, admins included. Fix: allow it in Heat's policy file (`\"stacks:global_index\": \"role:admin\"` in /etc/heat/policy.yaml), or set `stack_listing = \"per_project\"` (or `\"auto\"`) in this instance's config to list the stacks project by project (projects from Keystone) with this admin token";

/// A field of the `cloud` table, as a field of this plugin's table.
impl HeatPlugin {
    /// Checks a configuration without side effects (no request, no client; `cloud.ca_file`
    /// is read): what [`Plugin::validate`] runs. Each error names its field (`page_size`,
    /// `concurrency`, `stack_listing`, `resource_types."OS::X::Y"`, `cloud.auth.auth_url`, ...).
    pub fn check(config: &Config) -> Result<(), Error> {
        if config.page_size == Some(0) {
            return Err(Error::config_field("page_size", "must be at least 1"));
        }
        if config.concurrency == 0 {
            return Err(Error::config_field("concurrency", "must be at least 1"));
        }
        if config.service_type.is_empty() {
            return Err(Error::config_field("service_type", "must not be empty"));
        }
        for (heat_type, entity_type) in &config.resource_types {
            if heat_type.is_empty() {
                return Err(Error::config_field(
                    "resource_types",
                    "a Heat resource type must not be empty",
                ));
            }
            if entity_type.is_empty() {
                return Err(Error::config_field(
                    format!("resource_types.{heat_type}"),
                    "the entity type must not be empty",
                ));
            }
        }
        config.cloud.validate().map_err(plugin::cloud_error)?;
        if config.stack_listing != StackListing::Global
            && config.cloud.auth.effective_method() == AuthMethod::StaticToken
        {
            return Err(Error::config_field(
                "stack_listing",
                "`per_project` and `auto` list the projects from Keystone (GET /v3/projects), which a static token (`cloud.auth.token`) does not reach: use `global`",
            ));
        }
        Ok(())
    }

    /// Builds an instance from its configuration, checked first as [`HeatPlugin::check`]
    /// does (no request is made yet).
    pub fn from_config(config: Config, instance: &str) -> Result<Self, Error> {
        Self::check(&config)?;
        let session = plugin::session(&config.cloud)?;
        let resource_types = heat_stack::resource_types(&config.resource_types);
        Ok(HeatPlugin {
            session,
            config,
            resource_types,
            instance: instance.to_owned(),
            fell_back: AtomicBool::new(false),
        })
    }

    /// The session (for tests).
    pub fn session(&self) -> &Session {
        &self.session
    }

    fn stacks_url(&self, project_base: &Url, global: bool, marker: Option<&str>) -> Url {
        let mut url = join_path(project_base, &["stacks"]);
        {
            let mut q = url.query_pairs_mut();
            if global {
                q.append_pair("global_tenant", "True");
            }
            if let Some(limit) = self.config.page_size {
                q.append_pair("limit", &limit.to_string());
            }
            if let Some(m) = marker {
                q.append_pair("marker", m);
            }
        }
        url
    }

    /// Every stack of one listing (`/v1/{project}/stacks`), page after page.
    async fn list_stacks(
        &self,
        project_base: &Url,
        global: bool,
    ) -> Result<Vec<ApiStack>, OsError> {
        let mut out = Vec::new();
        let mut pager = Pager::new();
        let mut url = self.stacks_url(project_base, global, None);
        loop {
            let page: StacksPage = self.session.get_json(&url, &HeaderMap::new()).await?;
            out.extend(page.stacks);
            match pager.next(&url, &page.links)? {
                Some(marker) => url = self.stacks_url(project_base, global, Some(&marker)),
                None => break,
            }
        }
        Ok(out)
    }

    async fn projects(&self) -> Result<Vec<String>, OsError> {
        let Some(identity) = self.session.identity_url() else {
            return Err(OsError::Config("listing projects needs Keystone".into()));
        };
        let url = join_path(&identity, &["projects"]);
        let projects: Projects = self.session.get_json(&url, &HeaderMap::new()).await?;
        if projects.truncated {
            return Err(OsError::Pagination {
                url: synchronizer_openstack::display_url(&url),
                message: "Keystone truncated the project list (its `list_limit`): raise `[resource] list_limit` in keystone.conf".into(),
            });
        }
        Ok(project_ids(projects))
    }

    /// The stacks of every project, listed under each project's URL. Heat 24 answers an
    /// admin token with every project's stacks under any project's URL: when the token's
    /// own project's listing holds another project's stack, that one listing is complete.
    /// Otherwise each project (from Keystone) is listed; stacks are deduplicated by id.
    async fn stacks_per_project(&self, root: &Url) -> Result<Vec<ApiStack>, OsError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut add = |stacks: Vec<ApiStack>, project: &str| {
            for mut s in stacks {
                s.project.get_or_insert_with(|| project.to_owned());
                if seen.insert(s.id.clone()) {
                    out.push(s);
                }
            }
        };
        let own = self.session.project_id().await?;
        if let Some(own) = &own {
            let stacks = self
                .list_stacks(&join_path(root, &[own.as_str()]), false)
                .await?;
            let everything = stacks
                .iter()
                .any(|s| s.project.as_deref().is_some_and(|p| p != own));
            add(stacks, own);
            if everything {
                tracing::debug!(
                    stacks = out.len(),
                    "Heat lists every project's stacks to this token under its own project"
                );
                return Ok(out);
            }
        }
        let projects: Vec<String> = self
            .projects()
            .await?
            .into_iter()
            .filter(|p| Some(p) != own.as_ref())
            .collect();
        tracing::debug!(
            projects = projects.len(),
            "listing stacks project by project"
        );
        let lists: Vec<(String, Vec<ApiStack>)> = futures::stream::iter(projects)
            .map(|p| async move {
                let stacks = self
                    .list_stacks(&join_path(root, &[p.as_str()]), false)
                    .await?;
                Ok::<_, OsError>((p, stacks))
            })
            .buffered(self.config.concurrency)
            .try_collect()
            .await?;
        for (project, stacks) in lists {
            add(stacks, &project);
        }
        Ok(out)
    }

    async fn stacks(&self, endpoint: &Url, root: &Url) -> Result<Vec<ApiStack>, Error> {
        // The host names the instance.
        let fail = Error::failed;
        let per_project = match self.config.stack_listing {
            StackListing::PerProject => true,
            StackListing::Auto => self.fell_back.load(Ordering::Relaxed),
            StackListing::Global => false,
        };
        if !per_project {
            match self.list_stacks(endpoint, true).await {
                Ok(stacks) => return Ok(stacks),
                Err(e) if e.is_forbidden() && self.config.stack_listing == StackListing::Auto => {
                    tracing::warn!(
                        instance = %self.instance,
                        error = %e,
                        "Heat refuses global_tenant (policy stacks:global_index); listing stacks project by project from now on"
                    );
                    self.fell_back.store(true, Ordering::Relaxed);
                }
                Err(e) if e.is_forbidden() => {
                    return Err(fail(format!("{e}: {GLOBAL_INDEX_HELP}")));
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        self.stacks_per_project(root).await.map_err(|e| {
            if e.is_forbidden() {
                fail(format!(
                    "{e}: the account lacks the role to list projects (Keystone `identity:list_projects`) or another project's stacks: give it the admin role"
                ))
            } else {
                fail(e.to_string())
            }
        })
    }

    /// The relations of one stack, or `None` when the stack is gone (404).
    async fn relations(
        &self,
        root: &Url,
        endpoint: &Url,
        stack: &ApiStack,
    ) -> Result<Option<Vec<String>>, OsError> {
        let base = match &stack.project {
            Some(p) => join_path(root, &[p.as_str()]),
            None => endpoint.clone(),
        };
        let mut url = join_path(
            &base,
            &[
                "stacks",
                stack.stack_name.as_str(),
                stack.id.as_str(),
                "resources",
            ],
        );
        url.query_pairs_mut()
            .append_pair("nested_depth", &self.config.nested_depth.to_string());
        let resources: ApiResources = match self.session.get_json(&url, &HeaderMap::new()).await {
            Ok(r) => r,
            Err(e) if e.status() == Some(404) => {
                tracing::debug!(stack = %stack.id, "stack gone while listing its resources");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(Some(heat_stack::comprises(
            &resources.resources,
            &self.resource_types,
        )))
    }

    /// Collects a snapshot of the stacks (of nothing when `types` names other types only).
    pub async fn collect(&self, types: &[String]) -> Result<Snapshot, Error> {
        if !types.is_empty() && !types.iter().any(|t| t == STACK) {
            return Ok(Snapshot::complete(Vec::new()));
        }
        let started = Instant::now();
        let fail = |e: OsError| Error::failed(e.to_string());
        let endpoint = self
            .session
            .endpoint(&self.config.service_type)
            .await
            .map_err(fail)?;
        let root = heat_root(&endpoint);
        let mut stacks = self.stacks(&endpoint, &root).await?;
        let total = stacks.len();
        stacks.retain(|s| !s.is_deleted());
        let entities: Vec<Option<Entity>> = futures::stream::iter(stacks)
            .map(|stack| {
                let (root, endpoint) = (&root, &endpoint);
                async move {
                    let relations = self.relations(root, endpoint, &stack).await?;
                    Ok::<_, OsError>(relations.map(|r| stack.to_entity(r)))
                }
            })
            .buffered(self.config.concurrency)
            .try_collect()
            .await
            .map_err(fail)?;
        let entities: Vec<Entity> = entities.into_iter().flatten().collect();
        tracing::debug!(
            instance = %self.instance,
            stacks = entities.len(),
            gone_or_deleted = total - entities.len(),
            per_project = self.fell_back.load(Ordering::Relaxed) || self.config.stack_listing == StackListing::PerProject,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Heat snapshot collected"
        );
        Ok(Snapshot::complete(entities))
    }
}

/// The page parsing and entity building of the collector, for the fuzz targets in
/// `fuzz/` (not part of the API): each takes answers' bodies as the collector receives
/// them and goes through the same types and conversions.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A page of `GET /v1/{project}/stacks` read at `page_url`, each stack comprising the
    /// resources of `resources` (a `GET .../resources` body; the default resource types):
    /// the entities, as a snapshot has them, and the marker of the next page.
    pub fn stacks_page(
        page_url: &Url,
        stacks: &[u8],
        resources: &[u8],
    ) -> Result<(Vec<Entity>, Option<String>), String> {
        let page: StacksPage = serde_json::from_slice(stacks).map_err(|e| e.to_string())?;
        let next = Pager::new()
            .next(page_url, &page.links)
            .map_err(|e| e.to_string())?;
        let resources: ApiResources =
            serde_json::from_slice(resources).map_err(|e| e.to_string())?;
        let types = heat_stack::resource_types(&BTreeMap::new());
        let relations = heat_stack::comprises(&resources.resources, &types);
        let entities = page
            .stacks
            .iter()
            .filter(|s| !s.is_deleted())
            .map(|s| s.to_entity(relations.clone()))
            .collect();
        Ok((entities, next))
    }

    /// The project ids of a Keystone `GET /v3/projects` answer, as the per-project
    /// listing takes them.
    pub fn projects(body: &[u8]) -> Result<Vec<String>, String> {
        serde_json::from_slice(body)
            .map(project_ids)
            .map_err(|e| e.to_string())
    }
}

/// The ids of the projects (not domains) of a Keystone project list.
fn project_ids(projects: Projects) -> Vec<String> {
    projects
        .projects
        .into_iter()
        .filter(|p| !p.is_domain)
        .map(|p| p.id)
        .collect()
}

impl Plugin for HeatPlugin {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "heat",
            version: env!("CARGO_PKG_VERSION"),
            description: "OpenStack Heat: stacks and the resources they comprise",
            entity_types: &[STACK],
            kind: PluginKind::Collector,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    /// Everything `new` checks ([`HeatPlugin::check`]).
    fn validate(config: &Config, _ctx: &Context) -> Result<(), Error> {
        HeatPlugin::check(config)
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        let plugin = HeatPlugin::from_config(config, &ctx.instance)?;
        tracing::info!(
            instance = %ctx.instance,
            session = ?plugin.session,
            stack_listing = ?plugin.config.stack_listing,
            nested_depth = plugin.config.nested_depth,
            "Heat plugin ready"
        );
        Ok(plugin)
    }

    async fn snapshot(&self, types: &[String]) -> Result<Snapshot, Error> {
        self.collect(types).await
    }
}

synchronizer_plugin_api::export_plugin!(HeatPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        synchronizer_openstack::testing::plugin_config(extra)
    }

    fn ctx() -> Context {
        Context {
            instance: "heat-test".into(),
        }
    }

    /// The field and message `validate` refuses `extra` with.
    fn refused(extra: serde_json::Value) -> (String, String) {
        synchronizer_openstack::testing::refused::<HeatPlugin>(&config(extra), &ctx())
    }

    #[test]
    fn validate_passes_a_valid_config_and_the_sample() {
        assert_eq!(
            HeatPlugin::validate(&config(serde_json::json!({})), &ctx()),
            Ok(())
        );
        let c = config(serde_json::json!({
            "stack_listing": "auto", "page_size": 1, "concurrency": 1, "nested_depth": 0,
            "resource_types": {"OS::Trove::Instance": "trove.instance"}
        }));
        assert_eq!(HeatPlugin::validate(&c, &ctx()), Ok(()));
        let token = config(serde_json::json!({
            "cloud": {"auth": {"token": "t"}, "endpoint_override": "http://h:8004/v1/p"}
        }));
        assert_eq!(HeatPlugin::validate(&token, &ctx()), Ok(()));
        let sample: toml::Value = toml::from_str(HeatPlugin::sample_config()).unwrap();
        let instance = &sample["instances"][0];
        assert_eq!(
            instance["library"].as_str(),
            Some("libsynchronizer_heat.so")
        );
        let c: Config =
            serde_json::from_value(serde_json::to_value(&instance["config"]).unwrap()).unwrap();
        assert_eq!(HeatPlugin::validate(&c, &ctx()), Ok(()));
    }

    #[test]
    fn validate_names_each_refused_field() {
        assert_eq!(
            refused(serde_json::json!({"page_size": 0})),
            ("page_size".to_owned(), "must be at least 1".to_owned())
        );
        assert_eq!(
            refused(serde_json::json!({"concurrency": 0})),
            ("concurrency".to_owned(), "must be at least 1".to_owned())
        );
        assert_eq!(
            refused(serde_json::json!({"service_type": ""})).0,
            "service_type"
        );
        assert_eq!(
            refused(serde_json::json!({"resource_types": {"OS::Trove::Instance": ""}})).0,
            "resource_types.OS::Trove::Instance"
        );
        for listing in ["per_project", "auto"] {
            let (field, message) = refused(serde_json::json!({
                "stack_listing": listing,
                "cloud": {"auth": {"token": "t"}, "endpoint_override": "http://h:8004/v1/p"}
            }));
            assert_eq!(field, "stack_listing");
            assert!(message.contains("static token"), "{message}");
            assert!(!message.contains("instance"), "{message}");
        }
        let cloud = |cloud: serde_json::Value| refused(serde_json::json!({ "cloud": cloud })).0;
        assert_eq!(
            cloud(
                serde_json::json!({"auth": {"auth_url": "http://k", "username": "u", "project_name": "a"}})
            ),
            "cloud.auth.password"
        );
        assert_eq!(
            cloud(
                serde_json::json!({"auth": {"auth_url": "http://k", "username": "u", "password": "p", "project_name": "a"}, "timeout": "0s"})
            ),
            "cloud.timeout"
        );
        let e = HeatPlugin::from_config(config(serde_json::json!({"concurrency": 0})), "h")
            .unwrap_err();
        assert_eq!(
            (e.field(), e.message()),
            (Some("concurrency"), "must be at least 1")
        );
    }
}
