//! The Nova collector plugin: instances, compute hosts and availability zones of one
//! cloud region, as complete snapshots for the synchronizer's baseline.
//!
//! What it asks Nova (each request with `OpenStack-API-Version: compute <microversion>`):
//! - `nova.instance`: `GET /servers/detail?all_tenants=1[&limit=N]`, following
//!   `servers_links` (marker pagination) to the last page. The entity is the shared model
//!   of [`synchronizer_openstack::nova_instance`], which the bus plugin builds from Nova's
//!   notifications too, so that a poll and a notification of the same state hash alike.
//!   Key `nova.instance:<uuid>`; name, state = `status` as Nova reports it (`ACTIVE`,
//!   `SHUTOFF`, `ERROR`, ...), project = `tenant_id`, source timestamp = `updated`; the
//!   relation `contains` from its host `nova.host:<OS-EXT-SRV-ATTR:host>` (none while it
//!   has no host); the properties [`INSTANCE_PROPERTIES`], always all of them (`null` when
//!   Nova sends none or an empty string): `vm_state` (`OS-EXT-STS:vm_state`),
//!   `task_state` (`OS-EXT-STS:task_state`), `availability_zone`
//!   (`OS-EXT-AZ:availability_zone`), `host` (`OS-EXT-SRV-ATTR:host`), `node`
//!   (`OS-EXT-SRV-ATTR:hypervisor_hostname`), `flavor` (`flavor.original_name`, from
//!   microversion 2.47 on), `image_id` (`image.id`), `user_id`, `created_at` (`created`)
//!   and `metadata`; and `instance_name` (`OS-EXT-SRV-ATTR:instance_name`, the libvirt
//!   domain; `null` for a token that does not see it), which of the notifications only
//!   `instance.create.end` carries (the others keep the value the host holds, see
//!   `synchronizer_openstack::nova_instance`). Everything else is left out: what the notifications do not carry
//!   (`OS-EXT-STS:power_state`, `addresses`, `fault`, `tags`, `locked`, `host_status`,
//!   volumes, ...) would make every poll after a notification an update; `user_data` can
//!   hold secrets; `updated` is the source timestamp. A server Nova lists as deleted
//!   (status `DELETED`, for a moment while it is deleted, or `SOFT_DELETED`; vm state
//!   `deleted` / `soft-delete`) is left out of the snapshot, so the baseline deletes it:
//!   it is never reported as an entity in state `DELETED`.
//! - `nova.host`: `GET /os-services?binary=nova-compute`. Key `nova.host:<host>`; state =
//!   the service's `state` (`up` / `down`); `status`, `disabled_reason`, `forced_down`,
//!   `zone` and the service `id` in the properties; source timestamp = `updated_at`; the
//!   relation `contains` from `nova.zone:<zone>`. And `host_ip`, the address the compute
//!   service reports (its `my_ip`), from `GET /os-hypervisors/detail` (paged like the
//!   servers), joined by the hypervisor's `service.host`: a Prometheus alert's `instance`
//!   label names a host by it. A host without a hypervisor (yet) has `host_ip` null; of
//!   several hypervisors of one host (Ironic) the first listed with an address counts.
//!   Both requests must succeed for the type to be listed.
//! - `nova.zone`: `GET /os-availability-zone/detail`, without Nova's `internal` zone (the
//!   control services). Key `nova.zone:<name>`; state `available` / `unavailable`.
//!
//! Failure semantics (the host deletes nothing for a failed or incomplete type):
//! - A 5xx, a timeout, a transport error or a page that does not parse fails its entity
//!   type. When at least one requested type was listed whole, the snapshot is complete
//!   with the failed types marked incomplete; when every type failed, it is an error.
//! - A 401 after one re-authentication, a 403 (the account lacks the admin role or the
//!   policy for `all_tenants`), a Keystone refusal or a missing endpoint fail the whole
//!   snapshot: they need an operator, and a partial view would hide that.
//!
//! One instance watches one cloud region: run several instances for several regions.

use std::time::Instant;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use synchronizer_openstack::nova_instance::ApiServer;
use synchronizer_openstack::time::parse_timestamp;
use synchronizer_openstack::{CloudConfig, Link, Pager, Session, display_url, join_path, plugin};
use synchronizer_plugin_api::{
    Context, Entity, Error, Plugin, PluginInfo, PluginKind, Relation, Snapshot,
};

