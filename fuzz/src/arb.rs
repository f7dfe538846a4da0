//! Entities and wire messages built from the fuzzer's bytes (`arbitrary`): whatever a
//! plugin could build through the entity's `with_*` methods, and whatever either side of
//! the wire could send.

use abi_stable::std_types::{RString, RVec};
use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};
use synchronizer::isolation::wire::{FromChild, ToChild, WireMeta};
use synchronizer_plugin_api::abi::{
    FfiError, FfiIncomplete, FfiPushed, FfiSnapshot, LogLevel, PushAction,
};
use synchronizer_plugin_api::{Category, Entity, ErrorKind, Health, PluginKind, Relation};

/// Any entity a plugin can build: any strings, any `i64` timestamp, properties from a
/// JSON value or from JSON text (when the entity accepts it).
pub fn entity(u: &mut Unstructured<'_>) -> Result<Entity> {
    let category = if u.arbitrary()? {
        Category::Alarm
    } else {
        Category::Resource
    };
    let entity_type: &str = u.arbitrary()?;
    let id: &str = u.arbitrary()?;
    let mut e = Entity::new(category, entity_type, id);
    if u.arbitrary()? {
        e = e.with_name(u.arbitrary::<&str>()?);
    }
    if u.arbitrary()? {
        e = e.with_state(u.arbitrary::<&str>()?);
    }
    if u.arbitrary()? {
        e = e.with_project(u.arbitrary::<&str>()?);
    }
    for _ in 0..u.int_in_range(0..=4)? {
        let kind: &str = u.arbitrary()?;
        let other: &str = u.arbitrary()?;
        e = e.with_relation(if u.arbitrary()? {
            Relation::to(kind, other)
        } else {
            Relation::from(kind, other)
        });
    }
    if u.arbitrary()? {
        e = e.with_source_updated_micros(u.arbitrary()?);
    }
    match u.int_in_range(0..=2)? {
        0 => {}
        1 => e = e.with_properties(json(u, 0)?),
        _ => {
            let text: String = u.arbitrary()?;
            if let Ok(with) = e.clone().with_properties_json(text) {
                e = with;
            }
        }
    }
    Ok(e)
}

/// Up to `max` entities.
pub fn entities(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<Entity>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| entity(u)).collect()
}

/// A JSON value, nested at most a few levels (plus, now and then, very deep).
pub fn json(u: &mut Unstructured<'_>, depth: usize) -> Result<Value> {
    let leaf = depth >= 4;
    Ok(match u.int_in_range(0..=if leaf { 4 } else { 7 })? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(Number::from(u.arbitrary::<i64>()?)),
        3 => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        4 => Value::String(u.arbitrary()?),
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| json(u, depth + 1)).collect::<Result<_>>()?)
        }
        6 => {
            let mut map = Map::new();
            for _ in 0..u.int_in_range(0..=4)? {
                let k: String = u.arbitrary()?;
                map.insert(k, json(u, depth + 1)?);
            }
            Value::Object(map)
        }
        _ => {
            // Nested past what JSON readers read back (serde_json stops at 128).
            let mut v = json(u, 4)?;
            for _ in 0..u.int_in_range(100..=300)? {
                v = Value::Array(vec![v]);
            }
            v
        }
    })
}

fn error(u: &mut Unstructured<'_>) -> Result<FfiError> {
    let kind = *u.choose(&[
        ErrorKind::Config,
        ErrorKind::Failed,
        ErrorKind::Panicked,
        ErrorKind::Cancelled,
        ErrorKind::Unsupported,
    ])?;
    Ok(FfiError {
        kind,
        message: RString::from(u.arbitrary::<&str>()?),
    })
}

fn unit_result(u: &mut Unstructured<'_>) -> Result<std::result::Result<(), FfiError>> {
    Ok(if u.arbitrary()? {
        Ok(())
    } else {
        Err(error(u)?)
    })
}

