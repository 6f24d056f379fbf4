//! `google.protobuf.Struct` to JSON and back.
//!
//! Every number in a Struct is a double: a plugin's integers arrive as `2.0`. They are made
//! integers again where they are integral and unambiguous (|n| < 2⁵³), so that a
//! disk's `size: 8` stays `8` in Gleaner's data and in its filters. Past 2⁵³ a double no longer
//! tells which integer it was; such numbers stay floats.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as PbValue};
use serde_json::{Map, Number, Value};

/// 2⁵³: below it a double holds every integer exactly; 2⁵³ itself may be a rounded 2⁵³ + 1.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// A Struct as a JSON object.
#[must_use]
pub fn to_json(s: Struct) -> Map<String, Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, value_to_json(v)))
        .collect()
}

/// A Struct that may be absent (proto3 leaves an unset message out) as a JSON object.
#[must_use]
pub fn to_json_or_empty(s: Option<Struct>) -> Map<String, Value> {
    s.map(to_json).unwrap_or_default()
}

/// One Struct value as JSON.
#[must_use]
pub fn value_to_json(v: PbValue) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StructValue(s)) => Value::Object(to_json(s)),
        Some(Kind::ListValue(l)) => list_to_json(l),
    }
}

/// A ListValue as a JSON array.
#[must_use]
pub fn list_to_json(l: ListValue) -> Value {
    Value::Array(l.values.into_iter().map(value_to_json).collect())
}

#[allow(clippy::cast_possible_truncation)]
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < EXACT {
        // Integral and within ±(2⁵³ − 1): the integer sent, and the cast loses nothing.
        return Value::Number(Number::from(n as i64));
    }
    // NaN and the infinities have no JSON form.
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

/// A JSON object as a Struct.
#[must_use]
pub fn from_json(m: &Map<String, Value>) -> Struct {
    Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// A JSON value as a Struct value; numbers become doubles, as the protocol has them.
#[must_use]
pub fn json_to_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(from_json(o)),
    };
    PbValue { kind: Some(kind) }
}

/// A JSON value as a Struct, for a request field: an object as it is, anything else (`null`
/// included) as an empty Struct, since plugins want every Struct field present.
#[must_use]
pub fn request_struct(v: &Value) -> Struct {
    match v {
        Value::Object(o) => from_json(o),
        _ => Struct::default(),
    }
}

/// The value at a dotted path (`reference.resource_id`, `data.cloudwatch`) in nested objects.
#[must_use]
pub fn at_path<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut here = object.get(parts.next()?)?;
    for part in parts {
        here = here.as_object()?.get(part)?;
    }
    Some(here)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn integral_doubles_come_back_as_integers() {
        let sent = json!({
            "core": 2, "size": 8.0, "ratio": 0.5, "neg": -3, "big": 9_007_199_254_740_993_u64,
            "nested": {"list": [1, 2.5, "x", null, true]},
        });
        let back = Value::Object(to_json(from_json(sent.as_object().unwrap())));
        assert_eq!(back["core"], json!(2));
        assert!(back["core"].is_i64());
        assert!(back["size"].is_i64(), "8.0 is the integer 8");
        assert_eq!(back["ratio"], json!(0.5));
        assert_eq!(back["neg"], json!(-3));
        // Past 2⁵³ the double is a rounding of the integer sent: it stays a float.
        assert!(back["big"].is_f64());
        assert_eq!(back["nested"]["list"], json!([1, 2.5, "x", null, true]));
    }

    #[test]
    fn the_largest_safe_integer_is_the_last_one_restored() {
        assert_eq!(number(EXACT - 1.0), json!(9_007_199_254_740_991_i64));
        assert!(number(EXACT).is_f64());
        assert_eq!(number(f64::NAN), Value::Null);
    }

    #[test]
    fn request_fields_are_never_absent() {
        assert_eq!(request_struct(&Value::Null), Struct::default());
        assert_eq!(request_struct(&json!([1])), Struct::default());
        assert_eq!(request_struct(&json!({"a": 1})).fields.len(), 1);
    }
}
