//! Message bodies compressed by kombu (oslo.messaging's `[oslo_messaging_rabbit]
//! kombu_compression`): pure functions, no I/O.
//!
//! kombu compresses the serialized body and names the method in the message header
//! `compression`, whose value is the method's content type (`kombu/compression.py`, kombu
//! 5.x; `Producer.publish` sets `headers['compression']`, `Message.decode` reads it):
//!
//! | oslo `kombu_compression` | header `compression` | body | here |
//! |---|---|---|---|
//! | `gzip`, `zlib` | `application/x-gzip` | Python's `zlib.compress`: a **zlib** stream (RFC 1950), not gzip's file format | decompressed (a gzip stream, RFC 1952, under the same name is accepted too) |
//! | `bzip2`, `bzip` | `application/x-bz2` | `bz2.compress` | decompressed |
//! | `lzma`, `xz` | `application/x-lzma` | `lzma.compress` (xz) | refused |
//! | `brotli` | `application/x-brotli` | with the `brotli` module only | refused |
//! | `zstd` | `application/zstd` | with `backports.zstd` only | refused |
//!
//! The header values are matched case-insensitively, and kombu's aliases (`gzip`,
//! `zlib`, `bzip2`...) are accepted as well. A method that is not supported, a body that
//! does not decompress, or one whose decompressed size exceeds the limit (a small body
//! can expand a thousandfold: a "zip bomb" must not exhaust memory) is
//! [`Malformed`]: the message is dead-lettered with that reason, its original
//! (compressed) body and headers kept.

use std::borrow::Cow;
use std::io::Read;

use crate::mapping::Malformed;

/// The message header kombu names the compression method in.
pub const HEADER: &str = "compression";

/// The largest decompressed body accepted by default, in bytes (16 MiB; OpenStack
/// notifications are a few KiB).
pub const DEFAULT_MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;

/// A compression method this plugin decompresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `application/x-gzip`: zlib (what kombu sends) or gzip.
    Gzip,
    /// `application/x-bz2`.
    Bzip2,
}

impl Method {
    /// The method of a `compression` header value, or `None` when it is not supported.
    pub fn of(header: &str) -> Option<Method> {
        let h = header.trim().to_ascii_lowercase();
        match h.as_str() {
            "application/x-gzip" | "application/gzip" | "gzip" | "zlib" | "application/zlib" => {
                Some(Method::Gzip)
            }
            "application/x-bz2" | "application/x-bzip2" | "bzip2" | "bzip" | "bz2" => {
                Some(Method::Bzip2)
            }
            _ => None,
        }
    }
}

/// The body to interpret: `body` itself without compression, else decompressed by the
/// method `compression` names, at most `max` bytes of it.
pub fn decompress<'a>(
    body: &'a [u8],
    compression: Option<&str>,
    max: usize,
) -> Result<Cow<'a, [u8]>, Malformed> {
    let Some(name) = compression.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(Cow::Borrowed(body));
    };
    let shown = || crate::mapping::cut_field(name);
    let Some(method) = Method::of(name) else {
        return Err(Malformed::new(
            format!(
                "compression {:?} (message header `{HEADER}`) is not supported: only application/x-gzip (kombu_compression = gzip) and application/x-bz2 (bz2) are",
                shown()
            ),
            None,
            None,
        ));
    };
    let out = match method {
        // kombu's `gzip` is `zlib.compress`; a gzip stream starts with 1f 8b, which a
        // zlib header never does (its first byte's low nibble is 8, deflate).
        Method::Gzip if body.starts_with(&[0x1f, 0x8b]) => {
            read_bounded(flate2::read::MultiGzDecoder::new(body), max)
        }
        Method::Gzip => read_bounded(flate2::read::ZlibDecoder::new(body), max),
        Method::Bzip2 => read_bounded(bzip2::read::MultiBzDecoder::new(body), max),
    };
    match out {
        Ok(Some(data)) => Ok(Cow::Owned(data)),
        Ok(None) => Err(Malformed::new(
            format!(
                "body compressed with {} ({} bytes) decompresses to more than max_decompressed_bytes = {max} bytes; refused",
                shown(),
                body.len()
            ),
            None,
            None,
        )),
        Err(e) => Err(Malformed::new(
            format!(
                "body does not decompress as {} (message header `{HEADER}`): {e}",
                shown()
            ),
            None,
            None,
        )),
    }
}

