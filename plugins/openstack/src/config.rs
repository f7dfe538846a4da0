//! The `cloud` table the Nova and Heat plugins (and the bus plugin's `heat` table) take:
//! how to authenticate, which endpoint to use, and how to talk HTTP(S). Every struct
//! refuses unknown keys, so a typo is an error that names the key, and every secret is a
//! [`Secret`] whose `Debug` prints `<redacted>`. [`CloudConfig::validate`] checks what
//! serde cannot (which credentials a method needs, URLs, the CA file), naming the field
//! ([`ConfigError`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A secret (password, application credential secret, token). It has no `Display` and its
/// `Debug` is `Secret(<redacted>)`, so it cannot end up in a log line by accident.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Which endpoint of a service to use, as in the service catalog.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// The public endpoint (the default, as in openstacksdk).
    #[default]
    Public,
    /// The internal endpoint (what a service inside the cloud usually uses).
    Internal,
    /// The admin endpoint.
    Admin,
}

impl Interface {
    /// `public`, `internal` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }
}

/// How the plugin authenticates.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Keystone v3 password authentication, scoped to a project.
    Password,
    /// A Keystone v3 application credential (already scoped to its project).
    ApplicationCredential,
    /// A fixed token sent as it is, without Keystone (a `noauth2` Nova in a lab, or a
    /// token an operator obtained elsewhere). Needs `endpoint_override`; a 401 is final.
    StaticToken,
}

/// The `auth` table: Keystone credentials.
///
/// `method` may be left out: it is `application_credential` when an
/// `application_credential_*` key is given, `static_token` when `token` is, and
/// `password` otherwise.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// See [`AuthMethod`].
    #[serde(default)]
    pub method: Option<AuthMethod>,
    /// Keystone's URL, `https://keystone.example:5000` or `.../v3` (`/v3` is added when
    /// missing).
    #[serde(default)]
    pub auth_url: Option<String>,
    /// The user's name (with `user_domain_name` or `user_domain_id`).
    #[serde(default)]
    pub username: Option<String>,
    /// The user's id (instead of `username`).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The user's password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The user's domain by name.
    #[serde(default)]
    pub user_domain_name: Option<String>,
    /// The user's domain by id; `default` when neither is given.
    #[serde(default)]
    pub user_domain_id: Option<String>,
    /// The project to scope the token to, by name.
    #[serde(default)]
    pub project_name: Option<String>,
    /// The project by id (instead of `project_name`).
    #[serde(default)]
    pub project_id: Option<String>,
    /// The project's domain by name.
    #[serde(default)]
    pub project_domain_name: Option<String>,
    /// The project's domain by id; `default` when neither is given.
    #[serde(default)]
    pub project_domain_id: Option<String>,
    /// An application credential's id.
    #[serde(default)]
    pub application_credential_id: Option<String>,
    /// An application credential's name (with `username`/`user_id` and the user's domain).
    #[serde(default)]
    pub application_credential_name: Option<String>,
    /// The application credential's secret.
    #[serde(default)]
    pub application_credential_secret: Option<Secret>,
    /// The token for `static_token`.
    #[serde(default)]
    pub token: Option<Secret>,
}

impl AuthConfig {
    /// The method in use: `method`, or when it is left out, `application_credential` when
    /// an `application_credential_*` key is given, `static_token` when `token` is, and
    /// `password` otherwise.
    pub fn effective_method(&self) -> AuthMethod {
        self.method.unwrap_or(
            if self.application_credential_id.is_some()
                || self.application_credential_name.is_some()
                || self.application_credential_secret.is_some()
            {
                AuthMethod::ApplicationCredential
            } else if self.token.is_some() {
                AuthMethod::StaticToken
            } else {
                AuthMethod::Password
            },
        )
    }
}

