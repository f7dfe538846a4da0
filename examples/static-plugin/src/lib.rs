//! A third-party plugin for the synchronizer, built only against `synchronizer-plugin-api`:
//! a collector for Vitrage's "static" data source. Entities and their relations that are
//! not in OpenStack (switches, racks, power feeds) are described in YAML files in one
//! directory; every poll reads all of them and returns a complete snapshot.
//!
//! A file looks like this:
//!
//! ```yaml
//! entities:
//!   - type: switch            # any entity type
//!     id: sw-1                # native id, unique within the type
//!     name: top-of-rack-1
//!     state: available
//!     category: resource      # or alarm; resource by default
//!     project: infra          # optional
//!     properties: { ports: 48 }
//! relationships:
//!   - source: rack:r-1        # keys are <type>:<id>
//!     target: switch:sw-1
//!     type: contains
//! ```
//!
//! A relationship is attached to its source entity when that entity is defined in the
//! directory, otherwise to its target. A file that does not parse fails the whole
//! snapshot (nothing is deleted), naming the file and the line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use synchronizer_plugin_api::{
    Category, Context, Entity, Error, Health, Plugin, PluginInfo, PluginKind, Relation, Snapshot,
};

/// The instance's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The directory holding the `*.yaml` / `*.yml` files.
    pub directory: PathBuf,
}

/// The plugin: one directory of YAML files.
pub struct StaticPlugin {
    directory: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    entities: Vec<EntityDef>,
    #[serde(default)]
    relationships: Vec<RelationDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum CategoryDef {
    Resource,
    Alarm,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityDef {
    #[serde(rename = "type")]
    entity_type: String,
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    category: Option<CategoryDef>,
    #[serde(default)]
    properties: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelationDef {
    source: String,
    target: String,
    #[serde(rename = "type")]
    kind: String,
}

impl Plugin for StaticPlugin {
    type Config = Config;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "static",
            version: env!("CARGO_PKG_VERSION"),
            description: "entities and relations described in YAML files (Vitrage's static data source)",
            // Any type: the files say which.
            entity_types: &[],
            kind: PluginKind::Collector,
        }
    }

    fn sample_config() -> &'static str {
        include_str!("../sample.toml")
    }

    /// `directory` must be a directory this process can list (nothing is read yet).
    fn validate(config: &Config, _ctx: &Context) -> Result<(), Error> {
        check_directory(&config.directory).map_err(|e| Error::config_field("directory", e))
    }

    fn new(config: Config, _ctx: &Context) -> Result<Self, Error> {
        tracing::info!(directory = %config.directory.display(), "static plugin ready");
        Ok(StaticPlugin {
            directory: config.directory,
        })
    }

    async fn snapshot(&self, _types: &[String]) -> Result<Snapshot, Error> {
        let paths = yaml_files(&self.directory).await?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            // Checked before reading, so that a huge file is not read into memory first.
            let meta = tokio::fs::metadata(&path).await.ok();
            if let Some(len) = meta
                .as_ref()
                .map(|m| m.len())
                .filter(|&n| n > MAX_FILE_BYTES)
            {
                return Err(Error::failed(format!(
                    "{}: {}",
                    path.display(),
                    too_large(len)
                )));
            }
            let text = tokio::fs::read_to_string(&path)
                .await
                .map_err(|e| Error::failed(format!("cannot read {}: {e}", path.display())))?;
            let modified = meta.and_then(|m| m.modified().ok());
            files.push(YamlFile {
                path,
                text,
                modified,
            });
        }
        let entities = entities_of(&files)?;
        tracing::debug!(
            files = files.len(),
            entities = entities.len(),
            "read static entities"
        );
        Ok(Snapshot::complete(entities))
    }

    async fn health(&self) -> Health {
        self.check().await
    }
}

