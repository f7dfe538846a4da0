//! What every OpenStack collector plugin (nova, heat, cinder, neutron) does the same way
//! at its edges: the checks of the options they share, the session built from `cloud`
//! with errors naming their field, and the listing URL with its paging parameters.

use reqwest::Url;
use synchronizer_plugin_api::Error;

use crate::{CloudConfig, ConfigError, Session, join_path};

/// A `cloud.*` option that is wrong, as the plugin's configuration error naming it.
pub fn cloud_error(e: ConfigError) -> Error {
    Error::config_field(e.field_in("cloud"), e.message)
}

/// Checks the options every collector has: `page_size` (at least 1 when set),
/// `service_type` (not empty) and `cloud` (no request; `cloud.ca_file` is read).
pub fn check_common(
    cloud: &CloudConfig,
    page_size: Option<u32>,
    service_type: &str,
) -> Result<(), Error> {
    if page_size == Some(0) {
        return Err(Error::config_field("page_size", "must be at least 1"));
    }
    if service_type.is_empty() {
        return Err(Error::config_field("service_type", "must not be empty"));
    }
    cloud.validate().map_err(cloud_error)
}

/// The session of `cloud` (no request yet); a wrong option is named as `cloud.*`.
pub fn session(cloud: &CloudConfig) -> Result<Session, Error> {
    Session::new(cloud).map_err(|e| match e {
        crate::Error::Field(f) => cloud_error(f),
        e => Error::config(format!("cloud: {e}")),
    })
}

/// `endpoint` joined with `path`, with the listing's parameters: `all_tenants=1` when
/// asked, `limit` (the page size) and `marker` when set.
pub fn listing_url(
    endpoint: &Url,
    path: &[&str],
    all_tenants: bool,
    page_size: Option<u32>,
    marker: Option<&str>,
) -> Url {
    let mut url = join_path(endpoint, path);
    if all_tenants || page_size.is_some() || marker.is_some() {
        let mut q = url.query_pairs_mut();
        if all_tenants {
            q.append_pair("all_tenants", "1");
        }
        if let Some(limit) = page_size {
            q.append_pair("limit", &limit.to_string());
        }
        if let Some(marker) = marker {
            q.append_pair("marker", marker);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_urls_carry_only_the_parameters_asked_for() {
        let base = Url::parse("http://127.0.0.1:8776/v3/p1").unwrap();
        let plain = listing_url(&base, &["volumes", "detail"], false, None, None);
        assert_eq!(plain.as_str(), "http://127.0.0.1:8776/v3/p1/volumes/detail");
        let full = listing_url(&base, &["volumes", "detail"], true, Some(2), Some("a b"));
        assert_eq!(
            full.as_str(),
            "http://127.0.0.1:8776/v3/p1/volumes/detail?all_tenants=1&limit=2&marker=a+b"
        );
    }
}
