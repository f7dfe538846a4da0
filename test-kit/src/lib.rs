//! The synchronizer's one test kit: what the tests and benchmarks of every crate share.
//!
//! Used only as a dev-dependency (and by the test-only `synchronizer-tests` crate). Every
//! module is documented where it is; each feature brings a few modules and only their
//! dependencies:
//!
//! | module | feature | what it holds |
//! |---|---|---|
//! | [`paths`] | | the workspace, the target directory, the built plugin libraries and binary |
//! | [`sys`] | | free ports, unique names, benchmark knobs, a process's memory |
//! | [`wait`] | | waiting (bounded) for a condition, sync or async |
//! | [`http`] | | a loopback HTTP server answering from a table (captured pages) |
//! | [`nagios`] | | Nagios status pages generated at the shape of the captures; fixture edits |
//! | `host` | `host` | host configs, readiness, draining a subscription, instance status |
//! | `hub` | `host` | driving the host's hub by hand: snapshots, pushes, counts |
//! | `nova` | `nova` | the loopback Keystone + Nova replaying a real Nova's answers; `nova::lab`, the lab Nova's API |
//! | `lab` | `nova` | the lab's Keystone (tokens, the plugins' `cloud` table), the lab broker's queues, changes over a window (the real Cinder and Neutron tests) |
//! | `heat` | `heat` | the loopback Keystone + Heat replaying a real Heat's answers |
//! | `replay` | `nova` or `heat` | what those two share: a cloud behind a lock, served over HTTP |
//! | `broker` | `broker` | the shared test RabbitMQ: names that clean up on drop, queue inspection, raw publishing |
//! | `oslo` | `broker` | the real oslo.messaging publisher (a Python venv) |
//! | `binary` | `binary` | the `synchronizer` binary running with an HTTP API, and its client |
//! | `listing_bench` | `listing-bench` | a paginated OpenStack listing through a plugin vs download + parse (criterion) |
//!
//! The bus plugin's test configuration and recording sink live in the bus crate
//! (`synchronizer_bus::testing`): a kit that linked a plugin would put two plugins'
//! exported root modules into other plugins' tests.
//!
//! Nothing here is ever skipped quietly: a helper that cannot find what it needs (a
//! library not built, the broker down) fails the test and says how to get it.
#![warn(missing_docs)]

pub mod http;
pub mod nagios;
pub mod paths;
pub mod sys;
pub mod wait;

#[cfg(feature = "binary")]
pub mod binary;
#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "heat")]
pub mod heat;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "host")]
pub mod hub;
#[cfg(feature = "nova")]
pub mod lab;
#[cfg(feature = "listing-bench")]
pub mod listing_bench;
#[cfg(feature = "nova")]
pub mod nova;
#[cfg(feature = "broker")]
pub mod oslo;
#[cfg(any(feature = "nova", feature = "heat"))]
pub mod replay;
