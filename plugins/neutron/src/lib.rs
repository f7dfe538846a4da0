//! The Neutron collector plugin: the networks (`neutron.network`) and ports
//! (`neutron.port`) of one cloud region, as complete snapshots.
//!
//! What it asks Neutron: `GET <endpoint>/v2.0/networks[?limit=N]` and
//! `GET <endpoint>/v2.0/ports[?limit=N]`, following `networks_links` / `ports_links`
//! (`rel: next`, marker pagination; Neutron adds `rel: previous` too, even on the first
//! page) to the last page. An admin token sees every project's objects (Neutron has no
//! `all_tenants`). The entities are the shared models of
//! [`synchronizer_openstack::neutron`], which the bus plugin builds from Neutron's
//! notifications too.
//!
//! Failure semantics: a 5xx, a timeout or a page that does not parse fails its type (the
//! snapshot is complete for the other type, the failed one marked incomplete; both failed:
//! an error); a 401 after one re-authentication, a 403, a Keystone refusal or a missing
//! endpoint fail the whole snapshot. A partial listing is never returned.

use reqwest::Url;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use synchronizer_openstack::neutron::{ApiNetwork, ApiPort};
use synchronizer_openstack::{CloudConfig, Link, Pager, Session, display_url, plugin};
use synchronizer_plugin_api::{Context, Entity, Error, Plugin, PluginInfo, PluginKind, Snapshot};

/// Entity type of a Neutron network.
pub const NETWORK: &str = synchronizer_openstack::neutron::NETWORK;
/// Entity type of a Neutron port.
pub const PORT: &str = synchronizer_openstack::neutron::PORT;

/// The instance's configuration (`[instances.config]`). Every option is documented in
/// the crate's README.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cloud: credentials, region, interface, endpoint override, TLS, timeouts.
    pub cloud: CloudConfig,
    /// Objects per page (`limit`). Unset: Neutron's default (no pagination unless the
    /// server sets `pagination_max_limit`).
    #[serde(default)]
    pub page_size: Option<u32>,
    /// The catalog service type of Neutron.
    #[serde(default = "default_service_type")]
    pub service_type: String,
}

fn default_service_type() -> String {
    "network".to_owned()
}

/// The plugin: one cloud region's Neutron.
#[derive(Debug)]
pub struct NeutronPlugin {
    session: Session,
    config: Config,
    instance: String,
}

#[derive(Deserialize)]
struct NetworksPage {
    networks: Vec<ApiNetwork>,
    #[serde(default)]
    networks_links: Vec<Link>,
}

#[derive(Deserialize)]
struct PortsPage {
    ports: Vec<ApiPort>,
    #[serde(default)]
    ports_links: Vec<Link>,
}

/// A page of one collection: its entities and links.
trait Page: DeserializeOwned + Send + 'static {
    fn split(self) -> (Vec<Entity>, Vec<Link>);
}

impl Page for NetworksPage {
    fn split(self) -> (Vec<Entity>, Vec<Link>) {
        (
            self.networks
                .into_iter()
                .map(|n| n.into_entity(None))
                .collect(),
            self.networks_links,
        )
    }
}

impl Page for PortsPage {
    fn split(self) -> (Vec<Entity>, Vec<Link>) {
        (
            self.ports
                .into_iter()
                .map(|p| p.into_entity(None))
                .collect(),
            self.ports_links,
        )
    }
}

type Listing = Result<Vec<Entity>, synchronizer_openstack::Error>;

impl NeutronPlugin {
    /// Checks a configuration without side effects: what [`Plugin::validate`] runs.
    pub fn check(config: &Config) -> Result<(), Error> {
        plugin::check_common(&config.cloud, config.page_size, &config.service_type)
    }

    /// Builds an instance from its configuration (no request is made yet).
    pub fn from_config(config: Config, instance: &str) -> Result<Self, Error> {
        Self::check(&config)?;
        let session = plugin::session(&config.cloud)?;
        Ok(NeutronPlugin {
            session,
            config,
            instance: instance.to_owned(),
        })
    }

    /// The session (for tests and benchmarks).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// `<endpoint>/v2.0/<collection>`; the catalog may give the endpoint with or
    /// without `/v2.0`.
    fn url(&self, endpoint: &Url, collection: &str, marker: Option<&str>) -> Url {
        let versioned = endpoint.path().trim_end_matches('/').ends_with("/v2.0");
        let path: &[&str] = if versioned {
            &[collection]
        } else {
            &["v2.0", collection]
        };
        plugin::listing_url(endpoint, path, false, self.config.page_size, marker)
    }

    async fn list<P: Page>(&self, endpoint: &Url, collection: &str) -> Listing {
        let mut pager = Pager::new();
        let mut url = self.url(endpoint, collection, None);
        let mut conversions = Vec::new();
        let headers = HeaderMap::new();
        loop {
            let page: P = self.session.get_json(&url, &headers).await?;
            let handle = tokio::task::spawn_blocking(move || page.split());
            let (entities, links) =
                handle
                    .await
                    .map_err(|e| synchronizer_openstack::Error::Decode {
                        method: "GET",
                        url: display_url(&url),
                        status: 200,
                        message: format!("converting a page of {collection} failed: {e}"),
                    })?;
            let next = pager.next(&url, &links)?;
            conversions.push(entities);
            match next {
                Some(marker) => url = self.url(endpoint, collection, Some(&marker)),
                None => break,
            }
        }
        Ok(conversions.into_iter().flatten().collect())
    }

