//! A loopback HTTP/1.1 server for the plugins' tests and benchmarks (feature
//! `test-server`): real HTTP on 127.0.0.1, answers decided by a closure, every request
//! logged. It replays captured OpenStack responses; the failure cases a real service will
//! not produce on demand (a 401 mid-run, a 500 mid-pagination, a slow answer) are a few
//! lines in the closure.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::time::{format_timestamp, now_micros};

/// A request as the server received it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query, if any.
    pub query: Option<String>,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Request {
    /// The first value of query parameter `name`, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        reqwest::Url::parse(&format!("http://x/?{q}"))
            .ok()?
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `METHOD path?query`, for assertions on the request log.
    pub fn line(&self) -> String {
        match &self.query {
            Some(q) => format!("{} {}?{q}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// What the server answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// Wait this long before answering (to provoke client timeouts).
    pub delay: Option<Duration>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: None,
        }
    }

    /// A 404 with an OpenStack-style body.
    pub fn not_found(what: &str) -> Self {
        Reply::json(
            404,
            serde_json::json!({"itemNotFound": {"code": 404, "message": format!("{what} could not be found.")}})
                .to_string(),
        )
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answers after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

type Handler = dyn Fn(&Request, &str) -> Reply + Send + Sync;

/// A running loopback server; it stops when dropped.
pub struct Server {
    base: String,
    log: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Starts a server on `127.0.0.1` (a free port) answering with `handler(request,
    /// base_url)`, where `base_url` is `http://127.0.0.1:<port>`.
    pub async fn start<H>(handler: H) -> std::io::Result<Server>
    where
        H: Fn(&Request, &str) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        Ok(Self::spawn(
            listener,
            base,
            Arc::new(handler),
            |s| async move { Some(s) },
        ))
    }

    /// Like [`Server::start`], with each accepted connection passed through `wrap` first
    /// (a TLS acceptor, say) and the URLs starting with `scheme://`.
    pub async fn start_wrapped<H, W, F, IO>(
        handler: H,
        scheme: &str,
        wrap: W,
    ) -> std::io::Result<Server>
    where
        H: Fn(&Request, &str) -> Reply + Send + Sync + 'static,
        W: Fn(tokio::net::TcpStream) -> F + Send + Sync + 'static,
        F: std::future::Future<Output = Option<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr: SocketAddr = listener.local_addr()?;
        let base = format!("{scheme}://localhost:{}", addr.port());
        Ok(Self::spawn(listener, base, Arc::new(handler), wrap))
    }

    fn spawn<W, F, IO>(
        listener: TcpListener,
        base: String,
        handler: Arc<Handler>,
        wrap: W,
    ) -> Server
    where
        W: Fn(tokio::net::TcpStream) -> F + Send + Sync + 'static,
        F: std::future::Future<Output = Option<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (log2, base2) = (log.clone(), base.clone());
        let task = tokio::spawn(async move {
            // Dropping the set (when the server is dropped) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (handler, log, base) = (handler.clone(), log2.clone(), base2.clone());
                let io = wrap(stream);
                connections.spawn(async move {
                    let Some(io) = io.await else { return };
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handler, log, base) = (handler.clone(), log.clone(), base.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let request = Request {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                query: parts.uri.query().map(str::to_owned),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_owned(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body,
                            };
                            let reply = handler(&request, &base);
                            log.lock().unwrap_or_else(|p| p.into_inner()).push(request);
                            if let Some(d) = reply.delay {
                                tokio::time::sleep(d).await;
                            }
                            let mut response = hyper::Response::new(Full::new(reply.body));
                            *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
                                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                            for (k, v) in reply.headers {
                                if let (Ok(k), Ok(v)) = (
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()),
                                    hyper::header::HeaderValue::from_str(&v),
                                ) {
                                    response.headers_mut().append(k, v);
                                }
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), service)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        Server { base, log, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `METHOD path?query` of every request so far.
    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Request::line).collect()
    }

    /// How many requests had this method and path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }

    /// Forgets the requests so far.
    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Keystone's answer to `POST /v3/auth/tokens`, made from a captured answer (`fixture`,
/// the JSON body): `token` in `X-Subject-Token`, `expires_at` set to now + `lifetime`,
/// every catalog URL moved to `base` (path kept), and `extra` services added as
/// `(type, path)` with public, internal and admin endpoints in `RegionOne`.
pub fn keystone_token_reply(
    fixture: &str,
    base: &str,
    token: &str,
    lifetime: Duration,
    extra: &[(&str, &str)],
) -> Reply {
    let mut doc: serde_json::Value = match serde_json::from_str(fixture) {
        Ok(v) => v,
        Err(e) => {
            return Reply::json(
                500,
                format!("{{\"error\": {{\"message\": \"bad fixture: {e}\"}}}}"),
            );
        }
    };
    let now = now_micros();
    let lifetime_us = i64::try_from(lifetime.as_micros()).unwrap_or(i64::MAX / 2);
    let t = &mut doc["token"];
    t["issued_at"] = format_timestamp(now).into();
    t["expires_at"] = format_timestamp(now + lifetime_us).into();
    if let Some(catalog) = t["catalog"].as_array_mut() {
        for service in catalog.iter_mut() {
            if let Some(endpoints) = service["endpoints"].as_array_mut() {
                for ep in endpoints {
                    if let Some(url) = ep["url"].as_str() {
                        ep["url"] = rebase(url, base).into();
                    }
                }
            }
        }
        for (service_type, path) in extra {
            let url = format!("{base}{path}");
            let endpoints: Vec<serde_json::Value> = ["public", "internal", "admin"]
                .iter()
                .map(|i| serde_json::json!({"interface": i, "region_id": "RegionOne", "region": "RegionOne", "url": url, "id": format!("{service_type}-{i}")}))
                .collect();
            catalog.push(serde_json::json!({"type": service_type, "name": service_type, "id": service_type, "endpoints": endpoints}));
        }
    }
    Reply::json(201, doc.to_string()).with_header("X-Subject-Token", token)
}

/// `url` with its scheme, host and port replaced by `base`'s.
pub fn rebase(url: &str, base: &str) -> String {
    let path_start = url
        .find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(url.len());
    format!("{base}{}", &url[path_start..])
}

/// A plugin's configuration for its unit tests: a `cloud` table with password auth
/// against a Keystone that is never asked, with the top-level entries of `extra` put in
/// (replacing those it has).
pub fn plugin_config<C: serde::de::DeserializeOwned>(extra: serde_json::Value) -> C {
    let mut c = serde_json::json!({"cloud": {"auth": {
        "auth_url": "https://keystone.example:5000/v3", "username": "u",
        "password": "pw", "project_name": "admin"
    }}});
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            c[k] = v.clone();
        }
    }
    serde_json::from_value(c).unwrap_or_else(|e| panic!("a test configuration: {e}"))
}

/// The field and message `P::validate` refuses `config` with; it must refuse it with a
/// configuration error.
pub fn refused<P: synchronizer_plugin_api::Plugin>(
    config: &P::Config,
    ctx: &synchronizer_plugin_api::Context,
) -> (String, String) {
    let e = match P::validate(config, ctx) {
        Ok(()) => panic!("the configuration was accepted"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), synchronizer_plugin_api::ErrorKind::Config);
    (
        e.field().expect("a field").to_owned(),
        e.message().to_owned(),
    )
}

/// One page of a listing as OpenStack's marker pagination cuts it ([`marker_page`]).
#[derive(Debug)]
pub struct Page<T> {
    /// The page's items.
    pub items: Vec<T>,
    /// The position of its first item in the listing.
    pub start: usize,
    /// The page size asked for.
    pub limit: usize,
}

impl<T: std::borrow::Borrow<serde_json::Value>> Page<T> {
    /// The page's number in the listing, 0-based (0 when no limit was asked for).
    pub fn index(&self) -> usize {
        if self.limit == usize::MAX {
            0
        } else {
            self.start / self.limit.max(1)
        }
    }

    /// The `id` of the last item when the page is full: the marker of the next page in
    /// the link Nova, Cinder and Neutron add then (even when nothing follows).
    pub fn next_marker(&self) -> Option<&str> {
        if self.items.len() != self.limit {
            return None;
        }
        self.items.last()?.borrow()["id"].as_str()
    }
}

/// The page of `items` a request asks for: its `limit` (else `default_limit`) items after
/// the one whose `id` is its `marker`; `Err(marker)` when no item has that id (each
/// service answers that its own way).
pub fn marker_page<T: std::borrow::Borrow<serde_json::Value> + Clone>(
    items: &[T],
    req: &Request,
    default_limit: usize,
) -> Result<Page<T>, String> {
    let limit = req
        .param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(default_limit);
    let start = match req.param("marker") {
        None => 0,
        Some(m) => match items.iter().position(|i| i.borrow()["id"] == m.as_str()) {
            Some(i) => i + 1,
            None => return Err(m),
        },
    };
    let items = items.iter().skip(start).take(limit).cloned().collect();
    Ok(Page {
        items,
        start,
        limit,
    })
}
