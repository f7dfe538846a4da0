//! Loading plugin libraries through abi_stable's checks.
//!
//! Each file is opened with `lib_header_from_path(..).init_root_module()`, not
//! `RootModule::load_from_file`, which caches one module per interface type and would
//! hand back the first plugin for every later file (docs/architecture.md §2). abi_stable checks its
//! own ABI, the plugin-api version the plugin was built against and the full layout of
//! every type that crosses; any failure becomes one [`LoadError`] that names the file and
//! the reason in a few lines (abi_stable's own report on a layout mismatch runs to
//! thousands of lines). Libraries are never unloaded: a plugin's code may still run on a
//! stuck thread.

use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, RootModule, lib_header_from_path};
use abi_stable::std_types::RResult;
use synchronizer_plugin_api::PluginKind;
use synchronizer_plugin_api::abi::PluginModRef;

/// A loaded plugin library and what it says about itself.
#[derive(Clone)]
pub struct PluginLibrary {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Its root module.
    pub module: PluginModRef,
    /// Its metadata.
    pub meta: PluginMeta,
}

/// A plugin's metadata, in host types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginMeta {
    /// The plugin's name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line on what it does.
    pub description: String,
    /// The entity types it provides; empty when they are open-ended (the files say).
    pub entity_types: Vec<String>,
    /// Collector, bus or both.
    pub kind: PluginKind,
    /// The plugin-api version it was built against.
    pub api_version: String,
}

/// Why a plugin library cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file does not exist.
    #[error("{}: no such file", .path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a shared library the system can open.
    #[error("{}: not a loadable shared library: {reason}", .path.display())]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A shared library, but not a synchronizer plugin (no abi_stable root module).
    #[error(
        "{}: not a synchronizer plugin (it exports no plugin root module; was it built with `export_plugin!`?)",
        .path.display()
    )]
    NotAPlugin {
        /// The file.
        path: PathBuf,
    },
    /// Built against an incompatible plugin-api or abi_stable.
    #[error(
        "{}: incompatible plugin interface (host plugin-api {host_api}): {reason}; rebuild the plugin against plugin-api {host_api}",
        .path.display()
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The plugin-api version the host has.
        host_api: String,
        /// The short reason.
        reason: String,
    },
    /// The plugin's own initialisation failed (or panicked).
    #[error("{}: the plugin failed to initialise: {reason}", .path.display())]
    Failed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The plugin-api version the host was built with.
pub fn host_api_version() -> String {
    PluginModRef::VERSION_STRINGS.version.to_string()
}

/// Loads one plugin library.
pub fn load(path: &Path) -> Result<PluginLibrary, LoadError> {
    if !path.exists() {
        return Err(LoadError::Missing {
            path: path.to_owned(),
        });
    }
    let header = lib_header_from_path(path).map_err(|e| classify(path, e))?;
    let api_version = header.version_strings().version.to_string();
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| classify(path, e))?;
    let info = match std::panic::catch_unwind(|| (module.info())()) {
        Ok(RResult::ROk(info)) => info,
        Ok(RResult::RErr(e)) => {
            return Err(LoadError::Failed {
                path: path.to_owned(),
                reason: e.message.into(),
            });
        }
        Err(_) => {
            return Err(LoadError::Failed {
                path: path.to_owned(),
                reason: "panicked while describing itself".into(),
            });
        }
    };
    Ok(PluginLibrary {
        path: path.to_owned(),
        module,
        meta: PluginMeta {
            name: info.name().into(),
            version: info.version().into(),
            description: info.description().into(),
            entity_types: info.entity_types().iter().map(|t| t.to_string()).collect(),
            kind: info.kind(),
            api_version,
        },
    })
}

fn classify(path: &Path, e: LibraryError) -> LoadError {
    let path = path.to_owned();
    let host_api = host_api_version();
    match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path,
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Incompatible {
            path,
            host_api,
            reason: format!("abi_stable {actual_version} where the host has {expected_version}"),
        },
        LibraryError::AbiInstability(err) => LoadError::Incompatible {
            path,
            host_api,
            reason: summarize(&err.to_string()),
        },
        LibraryError::InvalidAbiHeader(h) => LoadError::Incompatible {
            path,
            host_api,
            reason: format!("abi_stable header {h:?}"),
        },
        LibraryError::InvalidCAbi { .. } => LoadError::Incompatible {
            path,
            host_api,
            reason: "the C ABI of the compiler that built it differs".into(),
        },
        LibraryError::RootModule { err, .. } => LoadError::Failed {
            path,
            reason: err.to_string(),
        },
        LibraryError::ParseVersionError(err) => LoadError::Incompatible {
            path,
            host_api,
            reason: format!("unreadable version: {err}"),
        },
        LibraryError::Many(errors) => match errors.into_iter().next() {
            Some(first) => classify(&path, first),
            None => LoadError::Failed {
                path,
                reason: "unknown".into(),
            },
        },
    }
}

/// The gist of abi_stable's layout report: its distinct `Error:` lines, at most five.
fn summarize(report: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut iter = report.lines().map(str::trim);
    while let Some(line) = iter.next() {
        if let Some(rest) = line.strip_prefix("Error:") {
            let mut text = rest.trim().to_owned();
            // The detail follows: "Expected:", its value, "Found:", its value.
            for next in iter.by_ref().take(4) {
                if next.is_empty() {
                    break;
                }
                text.push(' ');
                text.push_str(next);
            }
            if !lines.contains(&text) {
                lines.push(text);
            }
        }
        if lines.len() == 5 {
            break;
        }
    }
    if lines.is_empty() {
        report.lines().take(3).collect::<Vec<_>>().join(" ")
    } else {
        lines.join("; ")
    }
}
