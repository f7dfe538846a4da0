//! URLs and messages without their secrets: the one redaction the host (its AMQP
//! output), the bus plugin and the OpenStack client use, so that a password is hidden
//! the same way wherever a URL is shown.
//!
//! A well-formed URL is taken apart by the `url` crate and shown with its password
//! replaced by `***` (the user name stays: it says which account failed). A URL the
//! crate cannot take apart, or one whose path or query holds an `@`, is most often a
//! password with an unencoded `/`, `?`, `#` or `@` in it: everything between `://` and
//! the last `@` then counts as user info, and everything after its first `:` as the
//! password. What is not a URL at all is not shown.

use url::Url;

/// What is shown in place of a secret.
pub const HIDDEN: &str = "***";

/// `url` with its password hidden: `amqp://guest:***@127.0.0.1:5672/%2f`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".to_owned();
    };
    // A scheme is a letter, then letters, digits, `+`, `-` or `.`: text before `://`
    // that is not one (`ws:u:pw@h.x://...`) is not a URL the rules below understand.
    let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !valid_scheme {
        return "<unparsable URL>".to_owned();
    }
    if let Ok(parsed) = Url::parse(url)
        && authority_holds_every_at(&parsed)
    {
        return redact(&parsed);
    }
    match rest.rsplit_once('@') {
        None => url.to_owned(),
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{HIDDEN}@{host}"),
            None => format!("{scheme}://{userinfo}@{host}"),
        },
    }
}

/// A parsed URL with its password hidden.
pub fn redact(url: &Url) -> String {
    if url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    match shown.set_password(Some(HIDDEN)) {
        Ok(()) => shown.to_string(),
        Err(()) => "<unparsable URL>".to_owned(),
    }
}

/// Whether no `@` is left after the URL's authority (in its path, query or fragment):
/// one there is more likely the end of a password with an unencoded `/` than part of
/// the path.
fn authority_holds_every_at(url: &Url) -> bool {
    !url.path().contains('@')
        && !url.query().is_some_and(|q| q.contains('@'))
        && !url.fragment().is_some_and(|f| f.contains('@'))
}

/// The secrets of one or more URLs (their passwords, raw and percent-decoded), to scrub
/// from messages that may quote them (a client library's error, say).
#[derive(Clone, Debug, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The password of `url`, however it is written.
    pub fn of_url(url: &str) -> Self {
        let mut secrets = Secrets::default();
        if let Ok(parsed) = Url::parse(url)
            && let Some(password) = parsed.password()
        {
            secrets = secrets.with_encoded(password);
        }
        // After `scheme://`, or `scheme:` and any slashes when the `//` is malformed.
        let rest = match url.split_once("://") {
            Some((_, rest)) => rest,
            None => url
                .split_once(':')
                .map_or(url, |(_, r)| r.trim_start_matches('/')),
        };
        if let Some((userinfo, _)) = rest.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            secrets = secrets.with_encoded(password);
        }
        secrets
    }

    /// Adds another secret (a client certificate's password, say).
    pub fn with(mut self, secret: &str) -> Self {
        if !secret.is_empty() && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_owned());
            // Longest first: a secret that contains another is replaced whole.
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
        self
    }

    /// These secrets and `other`'s.
    pub fn merge(self, other: Secrets) -> Self {
        other.0.iter().fold(self, |all, s| all.with(s))
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a secret as written in a URL, and percent-decoded.
    fn with_encoded(self, secret: &str) -> Self {
        let decoded = percent_decode(secret);
        self.with(secret).with(&decoded)
    }

    /// `text` with every secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.0 {
            out = out.replace(s.as_str(), HIDDEN);
        }
        out
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_before_the_slashes_that_is_no_scheme_is_not_shown() {
        // Found by the `secrets` fuzz target: `ws:` with no `//` is a URL to the url
        // crate, with the user info right after it.
        let url = "ws:RRR:a@R.Rqp://u:5672/RRp:a@as1";
        assert_eq!(super::redact_url(url), "<unparsable URL>");
        assert_eq!(super::redact_url("ws:u:pw@h/"), "<unparsable URL>");
    }

    use super::*;

    #[test]
    fn well_formed_urls_keep_everything_but_the_password() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/"),
            "amqp://guest:***@127.0.0.1:5672/"
        );
        assert_eq!(
            redact_url("amqps://u:p%40ss@rabbit:5671/vh?heartbeat=10"),
            "amqps://u:***@rabbit:5671/vh?heartbeat=10"
        );
        assert_eq!(
            redact_url("amqp://sync:s3cret@rabbit:5672/%2f"),
            "amqp://sync:***@rabbit:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host"), "amqp://host");
        assert_eq!(redact_url("amqp://rabbit/"), "amqp://rabbit/");
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
        assert_eq!(
            redact(&Url::parse("https://user:pa55@nova.example/v2.1").unwrap()),
            "https://user:***@nova.example/v2.1"
        );
    }

    #[test]
    fn malformed_urls_show_no_password() {
        for (bad, password, shown) in [
            // An unencoded `/`: the authority would end at it.
            (
                "amqp://sync:p/w2@rabbit:5672/%2f",
                "p/w2",
                "amqp://sync:***@rabbit:5672/%2f",
            ),
            // Worse: what precedes the `/` is a valid port.
            (
                "amqp://sync:5672/w@rabbit/",
                "5672/w",
                "amqp://sync:***@rabbit/",
            ),
            (
                "amqp://sync:p@w3@rabbit/",
                "p@w3",
                "amqp://sync:***@rabbit/",
            ),
            (
                "amqp://sync:p?w4@rabbit/",
                "p?w4",
                "amqp://sync:***@rabbit/",
            ),
            (
                "amqp://sync:p#w5@rabbit/",
                "p#w5",
                "amqp://sync:***@rabbit/",
            ),
            // A missing slash: not a URL we take apart.
            ("amqp:/sync:pw1@rabbit/", "pw1", "<unparsable URL>"),
            ("not a url with secret", "secret", "<unparsable URL>"),
        ] {
            assert_eq!(redact_url(bad), shown, "{bad}");
            let scrubbed = Secrets::of_url(bad).scrub(&format!("bad url {bad}"));
            if bad.contains('@') {
                assert!(!scrubbed.contains(password), "{bad} -> {scrubbed}");
            }
        }
    }

    #[test]
    fn messages_are_scrubbed_of_raw_and_decoded_passwords() {
        let s = Secrets::of_url("amqp://u:p%40ss@rabbit/");
        assert_eq!(
            s.scrub("auth failed: p@ss / p%40ss"),
            "auth failed: *** / ***"
        );
        let s = Secrets::of_url("amqp://sync:s3cret@rabbit:5672/%2f").with("p12-pw");
        assert_eq!(
            s.scrub("auth failed for sync:s3cret, p12-pw"),
            "auth failed for sync:***, ***"
        );
        assert_eq!(
            Secrets::of_url("amqp://rabbit/").scrub("nothing"),
            "nothing"
        );
    }
}