/// A value of the `cloud` table that cannot work: the field's path inside the table
/// (serde_path_to_error notation: `auth.auth_url`, `ca_file`) and what is wrong with it
/// ("is required for password authentication"). A plugin reports it with the path of its
/// `cloud` table in front: [`ConfigError::field_in`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct ConfigError {
    /// The field's path inside the `cloud` table.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field's path from the plugin's own table, the `cloud` table being at `table`
    /// (`cloud`, `heat.cloud`): `cloud.auth.auth_url`.
    pub fn field_in(&self, table: &str) -> String {
        format!("{table}.{}", self.field)
    }
}

/// The `cloud` table of a plugin instance: one cloud, one region.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Credentials.
    pub auth: AuthConfig,
    /// The region whose endpoint to use. Required when the catalog offers the service in
    /// more than one region.
    #[serde(default)]
    pub region: Option<String>,
    /// Which catalog interface to use.
    #[serde(default)]
    pub interface: Interface,
    /// Use this endpoint instead of the catalog's (the full versioned URL, as in the
    /// catalog: `https://nova.example:8774/v2.1`, `https://heat.example:8004/v1/<project>`).
    #[serde(default)]
    pub endpoint_override: Option<String>,
    /// A PEM file with the CA certificate(s) to trust, in addition to the built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify TLS certificates at all. For labs only; logged as a warning.
    #[serde(default)]
    pub insecure: bool,
    /// Limit for one HTTP request, from connecting to the last byte of the body.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Limit for establishing a connection (TCP and TLS).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A token is renewed this long before it expires (at most half its lifetime).
    #[serde(default = "default_token_refresh_margin", with = "humantime_serde")]
    pub token_refresh_margin: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_token_refresh_margin() -> Duration {
    Duration::from_secs(120)
}