fn strings(u: &mut Unstructured<'_>) -> Result<Vec<String>> {
    let n = u.int_in_range(0..=4)?;
    (0..n).map(|_| u.arbitrary()).collect()
}

/// Any message a child can send.
pub fn from_child(u: &mut Unstructured<'_>) -> Result<FromChild> {
    Ok(match u.int_in_range(0..=8)? {
        0 => FromChild::Ready {
            meta: WireMeta {
                name: u.arbitrary()?,
                version: u.arbitrary()?,
                description: u.arbitrary()?,
                entity_types: strings(u)?,
                kind: *u.choose(&[PluginKind::Collector, PluginKind::Bus, PluginKind::Both])?,
                api_version: u.arbitrary()?,
            },
        },
        1 => FromChild::CreateFailed {
            load: u.arbitrary()?,
            error: error(u)?,
        },
        2 => FromChild::Snapshot {
            id: u.arbitrary()?,
            result: if u.arbitrary()? {
                let entities: RVec<Entity> = entities(u, 8)?.into_iter().collect();
                let mut incomplete = RVec::new();
                for _ in 0..u.int_in_range(0..=2)? {
                    incomplete.push(FfiIncomplete {
                        entity_type: RString::from(u.arbitrary::<&str>()?),
                        reason: RString::from(u.arbitrary::<&str>()?),
                    });
                }
                Ok(FfiSnapshot {
                    entities,
                    incomplete,
                })
            } else {
                Err(error(u)?)
            },
        },
        3 => FromChild::SnapshotPart {
            id: u.arbitrary()?,
            entities: entities(u, 8)?,
        },
        4 => FromChild::Cancelled {
            id: u.arbitrary()?,
            stuck: u.arbitrary()?,
        },
        5 => FromChild::Push {
            id: u.arbitrary()?,
            batch: entities(u, 8)?
                .into_iter()
                .map(|entity| FfiPushed {
                    action: if entity.id().len() % 2 == 0 {
                        PushAction::Upsert
                    } else {
                        PushAction::Delete
                    },
                    entity,
                })
                .collect(),
        },
        6 => FromChild::RunEnded {
            id: u.arbitrary()?,
            result: unit_result(u)?,
        },
        7 => FromChild::Health {
            id: u.arbitrary()?,
            result: if u.arbitrary()? {
                Ok(Health {
                    healthy: u.arbitrary()?,
                    message: u.arbitrary()?,
                })
            } else {
                Err(error(u)?)
            },
        },
        _ => FromChild::Pong {
            id: u.arbitrary()?,
            calls_in_flight: u.arbitrary()?,
            counters: (0..u.int_in_range(0..=4)?)
                .map(|_| Ok((u.arbitrary()?, u.arbitrary()?)))
                .collect::<Result<_>>()?,
        },
    })
}

/// Any message the host can send.
pub fn to_child(u: &mut Unstructured<'_>) -> Result<ToChild> {
    Ok(match u.int_in_range(0..=8)? {
        0 => ToChild::Init {
            instance: u.arbitrary()?,
            library: u.arbitrary()?,
            config_json: u.arbitrary()?,
            max_level: *u.choose(&[
                LogLevel::Off,
                LogLevel::Error,
                LogLevel::Warn,
                LogLevel::Info,
                LogLevel::Debug,
                LogLevel::Trace,
            ])?,
            create_timeout_ms: u.arbitrary()?,
            memory_limit: u.arbitrary()?,
        },
        1 => ToChild::Snapshot {
            id: u.arbitrary()?,
            types: strings(u)?,
        },
        2 => ToChild::Cancel { id: u.arbitrary()? },
        3 => ToChild::Run { id: u.arbitrary()? },
        4 => ToChild::PushAck {
            id: u.arbitrary()?,
            result: unit_result(u)?,
        },
        5 => ToChild::RequestStop,
        6 => ToChild::Health { id: u.arbitrary()? },
        7 => ToChild::Ping { id: u.arbitrary()? },
        _ => ToChild::Shutdown {
            timeout_ms: u.arbitrary()?,
        },
    })
}
