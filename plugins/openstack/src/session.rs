//! An authenticated session with one cloud: the HTTP client (TLS, timeouts), the Keystone
//! token (reused until shortly before it expires, renewed once on a 401) and endpoint
//! lookup in the token's service catalog.
//!
//! A [`Session`] is cheap to clone and safe to share: concurrent requests that find the
//! token stale wait for one authentication instead of each starting their own.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::catalog::{CatalogService, select_endpoint};
use crate::config::{AuthConfig, AuthMethod, CloudConfig, ConfigError, Interface, Secret};
use crate::error::{Error, chain, service_message};
use crate::time::{now_micros, parse_timestamp};

/// The header that carries a Keystone token.
pub const AUTH_TOKEN: &str = "X-Auth-Token";

/// A URL as it may appear in logs and errors: its password hidden (the project's one
/// redaction, `synchronizer_plugin_api::redact`).
pub fn display_url(url: &Url) -> String {
    synchronizer_plugin_api::redact::redact(url)
}

/// `base` with `segments` appended as path segments (each percent-encoded as needed).
pub fn join_path(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        path.extend(segments);
    }
    url
}

/// A project or user, by id or by name within a domain.
#[derive(Clone, Debug)]
enum Ident {
    Id(String),
    Name { name: String, domain: Domain },
}

#[derive(Clone, Debug)]
enum Domain {
    Id(String),
    Name(String),
}

impl Domain {
    fn from_config(id: &Option<String>, name: &Option<String>) -> Domain {
        match (id, name) {
            (Some(id), _) => Domain::Id(id.clone()),
            (None, Some(name)) => Domain::Name(name.clone()),
            (None, None) => Domain::Id("default".to_owned()),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Domain::Id(id) => serde_json::json!({ "id": id }),
            Domain::Name(name) => serde_json::json!({ "name": name }),
        }
    }
}

impl Ident {
    fn json(&self) -> serde_json::Value {
        match self {
            Ident::Id(id) => serde_json::json!({ "id": id }),
            Ident::Name { name, domain } => {
                serde_json::json!({ "name": name, "domain": domain.json() })
            }
        }
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ident::Id(id) => write!(f, "id `{id}`"),
            Ident::Name {
                name,
                domain: Domain::Id(d),
            } => write!(f, "`{name}` (domain id `{d}`)"),
            Ident::Name {
                name,
                domain: Domain::Name(d),
            } => write!(f, "`{name}` (domain `{d}`)"),
        }
    }
}

