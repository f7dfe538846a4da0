//! Where in the TOML file a value of an instance's configuration was written, so that a
//! plugin's complaint about a field (`check-config`, and an instance that fails to
//! start) points at the line and column the user wrote, not at the JSON the host hands
//! the plugin.
//!
//! The configuration file is parsed a second time, with `toml_edit`, which keeps spans;
//! the instance is found by its `name` among `[[instances]]`, then the field's path
//! (`tls.ca_file`, `families[1]`, serde_path_to_error's notation) is followed into its
//! `config` table as far as it goes. A value set only through a `SYNCHRONIZER_*`
//! variable has no place in the file: then there is no location.

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

/// A position in the file, both counted from 1; the column in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The line.
    pub line: usize,
    /// The column.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` as serde_path_to_error writes it; `.` is the table itself.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(tail) = rest.strip_prefix('[') {
            let Some(end) = tail.find(']') else { break };
            if let Ok(i) = tail[..end].parse() {
                out.push(Segment::Index(i));
            }
            rest = &tail[end + 1..];
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

type Span = Option<std::ops::Range<usize>>;

impl<'a> Node<'a> {
    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Value(Value::InlineTable(t)) => Some(t),
            Node::Table(t) => Some(t),
            Node::Value(_) => None,
        }
    }

    /// The child under `segment`, and the span that best names it (its key, for a key).
    fn child(self, segment: &Segment<'_>) -> Option<(Node<'a>, Span)> {
        match segment {
            Segment::Key(k) => {
                let (key, child) = self.table_like()?.get_key_value(k)?;
                Some((Node::Item(child), key.span().or_else(|| child.span())))
            }
            Segment::Index(i) => match self {
                Node::Item(Item::ArrayOfTables(a)) => {
                    let table = a.get(*i)?;
                    Some((Node::Table(table), table.span()))
                }
                Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                    let v = a.get(*i)?;
                    Some((Node::Value(v), v.span()))
                }
                _ => None,
            },
        }
    }
}

/// Where instance `instance`'s `field` (a path in its `config` table; `None` for the
/// table itself) was written in `text`, as far as the path can be followed: a field that
/// is missing points at the table that should hold it.
pub fn locate(text: &str, instance: &str, field: Option<&str>) -> Option<Location> {
    let doc = ImDocument::parse(text).ok()?;
    let instances = doc.as_table().get("instances")?;
    let entries: Vec<Node<'_>> = match instances {
        Item::ArrayOfTables(a) => a.iter().map(Node::Table).collect(),
        Item::Value(Value::Array(a)) => a.iter().map(Node::Value).collect(),
        _ => return None,
    };
    let entry = entries.into_iter().find(|e| {
        e.table_like()
            .and_then(|t| t.get("name"))
            .and_then(Item::as_str)
            == Some(instance)
    })?;
    let mut span: Span = None;
    let mut node = entry;
    if let Some(name) = entry.table_like().and_then(|t| t.get_key_value("name")) {
        span = name.0.span();
    }
    if let Some((config, config_span)) = node.child(&Segment::Key("config")) {
        node = config;
        span = config_span.or(span);
        for segment in segments(field.unwrap_or(".")) {
            match node.child(&segment) {
                Some((child, child_span)) => {
                    node = child;
                    span = child_span.or(span);
                }
                None => break,
            }
        }
    }
    span.map(|s| position(text, s.start))
}

/// The 1-based line and column (in characters) of byte `offset`.
fn position(text: &str, offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"plugins_dir = "plugins"

[[instances]]
name = "racks"
library = "libracks.so"
[instances.config]
racks = 12

[[instances]]
name = "bus"
library = "libsynchronizer_bus.so"
[instances.config]
urls = ["amqp://127.0.0.1:5672"]
families = ["nova", "neutron"]
prefetch = 0
tls = { ca_file = "/nowhere" }
[[instances.config.subscriptions]]
queue = "a"
[[instances.config.subscriptions]]
queue = "b"
"#;

    fn at(instance: &str, field: Option<&str>) -> Option<(usize, usize)> {
        locate(FILE, instance, field).map(|l| (l.line, l.column))
    }

    #[test]
    fn a_field_is_found_in_its_instance() {
        assert_eq!(at("bus", Some("prefetch")), Some((15, 1)));
        assert_eq!(at("racks", Some("racks")), Some((7, 1)));
    }

    #[test]
    fn nested_fields_arrays_and_arrays_of_tables() {
        assert_eq!(at("bus", Some("tls.ca_file")), Some((16, 9)));
        assert_eq!(at("bus", Some("families[1]")), Some((14, 21)));
        assert_eq!(at("bus", Some("subscriptions[1].queue")), Some((20, 1)));
    }

    #[test]
    fn a_missing_field_points_at_what_should_hold_it() {
        assert_eq!(at("bus", Some("heat.url")), Some((12, 12)));
        assert_eq!(at("bus", None), Some((12, 12)));
        assert_eq!(at("nowhere", Some("x")), None);
        assert_eq!(locate("not toml [", "bus", None), None);
    }
}
