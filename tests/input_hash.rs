//! The input hash's properties over generated documents (pure: no database).

use costdb::input_hash::{canonical_json, compute_input_hash};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Arbitrary JSON documents: nested objects and arrays of strings (any Unicode),
/// integers, floats, booleans and nulls.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `value` with the entries of every object in reverse insertion order, rebuilt through
/// JSON text so that the maps really are new.
fn reordered(value: &Value) -> Value {
    fn text(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                out.push('{');
                let entries: Vec<_> = map.iter().rev().collect();
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    text(item, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    text(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).unwrap()),
        }
    }
    let mut out = String::new();
    text(value, &mut out);
    serde_json::from_str(&out).unwrap()
}

proptest! {
    #[test]
    fn key_order_never_changes_the_hash(doc in json()) {
        prop_assert_eq!(compute_input_hash(&doc), compute_input_hash(&reordered(&doc)));
    }

    #[test]
    fn whitespace_in_the_text_never_changes_the_hash(doc in json()) {
        let pretty = serde_json::to_string_pretty(&doc).unwrap();
        let reparsed: Value = serde_json::from_str(&pretty).unwrap();
        prop_assert_eq!(compute_input_hash(&doc), compute_input_hash(&reparsed));
    }

    #[test]
    fn the_canonical_text_is_ascii_json_of_the_same_document(doc in json()) {
        let text = canonical_json(&doc);
        prop_assert!(text.is_ascii());
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(canonical_json(&back), text);
    }

    #[test]
    fn any_change_of_a_value_changes_the_hash(doc in json(), extra in ".{0,8}") {
        // Wrap, then change one leaf: a string gains a character, a number moves.
        let base = serde_json::json!({ "doc": doc, "leaf": extra.clone() });
        let changed = serde_json::json!({ "doc": base["doc"].clone(), "leaf": format!("{extra}!") });
        prop_assert_ne!(compute_input_hash(&base), compute_input_hash(&changed));
        let mut numbered = base.clone();
        numbered["leaf"] = Value::from(1);
        let mut renumbered = base.clone();
        renumbered["leaf"] = Value::from(2);
        prop_assert_ne!(compute_input_hash(&numbered), compute_input_hash(&renumbered));
        let mut float = base.clone();
        float["leaf"] = Value::from(1.0);
        prop_assert_ne!(compute_input_hash(&numbered), compute_input_hash(&float));
    }
}