/// Entity type of a Nova server.
pub const INSTANCE: &str = synchronizer_openstack::nova_instance::INSTANCE;
/// Entity type of a compute host.
pub const HOST: &str = synchronizer_openstack::nova_instance::HOST;
/// Entity type of an availability zone.
pub const ZONE: &str = "nova.zone";

/// The instance's configuration (`[instances.config]`). Every option is documented in
/// the crate's README.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cloud: credentials, region, interface, endpoint override, TLS, timeouts.
    pub cloud: CloudConfig,
    /// The compute API microversion sent with every request.
    #[serde(default = "default_microversion")]
    pub microversion: String,
    /// Servers per page (`limit`); Nova caps it at its `[api] max_limit` (1000 by default)
    /// and pages are followed either way. Unset: Nova's default page size.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// List the servers of every project (`all_tenants=1`, needs the admin role). Set to
    /// false to watch only the token's project.
    #[serde(default = "yes")]
    pub all_tenants: bool,
    /// The catalog service type of Nova.
    #[serde(default = "default_service_type")]
    pub service_type: String,
}

fn default_microversion() -> String {
    "2.53".to_owned()
}

fn default_service_type() -> String {
    "compute".to_owned()
}

fn yes() -> bool {
    true
}

/// The plugin: one cloud region's Nova.
#[derive(Debug)]
pub struct NovaPlugin {
    session: Session,
    config: Config,
    headers: HeaderMap,
    instance: String,
}

/// One page of `GET /servers/detail`.
#[derive(Deserialize)]
struct ServersPage {
    servers: Vec<ApiServer>,
    #[serde(default)]
    servers_links: Vec<Link>,
}

/// The properties of an instance: the shared model's (Nova's API names in the crate
/// docs).
pub use synchronizer_openstack::nova_instance::PROPERTIES as INSTANCE_PROPERTIES;

#[derive(Deserialize)]
struct Services {
    services: Vec<Service>,
}

#[derive(Deserialize)]
struct Service {
    #[serde(default)]
    id: Value,
    host: String,
    #[serde(default)]
    binary: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    disabled_reason: Option<String>,
    #[serde(default)]
    forced_down: Option<bool>,
}

/// One page of `GET /os-hypervisors/detail`: the fields the join takes.
#[derive(Deserialize)]
struct HypervisorsPage {
    hypervisors: Vec<Hypervisor>,
    #[serde(default)]
    hypervisors_links: Vec<Link>,
}

#[derive(Deserialize)]
struct Hypervisor {
    #[serde(default)]
    host_ip: Option<String>,
    #[serde(default)]
    service: Option<HypervisorService>,
}

#[derive(Deserialize)]
struct HypervisorService {
    #[serde(default)]
    host: Option<String>,
}

/// Compute host → the address its hypervisor reports.
type HostIps = std::collections::HashMap<String, String>;

#[derive(Deserialize)]
struct Zones {
    #[serde(rename = "availabilityZoneInfo")]
    zones: Vec<Zone>,
}

#[derive(Deserialize)]
struct Zone {
    #[serde(rename = "zoneName")]
    name: String,
    #[serde(rename = "zoneState", default)]
    state: Option<ZoneState>,
}

#[derive(Deserialize)]
struct ZoneState {
    #[serde(default)]
    available: bool,
}

/// A type that could not be listed, and why.
type Listing = Result<Vec<Entity>, synchronizer_openstack::Error>;

