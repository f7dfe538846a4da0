//! The service catalog of a Keystone v3 token, and picking one endpoint from it by
//! service type, interface and region.

use reqwest::Url;
use serde::Deserialize;

use crate::config::Interface;
use crate::error::Error;

/// One service of the catalog.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CatalogService {
    /// `compute`, `orchestration`, `identity`, ...
    #[serde(rename = "type")]
    pub service_type: String,
    /// `nova`, `heat`, ...
    #[serde(default)]
    pub name: Option<String>,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<CatalogEndpoint>,
}

/// One endpoint of a catalog service.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct CatalogEndpoint {
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// The region's id.
    #[serde(default)]
    pub region_id: Option<String>,
    /// The region (deprecated twin of `region_id`).
    #[serde(default)]
    pub region: Option<String>,
    /// The URL.
    pub url: String,
}

impl CatalogEndpoint {
    fn region_name(&self) -> Option<&str> {
        self.region_id.as_deref().or(self.region.as_deref())
    }

    fn in_region(&self, region: &str) -> bool {
        self.region_id.as_deref() == Some(region) || self.region.as_deref() == Some(region)
    }
}

/// The URL of the `interface` endpoint of `service_type` in `region`. Without a region,
/// the catalog must offer the service in one region only: picking one of several would
/// silently watch the wrong cloud.
pub fn select_endpoint(
    catalog: &[CatalogService],
    service_type: &str,
    interface: Interface,
    region: Option<&str>,
) -> Result<Url, Error> {
    let of_type = || {
        catalog
            .iter()
            .filter(|s| s.service_type == service_type)
            .flat_map(|s| s.endpoints.iter())
    };
    let candidates: Vec<&CatalogEndpoint> = of_type()
        .filter(|e| e.interface == interface.as_str())
        .filter(|e| region.is_none_or(|r| e.in_region(r)))
        .collect();
    let Some(first) = candidates.first() else {
        let available: Vec<String> = of_type()
            .map(|e| {
                format!(
                    "{}@{}",
                    e.interface,
                    e.region_name().unwrap_or("(no region)")
                )
            })
            .collect();
        return Err(Error::Catalog {
            service_type: service_type.to_owned(),
            interface: interface.as_str(),
            region: region.map(str::to_owned),
            available: if available.is_empty() {
                "nothing".to_owned()
            } else {
                available.join(", ")
            },
        });
    };
    if region.is_none() {
        let mut regions: Vec<&str> = candidates.iter().filter_map(|e| e.region_name()).collect();
        regions.sort_unstable();
        regions.dedup();
        if regions.len() > 1 {
            return Err(Error::AmbiguousRegion {
                service_type: service_type.to_owned(),
                interface: interface.as_str(),
                regions: regions.join(", "),
            });
        }
    }
    Url::parse(&first.url).map_err(|e| {
        Error::Config(format!(
            "the catalog's {} endpoint of `{service_type}` is not a URL ({}): {e}",
            interface.as_str(),
            first.url
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(interface: &str, region: &str, url: &str) -> CatalogEndpoint {
        CatalogEndpoint {
            interface: interface.into(),
            region_id: Some(region.into()),
            region: Some(region.into()),
            url: url.into(),
        }
    }

    fn catalog() -> Vec<CatalogService> {
        vec![
            CatalogService {
                service_type: "identity".into(),
                name: Some("keystone".into()),
                endpoints: vec![ep("public", "RegionOne", "http://k:5000/v3")],
            },
            CatalogService {
                service_type: "compute".into(),
                name: Some("nova".into()),
                endpoints: vec![
                    ep("public", "RegionOne", "https://nova.one/v2.1"),
                    ep("internal", "RegionOne", "http://nova-int.one:8774/v2.1"),
                    ep("public", "RegionTwo", "https://nova.two/v2.1"),
                ],
            },
        ]
    }

    #[test]
    fn picks_by_type_interface_and_region() {
        let c = catalog();
        let u = select_endpoint(&c, "compute", Interface::Internal, None).unwrap();
        assert_eq!(u.as_str(), "http://nova-int.one:8774/v2.1");
        let u = select_endpoint(&c, "compute", Interface::Public, Some("RegionTwo")).unwrap();
        assert_eq!(u.as_str(), "https://nova.two/v2.1");
    }

    #[test]
    fn several_regions_without_a_region_is_an_error() {
        let err = select_endpoint(&catalog(), "compute", Interface::Public, None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("RegionOne, RegionTwo") && text.contains("cloud.region"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_endpoint_lists_what_there_is() {
        let err = select_endpoint(&catalog(), "compute", Interface::Admin, Some("RegionOne"))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no admin endpoint for service type `compute` in region `RegionOne`"),
            "{text}"
        );
        assert!(
            text.contains("public@RegionOne, internal@RegionOne, public@RegionTwo"),
            "{text}"
        );
        let err =
            select_endpoint(&catalog(), "orchestration", Interface::Public, None).unwrap_err();
        assert!(err.to_string().contains("available: nothing"), "{err}");
    }
}
