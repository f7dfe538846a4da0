//! The messagingv2 envelope, read without serde.
//!
//! Every message of oslo.messaging's `messagingv2` driver is the same small object,
//! `{"oslo.version": "2.0", "oslo.message": "<the notification, as JSON text>"}`, and
//! nearly all of its bytes are the one string, in which every quote of the notification
//! is escaped (`\"`, about one byte in ten). serde_json reads such a string one escape at
//! a time; [`oslo_message`] reads it eight bytes at a time and copies the runs between
//! escapes, which makes reading a captured Nova notification's envelope about twice as
//! fast (`cargo bench -p synchronizer-bus --bench interpret`).
//!
//! It takes only what it is sure of: an object whose members are `oslo.version` and
//! `oslo.message`, each at most once, each a string with no `\u` escape, in valid UTF-8.
//! For anything else it returns `None` and the caller reads the body with serde_json,
//! which also gives the error for a body that is not JSON. So both readers give the same
//! text for every body this one takes; the `bus_notification` fuzz target checks that.

const ONES: u64 = u64::MAX / 255;
const HIGH: u64 = ONES << 7;

/// The notification text of a `messagingv2` body, unescaped; `None` when the body is
/// not plainly that envelope (see the module docs).
pub fn oslo_message(body: &[u8]) -> Option<String> {
    let mut r = Reader { s: body, at: 0 };
    r.ws();
    r.eat(b'{')?;
    let (mut message, mut version) = (None, false);
    loop {
        r.ws();
        r.eat(b'"')?;
        let key = r.plain()?;
        r.ws();
        r.eat(b':')?;
        r.ws();
        r.eat(b'"')?;
        match key {
            b"oslo.message" if message.is_none() => {
                // Sized by `string`, once.
                let mut out = Vec::new();
                r.string(&mut out)?;
                message = Some(out);
            }
            b"oslo.version" if !version => {
                version = true;
                // `2.0`: read in place, nothing to unescape.
                std::str::from_utf8(r.plain()?).ok()?;
            }
            _ => return None,
        }
        r.ws();
        match r.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    r.ws();
    if r.at != body.len() {
        return None;
    }
    String::from_utf8(message?).ok()
}

struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.s.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.at) {
            self.at += 1;
        }
    }

    /// A member name, or another short string, without escapes, after its opening
    /// quote.
    fn plain(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        loop {
            match self.next()? {
                b'"' => return Some(&self.s[start..self.at - 1]),
                b'\\' => return None,
                b if b < 0x20 => return None,
                _ => {}
            }
        }
    }

    /// The rest of a string after its opening quote, unescaped onto `out`, through its
    /// closing quote.
    ///
    /// Eight bytes at a time: each word is copied whole before it is looked at, and only
    /// the bytes before its first quote, backslash or control character are kept, so a
    /// run between two escapes costs one store per word, not a call to copy it.
    fn string(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let s = self.s;
        let mut i = self.at;
        let mut o = out.len();
        // Unescaping never lengthens the text; the last word may spill 8 bytes past it.
        out.resize(o + (s.len() - i) + 8, 0);
        loop {
            if let Some(chunk) = s.get(i..i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                out[o..o + 8].copy_from_slice(&word);
                let flags = specials(u64::from_le_bytes(word));
                if flags == 0 {
                    i += 8;
                    o += 8;
                    continue;
                }
                let run = flags.trailing_zeros() as usize / 8;
                i += run;
                o += run;
            } else {
                while let Some(&b) = s.get(i) {
                    if b == b'"' || b == b'\\' || b < 0x20 {
                        break;
                    }
                    out[o] = b;
                    i += 1;
                    o += 1;
                }
            }
            match *s.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    out.truncate(o);
                    return Some(());
                }
                b'\\' => {
                    out[o] = match *s.get(i + 1)? {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        // `\u` (oslo writes ASCII only, so the envelope has none) and
                        // anything that is no escape.
                        _ => return None,
                    };
                    i += 2;
                    o += 1;
                }
                // A control character, which JSON does not allow in a string.
                _ => return None,
            }
        }
    }
}