/// A field of the `cloud` table, as a field of this plugin's table.
impl NovaPlugin {
    /// The headers sent with every Nova request, or what is wrong with `microversion`.
    fn version_headers(microversion: &str) -> Result<HeaderMap, String> {
        let valid = microversion.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
        });
        if !valid {
            return Err(format!(
                "`{microversion}` is not a microversion like `2.53`"
            ));
        }
        let mut h = HeaderMap::new();
        let value = |v: String| HeaderValue::from_str(&v).map_err(|e| e.to_string());
        h.insert(
            HeaderName::from_static("openstack-api-version"),
            value(format!("compute {microversion}"))?,
        );
        // Nova before 2.27 reads only the legacy header; later ones accept both.
        h.insert(
            HeaderName::from_static("x-openstack-nova-api-version"),
            value(microversion.to_owned())?,
        );
        Ok(h)
    }

    /// Checks a configuration without side effects (no request, no client; `cloud.ca_file`
    /// is read): what [`Plugin::validate`] runs. Each error names its field
    /// (`microversion`, `page_size`, `cloud.auth.auth_url`, ...).
    pub fn check(config: &Config) -> Result<(), Error> {
        Self::version_headers(&config.microversion)
            .map_err(|e| Error::config_field("microversion", e))?;
        plugin::check_common(&config.cloud, config.page_size, &config.service_type)
    }

    /// Builds an instance from its configuration, checked first as [`NovaPlugin::check`]
    /// does (no request is made yet).
    pub fn from_config(config: Config, instance: &str) -> Result<Self, Error> {
        Self::check(&config)?;
        let headers = Self::version_headers(&config.microversion)
            .map_err(|e| Error::config_field("microversion", e))?;
        let session = plugin::session(&config.cloud)?;
        Ok(NovaPlugin {
            session,
            config,
            headers,
            instance: instance.to_owned(),
        })
    }

    /// The session (for tests and benchmarks).
    pub fn session(&self) -> &Session {
        &self.session
    }

    fn servers_url(&self, endpoint: &Url, marker: Option<&str>) -> Url {
        plugin::listing_url(
            endpoint,
            &["servers", "detail"],
            self.config.all_tenants,
            self.config.page_size,
            marker,
        )
    }

    /// Every server, page after page. Each page is parsed on this task (the next page's
    /// marker is in it), and turned into entities on the blocking pool while the next
    /// page downloads: building the properties costs about as much as parsing.
    async fn instances(&self, endpoint: &Url) -> Listing {
        let mut pager = Pager::new();
        let mut url = self.servers_url(endpoint, None);
        let mut conversions = Vec::new();
        loop {
            let page: ServersPage = self.session.get_json(&url, &self.headers).await?;
            let next = pager.next(&url, &page.servers_links)?;
            conversions.push(tokio::task::spawn_blocking(move || {
                live_servers(page.servers)
            }));
            match next {
                Some(marker) => url = self.servers_url(endpoint, Some(&marker)),
                None => break,
            }
        }
        let mut entities = Vec::new();
        for conversion in conversions {
            let page = conversion
                .await
                .map_err(|e| synchronizer_openstack::Error::Decode {
                    method: "GET",
                    url: display_url(&url),
                    status: 200,
                    message: format!("converting a page of servers failed: {e}"),
                })?;
            entities.extend(page);
        }
        tracing::debug!(
            pages = pager.pages(),
            servers = entities.len(),
            "listed servers"
        );
        Ok(entities)
    }

    async fn hosts(&self, endpoint: &Url) -> Listing {
        let mut url = join_path(endpoint, &["os-services"]);
        url.query_pairs_mut().append_pair("binary", "nova-compute");
        let (services, ips) = tokio::join!(
            self.session.get_json::<Services>(&url, &self.headers),
            self.host_ips(endpoint)
        );
        Ok(host_entities(services?, &ips?))
    }

    fn hypervisors_url(&self, endpoint: &Url, marker: Option<&str>) -> Url {
        let mut url = join_path(endpoint, &["os-hypervisors", "detail"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(limit) = self.config.page_size {
                q.append_pair("limit", &limit.to_string());
            }
            if let Some(marker) = marker {
                q.append_pair("marker", marker);
            }
        }
        url
    }

    /// Every hypervisor's `host_ip`, by its compute host, page after page.
    async fn host_ips(&self, endpoint: &Url) -> Result<HostIps, synchronizer_openstack::Error> {
        let mut pager = Pager::new();
        let mut url = self.hypervisors_url(endpoint, None);
        let mut ips = HostIps::new();
        loop {
            let page: HypervisorsPage = self.session.get_json(&url, &self.headers).await?;
            let next = pager.next(&url, &page.hypervisors_links)?;
            add_host_ips(page.hypervisors, &mut ips);
            match next {
                Some(marker) => url = self.hypervisors_url(endpoint, Some(&marker)),
                None => break,
            }
        }
        Ok(ips)
    }

    async fn zones(&self, endpoint: &Url) -> Listing {
        let url = join_path(endpoint, &["os-availability-zone", "detail"]);
        let zones: Zones = self.session.get_json(&url, &self.headers).await?;
        Ok(zone_entities(zones))
    }

    /// Explains a permanent failure of `entity_type` to the operator.
    fn explain(&self, entity_type: &str, e: &synchronizer_openstack::Error) -> String {
        if e.is_forbidden() {
            let what = match entity_type {
                INSTANCE if self.config.all_tenants => {
                    "the account lacks the role or policy to list every project's servers (`all_tenants=1`): Nova's policy `os_compute_api:servers:detail:get_all_tenants` (and `os_compute_api:os-extended-server-attributes` for the host) needs the admin role by default; give the user the `admin` role on its project, adjust Nova's policy, or set `all_tenants = false` to watch only this project"
                }
                INSTANCE => "the account lacks the role or policy to list servers",
                HOST => {
                    "the account lacks the role or policy to list compute services and hypervisors: Nova's policies `os_compute_api:os-services:list` and `os_compute_api:os-hypervisors:list-detail` need the admin role by default"
                }
                _ => {
                    "the account lacks the role or policy to list availability zones with their hosts: Nova's policy `os_compute_api:os-availability-zone:detail` needs the admin role by default"
                }
            };
            format!("{e}: {what}")
        } else {
            e.to_string()
        }
    }

    /// Collects a snapshot of `types` (all three when empty). See the crate docs for what
    /// fails and what is marked incomplete.
    pub async fn collect(&self, types: &[String]) -> Result<Snapshot, Error> {
        let wants = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
        let started = Instant::now();
        let endpoint = self
            .session
            .endpoint(&self.config.service_type)
            .await
            .map_err(|e| Error::failed(e.to_string()))?;
        let skip = || async { Ok(Vec::new()) };
        let (instances, hosts, zones) = tokio::join!(
            async {
                if wants(INSTANCE) {
                    self.instances(&endpoint).await
                } else {
                    skip().await
                }
            },
            async {
                if wants(HOST) {
                    self.hosts(&endpoint).await
                } else {
                    skip().await
                }
            },
            async {
                if wants(ZONE) {
                    self.zones(&endpoint).await
                } else {
                    skip().await
                }
            },
        );
        let listings = [(INSTANCE, instances), (HOST, hosts), (ZONE, zones)];
        let requested = listings.iter().filter(|(t, _)| wants(t)).count();
        let failed: Vec<(&str, String, bool)> = listings
            .iter()
            .filter(|(t, _)| wants(t))
            .filter_map(|(t, r)| {
                r.as_ref()
                    .err()
                    .map(|e| (*t, self.explain(t, e), e.is_permanent()))
            })
            .collect();
        if failed.iter().any(|(_, _, permanent)| *permanent)
            || (requested > 0 && failed.len() == requested)
        {
            let message = failed
                .iter()
                .map(|(t, m, _)| format!("{t}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(instance = %self.instance, error = %message, "Nova snapshot failed");
            // The host names the instance.
            return Err(Error::failed(message));
        }
        let mut entities = Vec::new();
        let mut counts = [0usize; 3];
        for (i, (_, listing)) in listings.into_iter().enumerate() {
            if let Ok(list) = listing {
                counts[i] = list.len();
                entities.extend(list);
            }
        }
        let mut snapshot = Snapshot::complete(entities);
        for (t, message, _) in failed {
            tracing::warn!(instance = %self.instance, entity_type = t, error = %message, "listing failed; this type is incomplete");
            snapshot = snapshot.mark_incomplete(t, message);
        }
        tracing::debug!(
            instance = %self.instance,
            instances = counts[0],
            hosts = counts[1],
            zones = counts[2],
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Nova snapshot collected"
        );
        Ok(snapshot)
    }
}

/// The entities of a page of servers, without the servers Nova lists as deleted (see the
/// crate docs).
fn live_servers(servers: Vec<ApiServer>) -> Vec<Entity> {
    let listed = servers.len();
    let entities: Vec<Entity> = servers
        .into_iter()
        .filter(|s| !s.is_deleted())
        .map(ApiServer::into_entity)
        .collect();
    if entities.len() < listed {
        tracing::debug!(
            deleted = listed - entities.len(),
            "servers listed as deleted left out"
        );
    }
    entities
}

/// Adds each hypervisor's `host_ip` under its compute host, unless the host has one.
fn add_host_ips(hypervisors: Vec<Hypervisor>, ips: &mut HostIps) {
    for h in hypervisors {
        let host = h.service.and_then(|s| s.host).filter(|h| !h.is_empty());
        let ip = h.host_ip.filter(|ip| !ip.is_empty());
        if let (Some(host), Some(ip)) = (host, ip) {
            ips.entry(host).or_insert(ip);
        }
    }
}

/// The `nova.host` entities of `GET /os-services?binary=nova-compute`, with the
/// addresses of `GET /os-hypervisors/detail`.
fn host_entities(services: Services, ips: &HostIps) -> Vec<Entity> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(services.services.len());
    for s in services.services {
        if s.binary.as_deref().is_some_and(|b| b != "nova-compute") {
            continue;
        }
        if !seen.insert(s.host.clone()) {
            tracing::warn!(host = %s.host, "two nova-compute services report the same host; keeping the first");
            continue;
        }
        let mut e = Entity::resource(HOST, &s.host).with_name(s.host.as_str());
        if let Some(state) = &s.state {
            e = e.with_state(state.as_str());
        }
        if let Some(zone) = &s.zone {
            e = e.with_relation(Relation::from("contains", format!("{ZONE}:{zone}")));
        }
        if let Some(ts) = s.updated_at.as_deref().and_then(parse_timestamp) {
            e = e.with_source_updated_micros(ts);
        }
        out.push(e.with_properties(serde_json::json!({
            "service_id": s.id,
            "binary": s.binary,
            "zone": s.zone,
            "status": s.status,
            "state": s.state,
            "disabled_reason": s.disabled_reason,
            "forced_down": s.forced_down,
            "host_ip": ips.get(&s.host),
        })));
    }
    out
}

/// The `nova.zone` entities of `GET /os-availability-zone/detail`, without `internal`.
fn zone_entities(zones: Zones) -> Vec<Entity> {
    zones
        .zones
        .into_iter()
        .filter(|z| z.name != "internal")
        .map(|z| {
            let available = z.state.is_some_and(|s| s.available);
            Entity::resource(ZONE, &z.name)
                .with_name(z.name.as_str())
                .with_state(if available {
                    "available"
                } else {
                    "unavailable"
                })
                .with_properties(serde_json::json!({ "available": available }))
        })
        .collect()
}

/// The page parsing and entity building of the collector, for the fuzz targets in
/// `fuzz/` (not part of the API): each takes an answer's body as the collector receives
/// it and goes through the same types and conversions.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A page of `GET /servers/detail` read at `page_url`: its entities and the marker of
    /// the next page.
    pub fn servers_page(
        page_url: &Url,
        body: &[u8],
    ) -> Result<(Vec<Entity>, Option<String>), String> {
        let page: ServersPage = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let next = Pager::new()
            .next(page_url, &page.servers_links)
            .map_err(|e| e.to_string())?;
        Ok((live_servers(page.servers), next))
    }

    /// The entities of a `GET /os-services?binary=nova-compute` answer, with the
    /// addresses of a `GET /os-hypervisors/detail` page.
    pub fn services(body: &[u8], hypervisors: &[u8]) -> Result<Vec<Entity>, String> {
        let services: Services = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let mut ips = HostIps::new();
        if let Ok(page) = serde_json::from_slice::<HypervisorsPage>(hypervisors) {
            add_host_ips(page.hypervisors, &mut ips);
        }
        Ok(host_entities(services, &ips))
    }

    /// Each compute host and its address, sorted by host.
    pub type HostAddresses = Vec<(String, String)>;

    /// A page of `GET /os-hypervisors/detail` read at `page_url`: each compute host's
    /// address, and the marker of the next page.
    pub fn hypervisors_page(
        page_url: &Url,
        body: &[u8],
    ) -> Result<(HostAddresses, Option<String>), String> {
        let page: HypervisorsPage = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let next = Pager::new()
            .next(page_url, &page.hypervisors_links)
            .map_err(|e| e.to_string())?;
        let mut ips = HostIps::new();
        add_host_ips(page.hypervisors, &mut ips);
        let mut ips: Vec<(String, String)> = ips.into_iter().collect();
        ips.sort();
        Ok((ips, next))
    }

    /// The entities of a `GET /os-availability-zone/detail` answer.
    pub fn zones(body: &[u8]) -> Result<Vec<Entity>, String> {
        serde_json::from_slice(body)
            .map(zone_entities)
            .map_err(|e| e.to_string())
    }
}

