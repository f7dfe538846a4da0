//! The Cinder collector plugin: the volumes of one cloud region (`cinder.volume`), as
//! complete snapshots for the synchronizer's baseline.
//!
//! What it asks Cinder (each request with `OpenStack-API-Version: volume <microversion>`):
//! `GET <endpoint>/volumes/detail?all_tenants=1[&limit=N]`, following `volumes_links`
//! (marker pagination) to the last page; the page after a full last page is empty and has
//! no `volumes_links`. The entity is the shared model of
//! [`synchronizer_openstack::cinder_volume`], which the bus plugin builds from Cinder's
//! notifications too, so that a poll and a notification of the same state hash alike.
//!
//! Failure semantics (the host deletes nothing for a failed snapshot): a 5xx, a timeout,
//! a transport error or a page that does not parse fails the snapshot; so do a 401 after
//! one re-authentication, a 403 (the account lacks the policy for `all_tenants`, which
//! the error names), a Keystone refusal and a missing endpoint. A partial listing is
//! never returned.
//!
//! One instance watches one cloud region: run several instances for several regions.

use std::time::Instant;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use synchronizer_openstack::cinder_volume::ApiVolume;
use synchronizer_openstack::{CloudConfig, Link, Pager, Session, display_url, plugin};
use synchronizer_plugin_api::{Context, Entity, Error, Plugin, PluginInfo, PluginKind, Snapshot};

/// Entity type of a Cinder volume.
pub const VOLUME: &str = synchronizer_openstack::cinder_volume::VOLUME;

/// The properties of a volume: the shared model's.
pub use synchronizer_openstack::cinder_volume::PROPERTIES as VOLUME_PROPERTIES;

/// The policy Cinder checks for `all_tenants=1` (admin by default).
pub const ALL_TENANTS_POLICY: &str = "volume_extension:volume_tenant_attribute";

/// The instance's configuration (`[instances.config]`). Every option is documented in
/// the crate's README.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cloud: credentials, region, interface, endpoint override, TLS, timeouts.
    pub cloud: CloudConfig,
    /// The block storage API microversion sent with every request.
    #[serde(default = "default_microversion")]
    pub microversion: String,
    /// Volumes per page (`limit`); Cinder caps it at `osapi_max_limit` (1000 by default)
    /// and pages are followed either way. Unset: Cinder's default page size.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// List the volumes of every project (`all_tenants=1`, needs the admin role).
    #[serde(default = "yes")]
    pub all_tenants: bool,
    /// With `all_tenants`: the roles that let the account list every project's volumes
    /// (`admin` under Cinder's default policy). An account whose token has none of them
    /// fails every snapshot with an error saying so, because Cinder does not refuse such
    /// a listing: it silently lists the account's own project only, and the other
    /// projects' volumes would be reported deleted. Name the role a custom policy grants
    /// instead, or set `[]` to turn the check off.
    #[serde(default = "default_all_tenants_roles")]
    pub all_tenants_roles: Vec<String>,
    /// The catalog service type of Cinder.
    #[serde(default = "default_service_type")]
    pub service_type: String,
}

fn default_microversion() -> String {
    "3.71".to_owned()
}

fn default_all_tenants_roles() -> Vec<String> {
    vec!["admin".to_owned()]
}

fn default_service_type() -> String {
    "volumev3".to_owned()
}

fn yes() -> bool {
    true
}

/// The plugin: one cloud region's Cinder.
#[derive(Debug)]
pub struct CinderPlugin {
    session: Session,
    config: Config,
    headers: HeaderMap,
    instance: String,
}

/// One page of `GET /volumes/detail`.
#[derive(Deserialize)]
struct VolumesPage {
    volumes: Vec<ApiVolume>,
    #[serde(default)]
    volumes_links: Vec<Link>,
}

