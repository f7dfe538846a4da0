//! The fuzz targets of the synchronizer: one per external input (issue 16), each a plain
//! function of the fuzzer's bytes so that `cargo test` can replay the saved corpus
//! without libFuzzer (`tests/replay.rs`).
//!
//! - [`targets`]: the targets. Each parses its input through the real code (the plugins'
//!   parsers and page types, the host's config loader, wire decoder and query parsing)
//!   and panics only on a finding.
//! - [`check`]: what every target does with the entities it got: every output format of
//!   the host (stdout lines, `/v1/entities`, SSE, the AMQP body) and the wire encoder and
//!   decoder, each checked to read back, so that a panic downstream of a parser is found
//!   at the parser.
//! - [`arb`]: arbitrary entities and wire messages built from the fuzzer's bytes.
//!
//! How to run them (`scripts/fuzz.sh`) and where the corpus and the regression inputs
//! are: the README's "Fuzzing" section.

pub mod arb;
pub mod check;
pub mod targets;