/// The high bit of each byte of `x` that is below 0x20, a quote or a backslash is set, and
/// maybe of some bytes above the first such one (borrows), never below it: the lowest set
/// bit is exact.
fn specials(x: u64) -> u64 {
    let quote = x ^ (ONES * u64::from(b'"'));
    let backslash = x ^ (ONES * u64::from(b'\\'));
    ((x.wrapping_sub(ONES * 0x20) & !x)
        | (quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash))
        & HIGH
}

#[cfg(test)]
mod tests {
    use super::oslo_message;

    /// What serde_json reads as the body's `oslo.message`, when it reads one.
    fn serde_reads(body: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        Some(v.get("oslo.message")?.as_str()?.to_owned())
    }

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/nova-30/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn captured_envelopes_read_as_serde_json_reads_them() {
        for name in [
            "versioned_notifications.info__instance.update.raw.json",
            "versioned_notifications.info__instance.create.end.raw.json",
            "vitrage_notifications.info__compute.instance.create.end.raw.json",
        ] {
            let body = fixture(name);
            let fast = oslo_message(body.as_bytes());
            assert!(fast.is_some(), "{name}: not taken");
            assert_eq!(fast, serde_reads(&body), "{name}");
        }
    }

    #[test]
    fn every_short_escape_and_any_member_order_and_spacing() {
        for body in [
            r#"{"oslo.version":"2.0","oslo.message":"{\"a\": \"q\\\"b\\\\s\\/n\\nr\\rt\\tb\\bf\\f\"}"}"#,
            r#"  {  "oslo.message"  :  "x"  ,  "oslo.version"  :  "2.0"  }  "#,
            "{\n\t\"oslo.message\":\r\n\"\"}\n",
            r#"{"oslo.message":"no version"}"#,
            // Runs that end exactly at a word's end, and a tail shorter than a word.
            r#"{"oslo.message":"12345678\"12345678\"1234567\"1"}"#,
            r#"{"oslo.message":"ünïcödé, 漢字 and 🦀 as UTF-8"}"#,
        ] {
            let fast = oslo_message(body.as_bytes());
            assert!(fast.is_some(), "{body}: not taken");
            assert_eq!(fast, serde_reads(body), "{body}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        for body in [
            // `\u` escapes, valid or not.
            r#"{"oslo.message":"caf\u00e9"}"#,
            r#"{"oslo.message":"\ud83e\udd80"}"#,
            r#"{"oslo.message":"\ud800"}"#,
            // Not an escape, a control character, an unterminated string.
            r#"{"oslo.message":"a\qb"}"#,
            "{\"oslo.message\":\"a\u{1}b\"}",
            r#"{"oslo.message":"abc"#,
            r#"{"oslo.message":"abc\"#,
            // A duplicate, another member, a value that is no string, an escaped name.
            r#"{"oslo.message":"a","oslo.message":"b"}"#,
            r#"{"oslo.version":"2.0","oslo.version":"2.0","oslo.message":"a"}"#,
            r#"{"oslo.message":"a","event_type":"x"}"#,
            r#"{"oslo.version":2,"oslo.message":"a"}"#,
            r#"{"oslo.message":null}"#,
            r#"{"oslo\u002emessage":"a"}"#,
            // A version with any escape (oslo writes `2.0`).
            r#"{"oslo.version":"2\/0","oslo.message":"a"}"#,
            // No message, no object, trailing bytes, a trailing comma.
            r#"{"oslo.version":"2.0"}"#,
            "{}",
            "[]",
            "",
            r#"{"oslo.message":"a"} x"#,
            r#"{"oslo.message":"a",}"#,
        ] {
            assert_eq!(oslo_message(body.as_bytes()), None, "{body}");
        }
        // Bytes that are no UTF-8, in either string (the second found by the
        // `bus_message` fuzz target).
        assert_eq!(oslo_message(b"{\"oslo.message\":\"\xff\xfe\"}"), None);
        assert_eq!(
            oslo_message(b"{\"oslo.version\":\"\xc3\",\"oslo.message\":\"a\"}"),
            None
        );
    }
}