/// Whether servers carry their flavor's name (`flavor.original_name`, microversion 2.47).
fn flavor_has_name(microversion: &str) -> bool {
    let parse = |s: &str| s.parse::<u32>().ok();
    match microversion.split_once('.') {
        Some((major, minor)) => match (parse(major), parse(minor)) {
            (Some(major), Some(minor)) => (major, minor) >= (2, 47),
            _ => false,
        },
        None => false,
    }
}

impl Plugin for NovaPlugin {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "nova",
            version: env!("CARGO_PKG_VERSION"),
            description: "OpenStack Nova: instances, compute hosts and availability zones",
            entity_types: &[INSTANCE, HOST, ZONE],
            kind: PluginKind::Collector,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    /// Everything `new` checks ([`NovaPlugin::check`]).
    fn validate(config: &Config, _ctx: &Context) -> Result<(), Error> {
        NovaPlugin::check(config)
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        let plugin = NovaPlugin::from_config(config, &ctx.instance)?;
        if !flavor_has_name(&plugin.config.microversion) {
            tracing::warn!(
                instance = %ctx.instance,
                microversion = %plugin.config.microversion,
                "before compute microversion 2.47 servers carry no flavor name: the `flavor` property of instances stays null, and differs from what Nova's notifications say"
            );
        }
        tracing::info!(
            instance = %ctx.instance,
            session = ?plugin.session,
            microversion = %plugin.config.microversion,
            page_size = ?plugin.config.page_size,
            all_tenants = plugin.config.all_tenants,
            "Nova plugin ready"
        );
        Ok(plugin)
    }