impl CloudConfig {
    /// Checks what serde cannot, without side effects but reading `ca_file`: the
    /// credentials `auth.method` needs (see [`AuthMethod`]), `auth.auth_url` and
    /// `endpoint_override` (http or https URLs; a static token needs the override), a
    /// token usable as a header, timeouts above zero, and a `ca_file` that can be read
    /// and holds at least one PEM certificate. [`crate::Session::new`] runs the same checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::session::check(self).map(drop)
    }

    /// A configuration with these credentials and every other field at its default.
    pub fn new(auth: AuthConfig) -> Self {
        CloudConfig {
            auth,
            region: None,
            interface: Interface::default(),
            endpoint_override: None,
            ca_file: None,
            insecure: false,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            token_refresh_margin: default_token_refresh_margin(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let auth = AuthConfig {
            username: Some("admin".into()),
            password: Some(Secret::new("hunter2")),
            application_credential_secret: Some(Secret::new("s3cr3t")),
            token: Some(Secret::new("gAAAAAB")),
            ..Default::default()
        };
        let text = format!("{:?}", CloudConfig::new(auth));
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t") && !text.contains("gAAAAAB"),
            "{text}"
        );
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = serde_json::from_value::<CloudConfig>(serde_json::json!({
            "auth": {"auth_url": "http://k:5000", "pasword": "x"}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("pasword"), "{err}");
        let c: CloudConfig = serde_json::from_value(serde_json::json!({
            "auth": {"token": "t"}, "timeout": "5s", "interface": "internal"
        }))
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.interface, Interface::Internal);
    }

    fn password() -> CloudConfig {
        CloudConfig::new(AuthConfig {
            auth_url: Some("https://keystone.example:5000/v3".into()),
            username: Some("synchronizer".into()),
            password: Some(Secret::new("pw")),
            project_name: Some("admin".into()),
            ..Default::default()
        })
    }

    /// The field and message `validate` refuses `config` with.
    fn refused(config: &CloudConfig) -> (String, String) {
        let e = config.validate().expect_err("refused");
        (e.field, e.message)
    }

    #[test]
    fn valid_configurations_pass() {
        assert_eq!(password().validate(), Ok(()));
        let mut by_id = password();
        by_id.auth.username = None;
        by_id.auth.user_id = Some("u-1".into());
        by_id.auth.project_name = None;
        by_id.auth.project_id = Some("p-1".into());
        by_id.endpoint_override = Some("http://nova:8774/v2.1".into());
        assert_eq!(by_id.validate(), Ok(()));
        let app = CloudConfig::new(AuthConfig {
            auth_url: Some("http://k:5000".into()),
            application_credential_id: Some("c-1".into()),
            application_credential_secret: Some(Secret::new("s")),
            ..Default::default()
        });
        assert_eq!(
            app.auth.effective_method(),
            AuthMethod::ApplicationCredential
        );
        assert_eq!(app.validate(), Ok(()));
        let mut token = CloudConfig::new(AuthConfig {
            token: Some(Secret::new("admin:admin")),
            ..Default::default()
        });
        token.endpoint_override = Some("http://nova:8774/v2.1".into());
        assert_eq!(token.auth.effective_method(), AuthMethod::StaticToken);
        assert_eq!(token.validate(), Ok(()));
    }

    #[test]
    fn each_refused_value_names_its_field() {
        type Change = Box<dyn Fn(&mut CloudConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("auth.auth_url", Box::new(|c| c.auth.auth_url = None)),
            (
                "auth.auth_url",
                Box::new(|c| c.auth.auth_url = Some("keystone:5000".into())),
            ),
            (
                "auth.auth_url",
                Box::new(|c| c.auth.auth_url = Some("ftp://keystone/".into())),
            ),
            ("auth.password", Box::new(|c| c.auth.password = None)),
            ("auth.username", Box::new(|c| c.auth.username = None)),
            (
                "auth.project_name",
                Box::new(|c| c.auth.project_name = None),
            ),
            (
                "auth.application_credential_secret",
                Box::new(|c| c.auth.method = Some(AuthMethod::ApplicationCredential)),
            ),
            (
                "auth.application_credential_id",
                Box::new(|c| {
                    c.auth.application_credential_secret = Some(Secret::new("s"));
                }),
            ),
            (
                "auth.username",
                Box::new(|c| {
                    c.auth.application_credential_secret = Some(Secret::new("s"));
                    c.auth.application_credential_name = Some("sync".into());
                    c.auth.username = None;
                }),
            ),
            (
                "auth.token",
                Box::new(|c| c.auth.method = Some(AuthMethod::StaticToken)),
            ),
            (
                "auth.token",
                Box::new(|c| {
                    c.auth.token = Some(Secret::new("line\nbreak"));
                    c.endpoint_override = Some("http://nova/v2.1".into());
                }),
            ),
            (
                "endpoint_override",
                Box::new(|c| c.auth.token = Some(Secret::new("t"))),
            ),
            (
                "endpoint_override",
                Box::new(|c| c.endpoint_override = Some("not a url".into())),
            ),
            (
                "endpoint_override",
                Box::new(|c| c.endpoint_override = Some("file:///v2.1".into())),
            ),
            ("timeout", Box::new(|c| c.timeout = Duration::ZERO)),
            (
                "connect_timeout",
                Box::new(|c| c.connect_timeout = Duration::ZERO),
            ),
            (
                "ca_file",
                Box::new(|c| c.ca_file = Some("/nonexistent/ca.pem".into())),
            ),
        ];
        for (i, (field, change)) in cases.into_iter().enumerate() {
            let mut c = password();
            change(&mut c);
            let (got, message) = refused(&c);
            assert_eq!(got, field, "case {i}: {message}");
            assert!(
                !message.contains(field) && !message.is_empty(),
                "case {i}: the message says what is wrong, not where: {message}"
            );
        }
        let e = password();
        let mut e2 = e.clone();
        e2.auth.password = None;
        let err = e2.validate().unwrap_err();
        assert_eq!(err.field_in("heat.cloud"), "heat.cloud.auth.password");
        assert_eq!(
            err.to_string(),
            "field `auth.password`: is required for password authentication"
        );
    }
}