/// Why `dir` cannot be the plugin's directory: not a directory, or not listable.
fn check_directory(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::read_dir(dir)
            .map(drop)
            .map_err(|e| format!("cannot list {}: {e}", dir.display())),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

impl StaticPlugin {
    async fn check(&self) -> Health {
        match tokio::fs::read_dir(&self.directory).await {
            Ok(_) => Health::healthy(),
            Err(e) => Health::unhealthy(format!("cannot read {}: {e}", self.directory.display())),
        }
    }
}

/// One YAML file as read from the directory.
#[doc(hidden)]
pub struct YamlFile {
    /// Where it is (for messages).
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// When it was last modified: the source timestamp of its entities.
    pub modified: Option<std::time::SystemTime>,
}

/// The entities the files describe, relations attached (see the crate docs), or why the
/// files cannot be used. Public for the fuzz targets in `fuzz/`, not part of the API.
#[doc(hidden)]
pub fn entities_of(files: &[YamlFile]) -> Result<Vec<Entity>, Error> {
    let mut entities: Vec<Entity> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut relations = Vec::new();
    for f in files {
        let path = &f.path;
        check_bounds(&f.text).map_err(|e| Error::failed(format!("{}: {e}", path.display())))?;
        let file: File = serde_yaml::from_str(&f.text)
            .map_err(|e| Error::failed(format!("{}: {e}", path.display())))?;
        for def in file.entities {
            let key = format!("{}:{}", def.entity_type, def.id);
            if index.contains_key(&key) {
                return Err(Error::failed(format!(
                    "{}: entity {key} is defined twice",
                    path.display()
                )));
            }
            index.insert(key, entities.len());
            entities.push(to_entity(def, f.modified));
        }
        relations.extend(file.relationships.into_iter().map(|r| (path, r)));
    }
    for (path, r) in relations {
        if let Some(&i) = index.get(&r.source) {
            let e = std::mem::replace(&mut entities[i], Entity::resource("", ""));
            entities[i] = e.with_relation(Relation::to(&r.kind, r.target));
        } else if let Some(&i) = index.get(&r.target) {
            let e = std::mem::replace(&mut entities[i], Entity::resource("", ""));
            entities[i] = e.with_relation(Relation::from(&r.kind, r.source));
        } else {
            return Err(Error::failed(format!(
                "{}: relationship {} -> {} names no entity defined here",
                path.display(),
                r.source,
                r.target
            )));
        }
    }
    Ok(entities)
}

/// The largest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The deepest nesting of flow collections (`[...]`, `{...}`) read. serde_yaml refuses
/// documents nested deeper than 128 levels anyway, but only after libyaml has scanned
/// them, and libyaml's scan costs time in proportion to the depth for every token: 50,000
/// open brackets took 8 s, 50,000 `{a: ` 86 s, found by the fuzz target `static_yaml`.
pub const MAX_FLOW_DEPTH: usize = 128;

fn too_large(len: u64) -> String {
    format!("the file is larger than {MAX_FILE_BYTES} bytes ({len} bytes)")
}

/// Refuses, before parsing, a text larger than [`MAX_FILE_BYTES`] or nested deeper than
/// [`MAX_FLOW_DEPTH`] flow collections. The depth is counted over the brackets outside
/// quoted scalars and comments; brackets inside plain or block scalars count too, but they
/// only make the count larger when they are unbalanced by the hundred.
fn check_bounds(text: &str) -> Result<(), String> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(text.len() as u64));
    }
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // Whether the byte before `i` lets a quoted scalar or a comment start at `i`.
    let mut at_token_start = true;
    while i < b.len() {
        let c = b[i];
        match c {
            b'#' if at_token_start => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' if at_token_start => {
                i += 1;
                while i < b.len() {
                    match b[i] {
                        b'\\' if c == b'"' => i += 1,
                        // `''` is an escaped quote inside a single-quoted scalar.
                        b'\'' if c == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 1,
                        q if q == c => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(format!(
                        "flow collections are nested deeper than {MAX_FLOW_DEPTH} levels"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at_token_start = matches!(
            b.get(i),
            Some(b' ' | b'\t' | b'\r' | b'\n' | b'[' | b'{' | b',' | b':' | b'-' | b'?')
        );
        i += 1;
    }
    Ok(())
}

fn to_entity(def: EntityDef, modified: Option<std::time::SystemTime>) -> Entity {
    let category = match def.category {
        Some(CategoryDef::Alarm) => Category::Alarm,
        _ => Category::Resource,
    };
    let mut e = Entity::new(category, &def.entity_type, &def.id);
    e = e.with_name(def.name.unwrap_or_else(|| def.id.clone()));
    if let Some(state) = def.state {
        e = e.with_state(state);
    }
    if let Some(project) = def.project {
        e = e.with_project(project);
    }
    if let Some(properties) = def.properties {
        e = e.with_properties(properties);
    }
    if let Some(at) = modified {
        e = e.with_source_updated(at);
    }
    e
}

async fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| Error::failed(format!("cannot list {}: {e}", dir.display())))?;
    while let Some(entry) = rd
        .next_entry()
        .await
        .map_err(|e| Error::failed(format!("cannot list {}: {e}", dir.display())))?
    {
        let path = entry.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

synchronizer_plugin_api::export_plugin!(StaticPlugin);

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn parse(text: &str) -> Result<Vec<Entity>, Error> {
        entities_of(&[YamlFile {
            path: "t.yaml".into(),
            text: text.to_owned(),
            modified: None,
        }])
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        // Found by the fuzz target `static_yaml` (its regression inputs are
        // fuzz/corpus/static_yaml/regress-deep-*): 50,000 `{a: ` took 86 s to refuse.
        for deep in [
            "[".repeat(50_000),
            "{a: ".repeat(50_000),
            format!("entities: {}", "[".repeat(MAX_FLOW_DEPTH + 1)),
        ] {
            let started = Instant::now();
            let e = parse(&deep).unwrap_err();
            assert!(e.to_string().contains("nested deeper than 128"), "{e}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }
        let huge = " ".repeat(MAX_FILE_BYTES as usize + 1);
        assert!(
            parse(&huge)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }

    #[test]
    fn brackets_in_quotes_and_comments_do_not_count() {
        let opens = "[".repeat(200);
        let text = format!(
            "entities:  # {opens}\n  - type: t\n    id: '{opens}'' {{'\n    name: \"{opens}\\\" {{\"\n    properties: {{a: [[1]], b: '}}'}}\n"
        );
        let e = parse(&text).unwrap();
        assert_eq!(e[0].id(), format!("{opens}' {{"));
        assert_eq!(e[0].name(), format!("{opens}\" {{"));
        assert_eq!(e[0].properties(), serde_json::json!({"a": [[1]], "b": "}"}));
    }

    fn validate(directory: &Path) -> Result<(), Error> {
        let ctx = Context {
            instance: "static-test".into(),
        };
        StaticPlugin::validate(
            &Config {
                directory: directory.to_owned(),
            },
            &ctx,
        )
    }

    #[test]
    fn validate_wants_a_directory_it_can_list() {
        let dir = std::env::temp_dir().join(format!("synchronizer-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(validate(&dir), Ok(()));
        let file = dir.join("rack.yaml");
        std::fs::write(&file, "entities: []\n").unwrap();
        let e = validate(&file).unwrap_err();
        assert_eq!(e.kind(), synchronizer_plugin_api::ErrorKind::Config);
        assert_eq!(e.field(), Some("directory"));
        assert_eq!(
            e.message(),
            format!("{} is not a directory", file.display())
        );
        let e = validate(&dir.join("missing")).unwrap_err();
        assert_eq!(e.field(), Some("directory"));
        assert!(
            e.message().contains("No such file or directory"),
            "{}",
            e.message()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_sample_configuration_is_valid() {
        let sample: toml::Value = toml::from_str(StaticPlugin::sample_config()).unwrap();
        let instance = &sample["instances"][0];
        assert_eq!(
            instance["library"].as_str(),
            Some("libsynchronizer_static.so")
        );
        let config: Config =
            serde_json::from_value(serde_json::to_value(&instance["config"]).unwrap()).unwrap();
        assert_eq!(validate(&config.directory), Ok(()));
    }
}
