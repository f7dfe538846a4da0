//! What in a configuration is secret, found without trusting its shape, so that no error,
//! whatever the mistake, quotes it.
//!
//! A mistake in a configuration is often exactly what makes a parser quote the value: a
//! URL written as a string where a list is expected (serde's "invalid type: string
//! \"amqp://u:PASS@h/\""), an unclosed quote (TOML's error shows the line), a password
//! with an unencoded `/` (a URL parser's "invalid port number"). So the secrets are taken
//! from the text as written, not from the parsed configuration:
//!
//! - every URL-looking token (`scheme://user:password@...`, also one the `url` crate
//!   refuses): its password, raw and percent-decoded ([`Secrets::of_url`]);
//! - the value of every key whose name says it is secret (`password`, `passwd`,
//!   `secret`, `token`, `credential`, `api_key`, in any case, as part of a longer name:
//!   `application_credential_secret`; not `token_file`, `token_env`, `*_path`, whose
//!   values say where a secret is, nor `application_credential_id` or `*_name`).
//!
//! [`Secrets::scrub`] then replaces each of them by `***` in a message. The host's
//! configuration errors are scrubbed with the file's secrets ([`crate::Config::load`]);
//! everything an instance says with its table's ([`of_json`]): its creation and
//! validation errors, the errors of its calls (status, log, HTTP API) and the log lines
//! it writes ([`crate::instance::PluginInstance`], in the host's process or in its
//! child).

use synchronizer_plugin_api::redact::Secrets;

/// Whether a key's name says its value is a secret.
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let named = [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "api_key",
        "apikey",
    ]
    .iter()
    .any(|word| key.contains(word));
    // Names of files or variables that hold a secret are not secrets, nor is the id or
    // name of a credential (`application_credential_id` says which one failed).
    named
        && !["_file", "_env", "_path", "_id", "_name"]
            .iter()
            .any(|suffix| key.ends_with(suffix))
}

/// The secrets in TOML (or any `key = value`) text, whether it parses or not.
pub fn of_text(text: &str) -> Secrets {
    let mut secrets = Secrets::default();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            if secret_key(key) {
                let value = value.trim();
                // A TOML comment after the value is not part of it.
                let value = match value.strip_prefix(['"', '\'']) {
                    Some(quoted) => quoted
                        .split_once(['"', '\''])
                        .map_or(quoted, |(inner, _)| inner),
                    None => value.split('#').next().unwrap_or("").trim(),
                };
                secrets = secrets.with(value);
            }
        }
        for token in line.split(|c: char| c.is_whitespace() || "\"'[],{}=".contains(c)) {
            if token.contains("://") || token.contains('@') {
                secrets = secrets.merge(Secrets::of_url(token));
            }
        }
    }
    secrets
}

/// The secrets in a JSON value (an instance's plugin table): the URLs' passwords and the
/// values under secret-looking keys, at any depth.
pub fn of_json(value: &serde_json::Value) -> Secrets {
    let mut secrets = Secrets::default();
    walk(value, false, &mut secrets);
    secrets
}

fn walk(value: &serde_json::Value, under_secret_key: bool, secrets: &mut Secrets) {
    match value {
        serde_json::Value::String(s) => {
            let mut found = std::mem::take(secrets).merge(Secrets::of_url(s));
            if under_secret_key {
                found = found.with(s);
            }
            *secrets = found;
        }
        serde_json::Value::Array(items) => {
            for item in items {
                walk(item, under_secret_key, secrets);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                walk(item, under_secret_key || secret_key(key), secrets);
            }
        }
        serde_json::Value::Number(n) if under_secret_key => {
            *secrets = std::mem::take(secrets).with(&n.to_string());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_in_text_however_it_is_broken() {
        let text = r#"
[[instances]]
name = "bus"
[instances.config]
urls = "amqp://u:PASS-one@h/"
other = ["amqps://x:hun/ter2@h:5671/"]
password = 'pw-two'   # a comment
[instances.config.auth]
application_credential_secret = "pw-three
token_file = "/etc/token"
application_credential_id = "cred-1234"
broken = "amqp://u:pw-four@h
"#;
        let s = of_text(text);
        let scrubbed = s.scrub(text);
        for secret in ["PASS-one", "hun/ter2", "pw-two", "pw-three", "pw-four"] {
            assert!(!scrubbed.contains(secret), "{secret} left in {scrubbed}");
        }
        assert!(scrubbed.contains("/etc/token"), "{scrubbed}");
        assert!(scrubbed.contains("cred-1234"), "{scrubbed}");
        assert!(scrubbed.contains("amqp://u:***@h/"), "{scrubbed}");
    }

    #[test]
    fn secrets_are_found_in_a_plugin_table_at_any_depth() {
        let v = serde_json::json!({
            "urls": "amqp://u:PASS-one@h/",
            "auth": {"password": "pw-two", "token_file": "/t", "nested": [{"api_key": 12345678}]},
            "endpoints": ["https://a:pw-three@nova/"],
        });
        let s = of_json(&v);
        let text = v.to_string();
        let scrubbed = s.scrub(&text);
        for secret in ["PASS-one", "pw-two", "12345678", "pw-three"] {
            assert!(!scrubbed.contains(secret), "{secret} left in {scrubbed}");
        }
        assert!(scrubbed.contains("\"/t\""), "{scrubbed}");
    }
}
