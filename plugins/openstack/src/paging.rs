//! Following OpenStack's marker pagination: Nova's `servers_links`, Heat's `links`, each
//! a list of `{rel, href}` where `rel = "next"` points at the next page with a `marker`.
//!
//! Only the marker is taken from the link: the next request is built on the configured
//! endpoint, because a service behind a proxy or TLS terminator writes its own idea of
//! its URL into `href` (an internal host name, `http` for `https`).

use std::collections::HashSet;

use reqwest::Url;
use serde::Deserialize;

use crate::error::Error;
use crate::session::display_url;

/// One link of a paginated answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Link {
    /// `next`, `self`, `bookmark`, ...
    #[serde(default)]
    pub rel: String,
    /// Where it points.
    #[serde(default)]
    pub href: String,
}

/// Tracks the markers of one listing so that a service that serves the same page again
/// cannot keep the plugin looping.
#[derive(Debug, Default)]
pub struct Pager {
    seen: HashSet<String>,
    pages: usize,
}

impl Pager {
    /// A pager for a new listing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages read so far.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Records a page read from `page_url` with these links; returns the marker of the
    /// next page, or `None` after the last page.
    pub fn next(&mut self, page_url: &Url, links: &[Link]) -> Result<Option<String>, Error> {
        self.pages += 1;
        let Some(next) = links.iter().find(|l| l.rel == "next") else {
            return Ok(None);
        };
        let broken = |message: String| Error::Pagination {
            url: display_url(page_url),
            message,
        };
        let href = page_url
            .join(&next.href)
            .map_err(|e| broken(format!("the next link `{}` is not a URL: {e}", next.href)))?;
        let marker = href
            .query_pairs()
            .find(|(k, _)| k == "marker")
            .map(|(_, v)| v.into_owned())
            .ok_or_else(|| {
                broken(format!(
                    "the next link `{}` has no marker",
                    display_url(&href)
                ))
            })?;
        if !self.seen.insert(marker.clone()) {
            return Err(broken(format!(
                "marker `{marker}` came back after {} pages: the service repeats itself",
                self.pages
            )));
        }
        Ok(Some(marker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(href: &str) -> Vec<Link> {
        vec![Link {
            rel: "next".into(),
            href: href.into(),
        }]
    }

    #[test]
    fn takes_the_marker_and_stops_loops() {
        let url = Url::parse("https://nova.example/v2.1/servers/detail?all_tenants=1").unwrap();
        let mut p = Pager::new();
        let m = p
            .next(
                &url,
                &next("http://10.0.0.5:8774/v2.1/servers/detail?all_tenants=1&limit=2&marker=abc"),
            )
            .unwrap();
        assert_eq!(m.as_deref(), Some("abc"));
        let err = p
            .next(&url, &next("/v2.1/servers/detail?marker=abc"))
            .unwrap_err();
        assert!(err.to_string().contains("marker `abc` came back"), "{err}");
        assert_eq!(p.next(&url, &[]).unwrap(), None);
        let err = Pager::new()
            .next(&url, &next("/v2.1/servers/detail?limit=2"))
            .unwrap_err();
        assert!(err.to_string().contains("has no marker"), "{err}");
    }
}