/// Everything `r` gives, or `None` when that is more than `max` bytes (it reads at most
/// one byte more).
fn read_bounded(r: impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    r.take(limit).read_to_end(&mut out)?;
    Ok((out.len() <= max).then_some(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bz2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    const BODY: &[u8] = br#"{"oslo.version": "2.0", "oslo.message": "{}"}"#;

    #[test]
    fn no_header_is_the_body_itself() {
        assert!(matches!(
            decompress(BODY, None, 10),
            Ok(Cow::Borrowed(b)) if b == BODY
        ));
        assert!(matches!(
            decompress(BODY, Some(""), 10),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn kombu_methods_decompress() {
        for (header, data) in [
            ("application/x-gzip", zlib(BODY)),
            ("application/x-gzip", gzip(BODY)),
            ("Application/X-Gzip", zlib(BODY)),
            ("zlib", zlib(BODY)),
            ("application/x-bz2", bz2(BODY)),
            ("bzip2", bz2(BODY)),
        ] {
            let out = decompress(&data, Some(header), 1024)
                .unwrap_or_else(|m| panic!("{header}: {}", m.reason));
            assert_eq!(out.as_ref(), BODY, "{header}");
        }
    }

    #[test]
    fn unknown_methods_are_refused_by_name() {
        for header in [
            "application/x-lzma",
            "application/x-brotli",
            "application/zstd",
            "rot13",
        ] {
            let m = decompress(BODY, Some(header), 1024).unwrap_err();
            assert!(
                m.reason.contains(header) && m.reason.contains("not supported"),
                "{}",
                m.reason
            );
        }
    }

    #[test]
    fn a_body_that_does_not_decompress_says_so() {
        for header in ["application/x-gzip", "application/x-bz2"] {
            // Plain JSON under a compression header.
            let m = decompress(BODY, Some(header), 1024).unwrap_err();
            assert!(
                m.reason.starts_with("body does not decompress as") && m.reason.contains(header),
                "{}",
                m.reason
            );
        }
        // A truncated stream.
        let z = zlib(BODY);
        let m = decompress(&z[..z.len() / 2], Some("application/x-gzip"), 1024).unwrap_err();
        assert!(
            m.reason.starts_with("body does not decompress"),
            "{}",
            m.reason
        );
        let b = bz2(BODY);
        let m = decompress(&b[..b.len() / 2], Some("application/x-bz2"), 1024).unwrap_err();
        assert!(
            m.reason.starts_with("body does not decompress"),
            "{}",
            m.reason
        );
    }

    #[test]
    fn a_zip_bomb_is_refused_at_the_limit() {
        // 64 MiB of zeros: ~64 KiB compressed with zlib, ~50 bytes with bzip2.
        let zeros = vec![0u8; 64 * 1024 * 1024];
        for (header, data) in [
            ("application/x-gzip", zlib(&zeros)),
            ("application/x-gzip", gzip(&zeros)),
            ("application/x-bz2", bz2(&zeros)),
        ] {
            assert!(data.len() < 1024 * 1024, "{header}: {}", data.len());
            let m = decompress(&data, Some(header), 1024 * 1024).unwrap_err();
            assert!(
                m.reason
                    .contains("decompresses to more than max_decompressed_bytes = 1048576"),
                "{}",
                m.reason
            );
        }
        // Exactly at the limit is accepted, one byte more is not.
        let data = zlib(&zeros[..4096]);
        assert_eq!(
            decompress(&data, Some("application/x-gzip"), 4096)
                .unwrap()
                .len(),
            4096
        );
        assert!(decompress(&data, Some("application/x-gzip"), 4095).is_err());
    }

    #[test]
    fn the_reason_is_bounded_whatever_the_header() {
        let header = "x".repeat(100_000);
        let m = decompress(BODY, Some(&header), 1024).unwrap_err();
        assert!(
            m.reason.len() <= crate::mapping::MAX_REASON,
            "{}",
            m.reason.len()
        );
    }
}
