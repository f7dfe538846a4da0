//! Loading plugin libraries through abi_stable's checks.
//!
//! Each file is opened with `lib_header_from_path(..).init_root_module()`, not
//! `RootModule::load_from_file`, which caches one module per interface type and would
//! hand back the first plugin for every later file (docs/architecture.md §2). Before
//! abi_stable's own checks, the loader applies the project's version rule (plugin-api's
//! crate docs, "Evolving the interface"): a plugin built against the same `0.1` with a
//! patch release no newer than the host's loads; anything else is refused, naming both
//! versions. Then it checks the full layout of every type that crosses itself, to keep
//! abi_stable's structured report (abi_stable flattens it into thousands of lines of
//! text), and says in one line which type and which field differ. Libraries are never
//! unloaded: a plugin's code may still run on a stuck thread.

use std::path::{Path, PathBuf};

use abi_stable::StableAbi;
use abi_stable::abi_stability::abi_checking::{
    AbiInstability, AbiInstabilityErrors, check_layout_compatibility,
};
use abi_stable::library::{LibraryError, RootModule, lib_header_from_path};
use abi_stable::std_types::RResult;
use abi_stable::type_layout::TLFieldOrFunction;
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
    /// Its sample `[[instances]]` table: `None` when it was built against a plugin-api
    /// that predates samples (0.1.0), `Some("")` when it gives none.
    pub sample_config: Option<String>,
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
    /// Built against a plugin-api this host cannot load.
    #[error(
        "{}: built against plugin-api {plugin_api}, which this host (plugin-api {host_api}) cannot load: {reason}",
        .path.display()
    )]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The plugin-api version the plugin was built against.
        plugin_api: String,
        /// The plugin-api version the host has.
        host_api: String,
        /// Why, and what to do, in one line.
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
    let header = lib_header_from_path(path).map_err(|e| classify(path, "unknown", e))?;
    let api_version = header.version_strings().version.to_string();
    let incompatible = |reason: String| LoadError::Incompatible {
        path: path.to_owned(),
        plugin_api: api_version.clone(),
        host_api: host_api_version(),
        reason,
    };
    check_version(&api_version).map_err(incompatible)?;
    let Some(layout) = header.layout() else {
        return Err(incompatible(
            "it carries no layout information (built with `CheckTypeLayout::No`), so it cannot be checked; build it with `export_plugin!`".into(),
        ));
    };
    // The plugin's view is the interface: every type it knows must be laid out alike in
    // the host, whose prefix types (the root module, FfiPluginInfo, the vtables) may have
    // fields appended since. abi_stable's own check runs the other way round (the
    // library's types may extend the loader's), which would refuse every older plugin.
    if let Err(errors) = check_layout_compatibility(layout, <PluginModRef as StableAbi>::LAYOUT) {
        return Err(incompatible(describe_layout_mismatch(&errors)));
    }
    // SAFETY: the layout was just checked, in the direction that fits the version rule
    // (the host is as new as the plugin or newer): what the plugin hands out has the
    // layout the host reads, up to fields the plugin lacks, which the host reads through
    // accessors bounded by the plugin's own prefix metadata (`None` beyond it).
    let module = unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }
        .map_err(|e| classify(path, &api_version, e))?;
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
        sample_config: info.sample_config().map(|s| s.to_string()),
    })
}

/// The version rule: same release series (`0.1` for 0.x, the major from 1.0 on) and a
/// plugin-api no newer than the host's. A newer plugin may call host entry points this
/// host does not have, so it is refused, not loaded to fail later.
fn check_version(plugin: &str) -> Result<(), String> {
    let host = host_api_version();
    let (Some(p), Some(h)) = (parse_version(plugin), parse_version(&host)) else {
        return Err("its plugin-api version cannot be read".into());
    };
    let series = |(major, minor, _): (u64, u64, u64)| {
        if major == 0 {
            format!("0.{minor}")
        } else {
            major.to_string()
        }
    };
    if series(p) != series(h) {
        return Err(format!(
            "plugin-api {} and {} are different interfaces; rebuild the plugin against plugin-api {host}",
            series(p),
            series(h)
        ));
    }
    if p > h {
        return Err(format!(
            "the plugin is newer than the host; upgrade the host to one with plugin-api {plugin} or later, or rebuild the plugin against plugin-api {host}"
        ));
    }
    Ok(())
}