/// A field of the `cloud` table, as a field of this plugin's table.
/// `(major, minor)` of a microversion like `3.71`.
fn parse_microversion(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl CinderPlugin {
    /// The headers sent with every Cinder request, or what is wrong with `microversion`.
    fn version_headers(microversion: &str) -> Result<HeaderMap, String> {
        match parse_microversion(microversion) {
            Some((3, _)) => {}
            _ => {
                return Err(format!(
                    "`{microversion}` is not a block storage v3 microversion like `3.71`"
                ));
            }
        }
        let mut h = HeaderMap::new();
        let value =
            HeaderValue::from_str(&format!("volume {microversion}")).map_err(|e| e.to_string())?;
        h.insert(HeaderName::from_static("openstack-api-version"), value);
        Ok(h)
    }

    /// Checks a configuration without side effects (no request; `cloud.ca_file` is read):
    /// what [`Plugin::validate`] runs. Each error names its field.
    pub fn check(config: &Config) -> Result<(), Error> {
        Self::version_headers(&config.microversion)
            .map_err(|e| Error::config_field("microversion", e))?;
        plugin::check_common(&config.cloud, config.page_size, &config.service_type)
    }

    /// Builds an instance from its configuration, checked first as [`CinderPlugin::check`]
    /// does (no request is made yet).
    pub fn from_config(config: Config, instance: &str) -> Result<Self, Error> {
        Self::check(&config)?;
        let headers = Self::version_headers(&config.microversion)
            .map_err(|e| Error::config_field("microversion", e))?;
        let session = plugin::session(&config.cloud)?;
        Ok(CinderPlugin {
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

    fn volumes_url(&self, endpoint: &Url, marker: Option<&str>) -> Url {
        plugin::listing_url(
            endpoint,
            &["volumes", "detail"],
            self.config.all_tenants,
            self.config.page_size,
            marker,
        )
    }

    /// Every volume, page after page; each page is turned into entities on the blocking
    /// pool while the next one downloads.
    async fn volumes(&self, endpoint: &Url) -> Result<Vec<Entity>, synchronizer_openstack::Error> {
        let mut pager = Pager::new();
        let mut url = self.volumes_url(endpoint, None);
        let mut conversions = Vec::new();
        loop {
            let page: VolumesPage = self.session.get_json(&url, &self.headers).await?;
            let next = pager.next(&url, &page.volumes_links)?;
            conversions.push(tokio::task::spawn_blocking(move || {
                live_volumes(page.volumes)
            }));
            match next {
                Some(marker) => url = self.volumes_url(endpoint, Some(&marker)),
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
                    message: format!("converting a page of volumes failed: {e}"),
                })?;
            entities.extend(page);
        }
        tracing::debug!(
            pages = pager.pages(),
            volumes = entities.len(),
            "listed volumes"
        );
        Ok(entities)
    }

    /// Explains a failure to the operator (a 403 names the policy to grant).
    fn explain(&self, e: &synchronizer_openstack::Error) -> String {
        if e.is_forbidden() {
            if self.config.all_tenants {
                format!(
                    "{e}: the account lacks the role or policy to list every project's volumes (`all_tenants=1`): Cinder's policy `{ALL_TENANTS_POLICY}` (and `volume:get_all` with `all_tenants`) needs the admin role by default; give the user the `admin` role on its project, adjust Cinder's policy, or set `all_tenants = false` to watch only this project"
                )
            } else {
                format!(
                    "{e}: the account lacks the role or policy to list volumes (Cinder's policy `volume:get_all`)"
                )
            }
        } else {
            e.to_string()
        }
    }

    /// With `all_tenants`, fails unless the token has one of `all_tenants_roles`: Cinder
    /// answers a non-admin's `all_tenants=1` with its own project only (bug #1917574),
    /// a snapshot that would delete every other project's volumes.
    async fn check_all_tenants_roles(&self) -> Result<(), Error> {
        let wanted = &self.config.all_tenants_roles;
        if !self.config.all_tenants || wanted.is_empty() {
            return Ok(());
        }
        let roles = self
            .session
            .roles()
            .await
            .map_err(|e| Error::failed(format!("{VOLUME}: {e}")))?;
        if roles
            .iter()
            .any(|r| wanted.iter().any(|w| w.eq_ignore_ascii_case(r)))
        {
            return Ok(());
        }
        let message = format!(
            "{VOLUME}: the account's roles ({}) include none of `all_tenants_roles` ({}): Cinder would not refuse `all_tenants=1` but list this project's volumes only, and every other project's volumes would be reported deleted; give the user the `admin` role, name the role your Cinder policy grants in `all_tenants_roles`, or set `all_tenants = false` to watch only this project",
            if roles.is_empty() {
                "none".to_owned()
            } else {
                roles.join(", ")
            },
            wanted.join(", ")
        );
        tracing::warn!(instance = %self.instance, error = %message, "Cinder snapshot refused");
        Err(Error::failed(message))
    }

    /// Collects a snapshot of the volumes (`types` empty or naming `cinder.volume`).
    pub async fn collect(&self, types: &[String]) -> Result<Snapshot, Error> {
        if !types.is_empty() && !types.iter().any(|t| t == VOLUME) {
            return Ok(Snapshot::complete(Vec::new()));
        }
        let started = Instant::now();
        let endpoint = self
            .session
            .endpoint(&self.config.service_type)
            .await
            .map_err(|e| Error::failed(e.to_string()))?;
        self.check_all_tenants_roles().await?;
        match self.volumes(&endpoint).await {
            Ok(entities) => {
                tracing::debug!(
                    instance = %self.instance,
                    volumes = entities.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Cinder snapshot collected"
                );
                Ok(Snapshot::complete(entities))
            }
            Err(e) => {
                let message = format!("{VOLUME}: {}", self.explain(&e));
                tracing::warn!(instance = %self.instance, error = %message, "Cinder snapshot failed");
                Err(Error::failed(message))
            }
        }
    }
}

/// The entities of a page of volumes, without any listed as deleted.
fn live_volumes(volumes: Vec<ApiVolume>) -> Vec<Entity> {
    volumes
        .into_iter()
        .filter(|v| !v.is_deleted())
        .map(ApiVolume::into_entity)
        .collect()
}

/// The page parsing and entity building of the collector, for the fuzz targets in
/// `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A page of `GET /volumes/detail` read at `page_url`: its entities and the marker of
    /// the next page.
    pub fn volumes_page(
        page_url: &Url,
        body: &[u8],
    ) -> Result<(Vec<Entity>, Option<String>), String> {
        let page: VolumesPage = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let next = Pager::new()
            .next(page_url, &page.volumes_links)
            .map_err(|e| e.to_string())?;
        Ok((live_volumes(page.volumes), next))
    }
}

impl Plugin for CinderPlugin {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "cinder",
            version: env!("CARGO_PKG_VERSION"),
            description: "OpenStack Cinder: block storage volumes",
            entity_types: &[VOLUME],
            kind: PluginKind::Collector,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    /// Everything `new` checks ([`CinderPlugin::check`]).
    fn validate(config: &Config, _ctx: &Context) -> Result<(), Error> {
        CinderPlugin::check(config)
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        let plugin = CinderPlugin::from_config(config, &ctx.instance)?;
        if parse_microversion(&plugin.config.microversion).is_some_and(|v| v < (3, 63)) {
            tracing::warn!(
                instance = %ctx.instance,
                microversion = %plugin.config.microversion,
                "before block storage microversion 3.63 volumes carry no volume_type_id: the `volume_type_id` property stays null, and differs from what Cinder's notifications say"
            );
        }
        tracing::info!(
            instance = %ctx.instance,
            session = ?plugin.session,
            microversion = %plugin.config.microversion,
            page_size = ?plugin.config.page_size,
            all_tenants = plugin.config.all_tenants,
            "Cinder plugin ready"
        );
        Ok(plugin)
    }

    async fn snapshot(&self, types: &[String]) -> Result<Snapshot, Error> {
        self.collect(types).await
    }
}

synchronizer_plugin_api::export_plugin!(CinderPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Config {
        synchronizer_openstack::testing::plugin_config(extra)
    }

    fn ctx() -> Context {
        Context {
            instance: "cinder-test".into(),
        }
    }

    /// The field and message `validate` refuses `extra` with.
    fn refused(extra: serde_json::Value) -> (String, String) {
        synchronizer_openstack::testing::refused::<CinderPlugin>(&config(extra), &ctx())
    }

    #[test]
    fn validate_passes_a_valid_config_and_the_sample() {
        assert_eq!(
            CinderPlugin::validate(&config(serde_json::json!({})), &ctx()),
            Ok(())
        );
        let sample: toml::Value = toml::from_str(CinderPlugin::sample_config()).unwrap();
        let instance = &sample["instances"][0];
        assert_eq!(
            instance["library"].as_str(),
            Some("libsynchronizer_cinder.so")
        );
        let c: Config =
            serde_json::from_value(serde_json::to_value(&instance["config"]).unwrap()).unwrap();
        assert_eq!(CinderPlugin::validate(&c, &ctx()), Ok(()));
    }

    #[test]
    fn validate_names_each_refused_field() {
        assert_eq!(
            refused(serde_json::json!({"microversion": "2.53"})),
            (
                "microversion".to_owned(),
                "`2.53` is not a block storage v3 microversion like `3.71`".to_owned()
            )
        );
        assert_eq!(
            refused(serde_json::json!({"microversion": "latest"})).0,
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
        assert_eq!(
            refused(serde_json::json!({"cloud": {"auth": {"token": "t"}}})).0,
            "cloud.endpoint_override"
        );
        let e = CinderPlugin::from_config(config(serde_json::json!({"page_size": 0})), "c")
            .unwrap_err();
        assert_eq!(e.field(), Some("page_size"));
    }
}