    async fn snapshot(&self, types: &[String]) -> Result<Snapshot, Error> {
        self.collect(types).await
    }
}

synchronizer_plugin_api::export_plugin!(NovaPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        synchronizer_openstack::testing::plugin_config(extra)
    }

    fn ctx() -> Context {
        Context {
            instance: "nova-test".into(),
        }
    }

    /// The field and message `validate` refuses `extra` with.
    fn refused(extra: serde_json::Value) -> (String, String) {
        synchronizer_openstack::testing::refused::<NovaPlugin>(&config(extra), &ctx())
    }

    #[test]
    fn validate_passes_a_valid_config_and_the_sample() {
        assert_eq!(
            NovaPlugin::validate(&config(serde_json::json!({})), &ctx()),
            Ok(())
        );
        assert_eq!(
            NovaPlugin::validate(
                &config(serde_json::json!({"microversion": "2.1", "page_size": 1})),
                &ctx()
            ),
            Ok(())
        );
        let sample: toml::Value = toml::from_str(NovaPlugin::sample_config()).unwrap();
        let instance = &sample["instances"][0];
        assert_eq!(
            instance["library"].as_str(),
            Some("libsynchronizer_nova.so")
        );
        let c: Config =
            serde_json::from_value(serde_json::to_value(&instance["config"]).unwrap()).unwrap();
        assert_eq!(NovaPlugin::validate(&c, &ctx()), Ok(()));
    }

    #[test]
    fn validate_names_each_refused_field() {
        assert_eq!(
            refused(serde_json::json!({"microversion": "latest"})),
            (
                "microversion".to_owned(),
                "`latest` is not a microversion like `2.53`".to_owned()
            )
        );
        assert_eq!(
            refused(serde_json::json!({"microversion": "2."})).0,
            "microversion"
        );
        assert_eq!(
            refused(serde_json::json!({"page_size": 0})),
            ("page_size".to_owned(), "must be at least 1".to_owned())
        );
        assert_eq!(
            refused(serde_json::json!({"service_type": ""})).0,
            "service_type"
        );
        let cloud = |cloud: serde_json::Value| refused(serde_json::json!({ "cloud": cloud })).0;
        assert_eq!(
            cloud(
                serde_json::json!({"auth": {"username": "u", "password": "p", "project_name": "a"}})
            ),
            "cloud.auth.auth_url"
        );
        assert_eq!(
            cloud(
                serde_json::json!({"auth": {"auth_url": "http://k", "username": "u", "password": "p"}})
            ),
            "cloud.auth.project_name"
        );
        assert_eq!(
            cloud(serde_json::json!({"auth": {"token": "t"}})),
            "cloud.endpoint_override"
        );
        assert_eq!(
            cloud(
                serde_json::json!({"auth": {"token": "t"}, "endpoint_override": "http://n/v2.1", "ca_file": "/nonexistent/ca.pem"})
            ),
            "cloud.ca_file"
        );
        // `new` refuses the same, through the SDK's order (validate first) or directly.
        let e =
            NovaPlugin::from_config(config(serde_json::json!({"page_size": 0})), "n").unwrap_err();
        assert_eq!(
            (e.field(), e.message()),
            (Some("page_size"), "must be at least 1")
        );
    }
}