/// `major.minor.patch`, ignoring a pre-release or build suffix.
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// One line from abi_stable's structured report: the most specific difference (the
/// deepest in the tree of types), which type holds it, and what each side has.
fn describe_layout_mismatch(errors: &AbiInstabilityErrors) -> String {
    let deepest = errors
        .errors
        .iter()
        .filter(|e| !e.errs.is_empty())
        .max_by_key(|e| e.stack_trace.len());
    let Some(error) = deepest else {
        return "the layout of its interface types differs from the host's".into();
    };
    let type_name = |step: &TLFieldOrFunction| match step {
        TLFieldOrFunction::Field(f) => f.layout().name().to_owned(),
        TLFieldOrFunction::Function(f) => format!("fn {}", f.name),
    };
    let member_name = |step: &TLFieldOrFunction| match step {
        TLFieldOrFunction::Field(f) => f.name().to_owned(),
        TLFieldOrFunction::Function(f) => f.name.to_string(),
    };
    let steps = &error.stack_trace;
    let Some(first) = error.errs.first() else {
        return "the layout of its interface types differs from the host's".into();
    };
    let what = describe_instability(first);
    // A difference among a type's fields is the type's; any other is one field's type.
    let place = match (first, steps.last()) {
        (
            AbiInstability::UnexpectedField(_)
            | AbiInstability::FieldCountMismatch(_)
            | AbiInstability::TooManyVariants(_)
            | AbiInstability::UnexpectedVariant(_),
            Some(last),
        ) => format!("`{}`", type_name(&last.expected)),
        (_, Some(last)) => {
            let parent = match steps.len().checked_sub(2).and_then(|i| steps.get(i)) {
                Some(step) => type_name(&step.expected),
                None => errors.interface.name().to_owned(),
            };
            format!("`{parent}`, field `{}`,", member_name(&last.expected))
        }
        (_, None) => format!("`{}`", errors.interface.name()),
    };
    format!(
        "{place} differs: {what}; the plugin was built from a plugin-api of the same version with other types (a modified or unreleased copy): rebuild it against the plugin-api this host was built from"
    )
}

/// One difference, in words; abi_stable's `expected` is the plugin's side here (the
/// plugin's layout is the interface checked), `found` the host's.
fn describe_instability(e: &AbiInstability) -> String {
    match e {
        AbiInstability::UnexpectedField(ef) => format!(
            "the plugin has field `{}: {}` where the host has `{}: {}`",
            ef.expected.name(),
            ef.expected.full_type(),
            ef.found.name(),
            ef.found.full_type()
        ),
        AbiInstability::FieldCountMismatch(ef) => format!(
            "{} fields in the plugin, {} in the host",
            ef.expected, ef.found
        ),
        AbiInstability::Size(ef) => {
            format!(
                "{} bytes in the plugin, {} in the host",
                ef.expected, ef.found
            )
        }
        AbiInstability::Alignment(ef) => format!(
            "alignment {} in the plugin, {} in the host",
            ef.expected, ef.found
        ),
        AbiInstability::Name(ef) => {
            format!(
                "type `{}` in the plugin, `{}` in the host",
                ef.expected, ef.found
            )
        }
        AbiInstability::MismatchedPrimitive(ef) => format!(
            "primitive {:?} in the plugin, {:?} in the host",
            ef.expected, ef.found
        ),
        AbiInstability::TooManyVariants(ef) => format!(
            "{} variants in the plugin, {} in the host",
            ef.expected, ef.found
        ),
        AbiInstability::UnexpectedVariant(ef) => format!(
            "variant `{}` in the plugin where the host has `{}`",
            ef.expected, ef.found
        ),
        AbiInstability::PackageVersion(ef) => format!(
            "from {} in the plugin, {} in the host",
            ef.expected, ef.found
        ),
        other => {
            let text = format!("{other:?}");
            text.chars().take(200).collect()
        }
    }
}

fn classify(path: &Path, plugin_api: &str, e: LibraryError) -> LoadError {
    let path = path.to_owned();
    let host_api = host_api_version();
    let incompatible = |path: PathBuf, reason: String| LoadError::Incompatible {
        path,
        plugin_api: plugin_api.to_owned(),
        host_api: host_api.clone(),
        reason,
    };
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
        } => incompatible(
            path,
            format!("plugin-api {actual_version} where the host has {expected_version}"),
        ),
        LibraryError::AbiInstability(err) => incompatible(path, summarize(&err.to_string())),
        LibraryError::InvalidAbiHeader(h) => incompatible(
            path,
            format!("its abi_stable header ({h:?}) is not this host's abi_stable 0.11"),
        ),
        LibraryError::InvalidCAbi { .. } => incompatible(
            path,
            "the C ABI of the compiler that built it differs".into(),
        ),
        LibraryError::RootModule { err, .. } => LoadError::Failed {
            path,
            reason: err.to_string(),
        },
        LibraryError::ParseVersionError(err) => {
            incompatible(path, format!("unreadable version: {err}"))
        }
        LibraryError::Many(errors) => match errors.into_iter().next() {
            Some(first) => classify(&path, plugin_api, first),
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