/// Validated credentials.
#[derive(Clone)]
enum Credentials {
    Password {
        token_url: Url,
        user: Ident,
        password: Secret,
        project: Ident,
    },
    ApplicationCredential {
        token_url: Url,
        /// By id, or by name with its user.
        credential: Result<String, (String, Ident)>,
        secret: Secret,
    },
    Static(Secret),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Credentials {
    fn from_config(auth: &AuthConfig, endpoint_override: bool) -> Result<Self, ConfigError> {
        let token_url = || -> Result<Url, ConfigError> {
            let field = "auth.auth_url";
            let raw = auth
                .auth_url
                .as_deref()
                .ok_or_else(|| ConfigError::new(field, "is required: Keystone's URL"))?;
            let mut url = Url::parse(raw)
                .map_err(|e| ConfigError::new(field, format!("`{raw}` is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(field, "must be an http or https URL"));
            }
            let ends_v3 = url
                .path_segments()
                .and_then(|mut s| s.rfind(|p| !p.is_empty()))
                == Some("v3");
            if !ends_v3 {
                url = join_path(&url, &["v3"]);
            }
            Ok(join_path(&url, &["auth", "tokens"]))
        };
        let user = |needed_for: &str| -> Result<Ident, ConfigError> {
            match (&auth.user_id, &auth.username) {
                (Some(id), _) => Ok(Ident::Id(id.clone())),
                (None, Some(name)) => Ok(Ident::Name {
                    name: name.clone(),
                    domain: Domain::from_config(&auth.user_domain_id, &auth.user_domain_name),
                }),
                (None, None) => Err(ConfigError::new(
                    "auth.username",
                    format!("is required for {needed_for} (or `user_id`)"),
                )),
            }
        };
        match auth.effective_method() {
            AuthMethod::Password => {
                let password = auth.password.clone().ok_or_else(|| {
                    ConfigError::new("auth.password", "is required for password authentication")
                })?;
                let token_url = token_url()?;
                let user = user("password authentication")?;
                let project = match (&auth.project_id, &auth.project_name) {
                    (Some(id), _) => Ident::Id(id.clone()),
                    (None, Some(name)) => Ident::Name {
                        name: name.clone(),
                        domain: Domain::from_config(
                            &auth.project_domain_id,
                            &auth.project_domain_name,
                        ),
                    },
                    (None, None) => {
                        return Err(ConfigError::new(
                            "auth.project_name",
                            "is required (or `project_id`): the token must be scoped to a project to carry a service catalog and admin rights",
                        ));
                    }
                };
                Ok(Credentials::Password {
                    token_url,
                    user,
                    password,
                    project,
                })
            }
            AuthMethod::ApplicationCredential => {
                let secret = auth.application_credential_secret.clone().ok_or_else(|| {
                    ConfigError::new(
                        "auth.application_credential_secret",
                        "is required for an application credential",
                    )
                })?;
                let token_url = token_url()?;
                let credential = match (
                    &auth.application_credential_id,
                    &auth.application_credential_name,
                ) {
                    (Some(id), _) => Ok(id.clone()),
                    (None, Some(name)) => Err((
                        name.clone(),
                        user("an application credential given by name")?,
                    )),
                    (None, None) => {
                        return Err(ConfigError::new(
                            "auth.application_credential_id",
                            "is required (or `application_credential_name` with the user)",
                        ));
                    }
                };
                Ok(Credentials::ApplicationCredential {
                    token_url,
                    credential,
                    secret,
                })
            }
            AuthMethod::StaticToken => {
                let token = auth.token.clone().ok_or_else(|| {
                    ConfigError::new("auth.token", "is required for `method = \"static_token\"`")
                })?;
                if HeaderValue::from_str(token.expose()).is_err() {
                    return Err(ConfigError::new(
                        "auth.token",
                        "holds characters not allowed in an HTTP header",
                    ));
                }
                if !endpoint_override {
                    return Err(ConfigError::new(
                        "endpoint_override",
                        "is required with a static token (there is no service catalog)",
                    ));
                }
                Ok(Credentials::Static(token))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Credentials::Password { user, project, .. } => {
                format!("password of user {user}, project {project}")
            }
            Credentials::ApplicationCredential {
                credential: Ok(id), ..
            } => {
                format!("application credential id `{id}`")
            }
            Credentials::ApplicationCredential {
                credential: Err((name, user)),
                ..
            } => format!("application credential `{name}` of user {user}"),
            Credentials::Static(_) => "static token".to_owned(),
        }
    }

    fn token_url(&self) -> Option<&Url> {
        match self {
            Credentials::Password { token_url, .. }
            | Credentials::ApplicationCredential { token_url, .. } => Some(token_url),
            Credentials::Static(_) => None,
        }
    }

    /// The body of `POST /v3/auth/tokens`. It holds the secret: never log it.
    fn request_body(&self) -> serde_json::Value {
        match self {
            Credentials::Password {
                user,
                password,
                project,
                ..
            } => {
                let mut user = user.json();
                if let Some(obj) = user.as_object_mut() {
                    obj.insert("password".into(), password.expose().into());
                }
                serde_json::json!({"auth": {
                    "identity": {"methods": ["password"], "password": {"user": user}},
                    "scope": {"project": project.json()},
                }})
            }
            Credentials::ApplicationCredential {
                credential, secret, ..
            } => {
                let cred = match credential {
                    Ok(id) => serde_json::json!({"id": id, "secret": secret.expose()}),
                    Err((name, user)) => {
                        serde_json::json!({"name": name, "user": user.json(), "secret": secret.expose()})
                    }
                };
                serde_json::json!({"auth": {"identity": {
                    "methods": ["application_credential"],
                    "application_credential": cred,
                }}})
            }
            Credentials::Static(_) => serde_json::Value::Null,
        }
    }
}

/// A token and what came with it.
struct Token {
    value: HeaderValue,
    generation: u64,
    /// Renew after this time (microseconds since the epoch); `None`: until refused.
    renew_after_us: Option<i64>,
    expires_at: Option<String>,
    catalog: Vec<CatalogService>,
    project_id: Option<String>,
    roles: Vec<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .field("project_id", &self.project_id)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl Token {
    fn fresh(&self) -> bool {
        self.renew_after_us.is_none_or(|at| now_micros() < at)
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    project: Option<IdOnly>,
    #[serde(default)]
    roles: Vec<NameOnly>,
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

struct Inner {
    http: reqwest::Client,
    credentials: Credentials,
    interface: Interface,
    region: Option<String>,
    endpoint_override: Option<Url>,
    timeout: Duration,
    refresh_margin: Duration,
    token: tokio::sync::Mutex<Option<Arc<Token>>>,
    generation: AtomicU64,
    authentications: AtomicU64,
}

/// An authenticated session with one cloud and region. See the module docs.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("auth", &self.inner.credentials.describe())
            .field(
                "token_url",
                &self.inner.credentials.token_url().map(display_url),
            )
            .field("interface", &self.inner.interface)
            .field("region", &self.inner.region)
            .field(
                "endpoint_override",
                &self.inner.endpoint_override.as_ref().map(display_url),
            )
            .finish_non_exhaustive()
    }
}

/// What [`check`] found a configuration to mean.
pub(crate) struct Checked {
    credentials: Credentials,
    endpoint_override: Option<Url>,
    /// The certificates of `ca_file`.
    roots: Vec<reqwest::Certificate>,
}

/// Checks a `cloud` table without side effects (it reads `ca_file`, nothing else): what
/// [`CloudConfig::validate`] and [`Session::new`] both run.
pub(crate) fn check(config: &CloudConfig) -> Result<Checked, ConfigError> {
    let endpoint_override = match &config.endpoint_override {
        Some(raw) => {
            let url = Url::parse(raw).map_err(|e| {
                ConfigError::new("endpoint_override", format!("`{raw}` is not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    "endpoint_override",
                    "must be an http or https URL",
                ));
            }
            Some(url)
        }
        None => None,
    };
    let credentials = Credentials::from_config(&config.auth, endpoint_override.is_some())?;
    if config.timeout.is_zero() {
        return Err(ConfigError::new("timeout", "must be more than zero"));
    }
    if config.connect_timeout.is_zero() {
        return Err(ConfigError::new(
            "connect_timeout",
            "must be more than zero",
        ));
    }
    let roots = match &config.ca_file {
        Some(path) => read_ca_file(path)?,
        None => Vec::new(),
    };
    Ok(Checked {
        credentials,
        endpoint_override,
        roots,
    })
}

/// The certificates of a PEM file; an error when it cannot be read or holds none.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let field = "ca_file";
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| ConfigError::new(field, format!("{}: {}", path.display(), chain(&e))))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            field,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}

fn build_client(
    config: &CloudConfig,
    roots: Vec<reqwest::Certificate>,
) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.connect_timeout)
        .user_agent(concat!(
            "synchronizer-openstack/",
            env!("CARGO_PKG_VERSION")
        ))
        .pool_idle_timeout(Duration::from_secs(50));
    for cert in roots {
        builder = builder.add_root_certificate(cert);
    }
    if config.insecure {
        tracing::warn!("cloud.insecure = true: TLS certificates are NOT verified");
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {}", chain(&e))))
}

impl Session {
    /// Builds the session: checks the configuration ([`CloudConfig::validate`]) and reads
    /// the CA file, but does not contact Keystone yet (the first request does). A
    /// configuration that cannot work is [`Error::Field`].
    pub fn new(config: &CloudConfig) -> Result<Session, Error> {
        let Checked {
            credentials,
            endpoint_override,
            roots,
        } = check(config).map_err(Error::Field)?;
        let http = build_client(config, roots)?;
        let initial = match &credentials {
            Credentials::Static(secret) => {
                // Checked by `check`.
                let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
                    Error::Field(ConfigError::new(
                        "auth.token",
                        "holds characters not allowed in an HTTP header",
                    ))
                })?;
                value.set_sensitive(true);
                Some(Arc::new(Token {
                    value,
                    generation: 0,
                    renew_after_us: None,
                    expires_at: None,
                    catalog: Vec::new(),
                    project_id: None,
                    roles: Vec::new(),
                }))
            }
            _ => None,
        };
        tracing::debug!(auth = %credentials.describe(), region = ?config.region, interface = config.interface.as_str(), "OpenStack session configured");
        Ok(Session {
            inner: Arc::new(Inner {
                http,
                credentials,
                interface: config.interface,
                region: config.region.clone(),
                endpoint_override,
                timeout: config.timeout,
                refresh_margin: config.token_refresh_margin,
                token: tokio::sync::Mutex::new(initial),
                generation: AtomicU64::new(1),
                authentications: AtomicU64::new(0),
            }),
        })
    }

    /// The HTTP client (with the session's TLS settings and timeouts).
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// How many tokens this session has requested from Keystone.
    pub fn authentications(&self) -> u64 {
        self.inner.authentications.load(Ordering::Relaxed)
    }

    /// Keystone's v3 base URL (`https://keystone.example:5000/v3`), unless the session
    /// uses a static token.
    pub fn identity_url(&self) -> Option<Url> {
        let mut url = self.inner.credentials.token_url()?.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop().pop();
        }
        Some(url)
    }