    fn explain(entity_type: &str, e: &synchronizer_openstack::Error) -> String {
        if e.is_forbidden() {
            let policy = if entity_type == NETWORK {
                "get_network"
            } else {
                "get_port"
            };
            format!(
                "{e}: the account lacks the role or policy to list every project's objects: Neutron's policy `{policy}` shows other projects' objects to the admin role only; give the user the `admin` role on its project or adjust Neutron's policy"
            )
        } else {
            e.to_string()
        }
    }

    /// Collects a snapshot of `types` (both when empty).
    pub async fn collect(&self, types: &[String]) -> Result<Snapshot, Error> {
        let wants = |t: &str| types.is_empty() || types.iter().any(|x| x == t);
        if !wants(NETWORK) && !wants(PORT) {
            return Ok(Snapshot::complete(Vec::new()));
        }
        let endpoint = self
            .session
            .endpoint(&self.config.service_type)
            .await
            .map_err(|e| Error::failed(e.to_string()))?;
        let (networks, ports) = tokio::join!(
            async {
                if wants(NETWORK) {
                    self.list::<NetworksPage>(&endpoint, "networks").await
                } else {
                    Ok(Vec::new())
                }
            },
            async {
                if wants(PORT) {
                    self.list::<PortsPage>(&endpoint, "ports").await
                } else {
                    Ok(Vec::new())
                }
            },
        );
        let listings = [(NETWORK, networks), (PORT, ports)];
        let requested = listings.iter().filter(|(t, _)| wants(t)).count();
        let failed: Vec<(&str, String, bool)> = listings
            .iter()
            .filter(|(t, _)| wants(t))
            .filter_map(|(t, r)| {
                r.as_ref()
                    .err()
                    .map(|e| (*t, Self::explain(t, e), e.is_permanent()))
            })
            .collect();
        if failed.iter().any(|(_, _, p)| *p) || failed.len() == requested {
            let message = failed
                .iter()
                .map(|(t, m, _)| format!("{t}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(instance = %self.instance, error = %message, "Neutron snapshot failed");
            return Err(Error::failed(message));
        }
        let mut entities = Vec::new();
        for (_, listing) in listings {
            if let Ok(list) = listing {
                entities.extend(list);
            }
        }
        let mut snapshot = Snapshot::complete(entities);
        for (t, message, _) in failed {
            tracing::warn!(instance = %self.instance, entity_type = t, error = %message, "listing failed; this type is incomplete");
            snapshot = snapshot.mark_incomplete(t, message);
        }
        Ok(snapshot)
    }
}

/// The page parsing and entity building of the collector, for the fuzz targets in
/// `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    fn page<P: Page>(page_url: &Url, body: &[u8]) -> Result<(Vec<Entity>, Option<String>), String> {
        let page: P = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let (entities, links) = page.split();
        let next = Pager::new()
            .next(page_url, &links)
            .map_err(|e| e.to_string())?;
        Ok((entities, next))
    }

    /// A page of `GET /v2.0/networks`.
    pub fn networks_page(
        page_url: &Url,
        body: &[u8],
    ) -> Result<(Vec<Entity>, Option<String>), String> {
        page::<NetworksPage>(page_url, body)
    }

    /// A page of `GET /v2.0/ports`.
    pub fn ports_page(
        page_url: &Url,
        body: &[u8],
    ) -> Result<(Vec<Entity>, Option<String>), String> {
        page::<PortsPage>(page_url, body)
    }
}

impl Plugin for NeutronPlugin {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "neutron",
            version: env!("CARGO_PKG_VERSION"),
            description: "OpenStack Neutron: networks and ports",
            entity_types: &[NETWORK, PORT],
            kind: PluginKind::Collector,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    fn validate(config: &Config, _ctx: &Context) -> Result<(), Error> {
        NeutronPlugin::check(config)
    }

    fn new(config: Config, ctx: &Context) -> Result<Self, Error> {
        let plugin = NeutronPlugin::from_config(config, &ctx.instance)?;
        tracing::info!(
            instance = %ctx.instance,
            session = ?plugin.session,
            page_size = ?plugin.config.page_size,
            "Neutron plugin ready"
        );
        Ok(plugin)
    }

    async fn snapshot(&self, types: &[String]) -> Result<Snapshot, Error> {
        self.collect(types).await
    }
}

synchronizer_plugin_api::export_plugin!(NeutronPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_passes_the_sample_and_names_refused_fields() {
        let ctx = Context {
            instance: "neutron-test".into(),
        };
        let sample: toml::Value = toml::from_str(NeutronPlugin::sample_config()).unwrap();
        let instance = &sample["instances"][0];
        assert_eq!(
            instance["library"].as_str(),
            Some("libsynchronizer_neutron.so")
        );
        let mut c: Config =
            serde_json::from_value(serde_json::to_value(&instance["config"]).unwrap()).unwrap();
        assert_eq!(NeutronPlugin::validate(&c, &ctx), Ok(()));
        c.page_size = Some(0);
        let e = NeutronPlugin::validate(&c, &ctx).unwrap_err();
        assert_eq!(e.field(), Some("page_size"));
        c.page_size = None;
        c.service_type = String::new();
        let e = NeutronPlugin::validate(&c, &ctx).unwrap_err();
        assert_eq!(e.field(), Some("service_type"));
    }
}
