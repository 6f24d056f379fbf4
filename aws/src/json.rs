//! The SDK's types as JSON.
//!
//! The SDK's types do not implement `Serialize` (only behind an unstable compiler flag), so each
//! resource type lists its fields here: their SDK names in snake case, absent fields left out,
//! enums as AWS spells them, times in RFC 3339, and tags as one `{key: value}` map.

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use serde_json::{Map, Value};

/// A JSON object under construction.
#[derive(Debug, Default)]
pub struct Obj(Map<String, Value>);

/// A value a field may hold.
pub trait Field {
    fn json(self) -> Option<Value>;
}

impl Field for Option<&str> {
    fn json(self) -> Option<Value> {
        self.map(|s| Value::String(s.to_owned()))
    }
}

impl Field for &str {
    fn json(self) -> Option<Value> {
        Some(Value::String(self.to_owned()))
    }
}

impl Field for Option<bool> {
    fn json(self) -> Option<Value> {
        self.map(Value::Bool)
    }
}

impl Field for bool {
    fn json(self) -> Option<Value> {
        Some(Value::Bool(self))
    }
}

impl Field for Option<i32> {
    fn json(self) -> Option<Value> {
        self.map(Value::from)
    }
}

impl Field for i32 {
    fn json(self) -> Option<Value> {
        Some(Value::from(self))
    }
}

impl Field for Option<i64> {
    fn json(self) -> Option<Value> {
        self.map(Value::from)
    }
}

impl Field for i64 {
    fn json(self) -> Option<Value> {
        Some(Value::from(self))
    }
}

impl Field for Option<f64> {
    fn json(self) -> Option<Value> {
        self.map(Value::from)
    }
}

impl Field for Option<&DateTime> {
    fn json(self) -> Option<Value> {
        self.and_then(|t| t.fmt(Format::DateTime).ok())
            .map(Value::String)
    }
}

impl Field for Value {
    fn json(self) -> Option<Value> {
        (!self.is_null()).then_some(self)
    }
}

impl Field for Obj {
    fn json(self) -> Option<Value> {
        (!self.0.is_empty()).then_some(Value::Object(self.0))
    }
}

impl Field for Option<Obj> {
    fn json(self) -> Option<Value> {
        self.and_then(Field::json)
    }
}

impl Obj {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` unless the value is absent.
    #[must_use]
    pub fn set(mut self, key: &str, value: impl Field) -> Self {
        if let Some(v) = value.json() {
            self.0.insert(key.to_owned(), v);
        }
        self
    }

    /// Sets `key` to an enum's name, as AWS spells it.
    #[must_use]
    pub fn name<T: AsRef<str>>(self, key: &str, value: Option<&T>) -> Self {
        self.set(key, value.map(AsRef::as_ref))
    }

    /// Sets `key` to a list, unless it is empty.
    #[must_use]
    pub fn list<T>(mut self, key: &str, items: &[T], each: impl Fn(&T) -> Value) -> Self {
        if !items.is_empty() {
            self.0.insert(
                key.to_owned(),
                Value::Array(items.iter().map(each).collect()),
            );
        }
        self
    }

    /// Sets `key` to a list of strings, unless it is empty.
    #[must_use]
    pub fn strings(self, key: &str, items: &[String]) -> Self {
        self.list(key, items, |s| Value::String(s.clone()))
    }

    /// Sets `tags` to the map of the tags given (always present, `{}` when there are none).
    #[must_use]
    pub fn tags<'a>(
        mut self,
        tags: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
    ) -> Self {
        self.0
            .insert("tags".to_owned(), Value::Object(tag_map(tags)));
        self
    }

    /// The object, as JSON.
    #[must_use]
    pub fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// Tags as one map; a tag without a value maps to `""`.
#[must_use]
pub fn tag_map<'a>(
    tags: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Map<String, Value> {
    tags.into_iter()
        .filter_map(|(k, v)| Some((k?.to_owned(), Value::String(v.unwrap_or("").to_owned()))))
        .collect()
}

/// The `Name` tag of a resource, if it has a non-empty one.
#[must_use]
pub fn name_tag(data: &Value) -> Option<String> {
    data.get("tags")?
        .get("Name")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn absent_and_empty_fields_are_left_out_and_tags_are_a_map() {
        let v = Obj::new()
            .set("id", Some("i-1"))
            .set("missing", None::<&str>)
            .set("count", Some(3))
            .set("when", Some(&DateTime::from_secs(0)))
            .strings("empty", &[])
            .set("nested", Obj::new())
            .tags([
                (Some("Name"), Some("web")),
                (Some("bare"), None),
                (None, Some("x")),
            ])
            .done();
        assert_eq!(
            v,
            json!({"id": "i-1", "count": 3, "when": "1970-01-01T00:00:00Z",
                   "tags": {"Name": "web", "bare": ""}})
        );
        assert_eq!(name_tag(&v).as_deref(), Some("web"));
        assert_eq!(name_tag(&json!({"tags": {"Name": ""}})), None);
    }
}