    /// The project the token is scoped to (`None` for a static token).
    pub async fn project_id(&self) -> Result<Option<String>, Error> {
        Ok(self.token().await?.project_id.clone())
    }

    /// The role names the token carries (empty for a static token).
    pub async fn roles(&self) -> Result<Vec<String>, Error> {
        Ok(self.token().await?.roles.clone())
    }

    /// The endpoint of `service_type`: `cloud.endpoint_override` when set, otherwise the
    /// catalog's endpoint for the configured interface and region.
    pub async fn endpoint(&self, service_type: &str) -> Result<Url, Error> {
        if let Some(url) = &self.inner.endpoint_override {
            return Ok(url.clone());
        }
        let token = self.token().await?;
        select_endpoint(
            &token.catalog,
            service_type,
            self.inner.interface,
            self.inner.region.as_deref(),
        )
    }

    async fn token(&self) -> Result<Arc<Token>, Error> {
        let mut slot = self.inner.token.lock().await;
        if let Some(token) = slot.as_ref()
            && token.fresh()
        {
            return Ok(token.clone());
        }
        let token = Arc::new(self.authenticate().await?);
        *slot = Some(token.clone());
        Ok(token)
    }

    /// Forgets the token of `generation` (if it is still the current one), so that the
    /// next request authenticates again.
    async fn invalidate(&self, generation: u64) {
        let mut slot = self.inner.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.generation == generation) {
            *slot = None;
        }
    }

    async fn authenticate(&self) -> Result<Token, Error> {
        let inner = &self.inner;
        let Some(url) = inner.credentials.token_url() else {
            // A static token is never dropped, so this is not reached; say so if it is.
            return Err(Error::Config(
                "static token refused and no Keystone configured".into(),
            ));
        };
        let shown = display_url(url);
        inner.authentications.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let response = inner
            .http
            .post(url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(inner.credentials.request_body().to_string())
            .send()
            .await
            .map_err(|e| self.transport_error("POST", &shown, e))?;
        let status = response.status();
        let subject = response.headers().get("X-Subject-Token").cloned();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error("POST", &shown, e))?;
        if !status.is_success() {
            tracing::warn!(url = %shown, status = status.as_u16(), auth = %inner.credentials.describe(), "Keystone refused to authenticate");
            return Err(Error::Auth {
                url: shown,
                status: status.as_u16(),
                message: service_message(&body),
            });
        }
        let Some(mut value) = subject else {
            return Err(Error::Decode {
                method: "POST",
                url: shown,
                status: status.as_u16(),
                message: "no X-Subject-Token header in Keystone's answer".into(),
            });
        };
        value.set_sensitive(true);
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| Error::Decode {
            method: "POST",
            url: shown.clone(),
            status: status.as_u16(),
            message: e.to_string(),
        })?;
        let now = now_micros();
        let expires_us = parsed.token.expires_at.as_deref().and_then(parse_timestamp);
        let renew_after_us = expires_us.map(|exp| {
            let lifetime = (exp - now).max(0);
            let margin = i64::try_from(inner.refresh_margin.as_micros()).unwrap_or(i64::MAX);
            exp - margin.min(lifetime / 2)
        });
        let generation = inner.generation.fetch_add(1, Ordering::Relaxed);
        let token = Token {
            value,
            generation,
            renew_after_us,
            expires_at: parsed.token.expires_at,
            catalog: parsed.token.catalog,
            project_id: parsed.token.project.map(|p| p.id),
            roles: parsed.token.roles.into_iter().map(|r| r.name).collect(),
        };
        tracing::info!(
            url = %shown,
            auth = %inner.credentials.describe(),
            project_id = ?token.project_id,
            roles = ?token.roles,
            expires_at = ?token.expires_at,
            services = token.catalog.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "authenticated with Keystone"
        );
        Ok(token)
    }

    fn transport_error(&self, method: &'static str, url: &str, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout {
                method,
                url: url.to_owned(),
                after: self.inner.timeout,
            }
        } else {
            Error::Transport {
                method,
                url: url.to_owned(),
                message: chain(&e.without_url()),
            }
        }
    }

    /// `GET url` with the token and `headers`; the body of a 2xx answer. A 401 drops the
    /// token, authenticates again and retries once; any other non-2xx status, a timeout
    /// or a transport failure is an error naming the URL.
    pub async fn get(&self, url: &Url, headers: &HeaderMap) -> Result<Bytes, Error> {
        let shown = display_url(url);
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let started = Instant::now();
            let response = self
                .inner
                .http
                .get(url.clone())
                .headers(headers.clone())
                .header(AUTH_TOKEN, token.value.clone())
                .header(ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| self.transport_error("GET", &shown, e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED
                && !retried
                && self.inner.credentials.token_url().is_some()
            {
                tracing::info!(url = %shown, "HTTP 401: the token was refused; authenticating again and retrying once");
                self.invalidate(token.generation).await;
                retried = true;
                continue;
            }
            let body = response
                .bytes()
                .await
                .map_err(|e| self.transport_error("GET", &shown, e))?;
            tracing::debug!(
                url = %shown,
                status = status.as_u16(),
                bytes = body.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "GET"
            );
            if !status.is_success() {
                let mut message = service_message(&body);
                if status == StatusCode::UNAUTHORIZED {
                    message.push_str(if retried {
                        " (refused again with a fresh token)"
                    } else {
                        " (static token refused)"
                    });
                }
                return Err(Error::Status {
                    method: "GET",
                    url: shown,
                    status: status.as_u16(),
                    message,
                });
            }
            return Ok(body);
        }
    }

    /// [`Session::get`], then parses the body as JSON into `T`. A body that does not
    /// parse is [`Error::Decode`], naming the URL and where the parse failed.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &Url,
        headers: &HeaderMap,
    ) -> Result<T, Error> {
        let body = self.get(url, headers).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Decode {
            method: "GET",
            url: display_url(url),
            status: 200,
            message: e.to_string(),
        })
    }
}
