//! Input checks that run before any SQL: each failure names its field.

use chrono::{DateTime, NaiveDate, Utc};

use crate::error::{Error, Result};

/// The largest amount in cents one value may carry: 10^12 cents, ten billion dollars.
///
/// Every sum and average the analytics compute stays finite under it: even 10^290 such
/// amounts add up to less than `f64::MAX`.
pub const MAX_AMOUNT_CENTS: f64 = 1e12;

/// Text without NUL characters, which PostgreSQL cannot store.
pub(crate) fn text(field: &'static str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(field, "contains a NUL character"));
    }
    Ok(())
}

/// Optional text without NUL characters (may be empty).
pub(crate) fn optional_text(field: &'static str, value: Option<&str>) -> Result<()> {
    value.map_or(Ok(()), |v| text(field, v))
}

/// How deeply JSON bound for `jsonb` may nest (containers and the values in them): as deep
/// as `serde_json` parses when the row is read back (128 levels), so whatever is stored can
/// be read; and little enough that serializing and dropping it fits in any thread's stack.
pub const MAX_JSON_DEPTH: usize = 128;

/// JSON that `jsonb` can store: no NUL character in any string or key, nested at most
/// [`MAX_JSON_DEPTH`] levels. The walk stops at the bound, so it never recurses deeper
/// than that, whatever the input's depth.
pub(crate) fn json(field: &'static str, value: &serde_json::Value) -> Result<()> {
    json_at(field, value, 1)
}

fn json_at(field: &'static str, value: &serde_json::Value, depth: usize) -> Result<()> {
    use serde_json::Value;
    if depth > MAX_JSON_DEPTH {
        return Err(Error::invalid(
            field,
            format!("nests deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    match value {
        Value::String(s) => text(field, s),
        Value::Array(items) => items.iter().try_for_each(|v| json_at(field, v, depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            text(field, k)?;
            json_at(field, v, depth + 1)
        }),
        _ => Ok(()),
    }
}

/// A required string of at most `max` characters (the column's varchar length).
pub(crate) fn required(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    // A string has no more characters than bytes: only a long one needs counting.
    if value.len() > max {
        let len = value.chars().count();
        if len > max {
            return Err(Error::invalid(
                field,
                format!("is {len} characters long, the column holds {max}"),
            ));
        }
    }
    text(field, value)
}

/// An optional string: when present, non-empty and at most `max` characters.
pub(crate) fn optional(field: &'static str, value: Option<&str>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |v| required(field, v, max))
}

/// A count that cannot be negative.
pub(crate) fn non_negative(field: &'static str, value: i64) -> Result<()> {
    if value < 0 {
        return Err(Error::invalid(field, format!("{value} is negative")));
    }
    Ok(())
}

/// A finite, non-negative amount of at most [`MAX_AMOUNT_CENTS`].
pub(crate) fn amount(field: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::invalid(
            field,
            format!("{value} is not a finite number"),
        ));
    }
    if value < 0.0 {
        return Err(Error::invalid(field, format!("{value} is negative")));
    }
    if value > MAX_AMOUNT_CENTS {
        return Err(Error::invalid(
            field,
            format!("{value} is above the largest amount, {MAX_AMOUNT_CENTS:e} cents"),
        ));
    }
    Ok(())
}

/// A derived number about to be stored: it must be finite.
pub(crate) fn finite(field: &'static str, value: f64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::invalid(
            field,
            format!("would make a stored value {value}, which is not a finite number"),
        ));
    }
    Ok(())
}

/// A percentage in `0..=100`.
pub(crate) fn percent(field: &'static str, value: i32) -> Result<()> {
    if !(0..=100).contains(&value) {
        return Err(Error::invalid(field, format!("{value} is outside 0..=100")));
    }
    Ok(())
}

/// The first instant PostgreSQL's `timestamptz` holds: 4714-11-24 BC, 00:00 UTC.
fn pg_min() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(-4713, 11, 24)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc()
}

/// An instant PostgreSQL can store: from 4714-11-24 BC on (its upper end, 294276 AD, is
/// beyond every `DateTime<Utc>`).
pub(crate) fn instant(field: &'static str, value: DateTime<Utc>) -> Result<()> {
    if value < pg_min() {
        return Err(Error::invalid(
            field,
            format!("{value} is outside what PostgreSQL stores (4714 BC to 294276 AD)"),
        ));
    }
    Ok(())
}

/// An optional instant PostgreSQL can store.
pub(crate) fn optional_instant(field: &'static str, value: Option<DateTime<Utc>>) -> Result<()> {
    value.map_or(Ok(()), |v| instant(field, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_postgres_range_is_exact_to_the_microsecond() {
        let micro = chrono::Duration::microseconds(1);
        assert!(instant("t", pg_min()).is_ok());
        assert!(instant("t", pg_min() - micro).is_err());
        assert!(instant("t", DateTime::<Utc>::MAX_UTC).is_ok());
        assert!(instant("t", DateTime::<Utc>::MIN_UTC).is_err());
    }

    #[test]
    fn lengths_are_counted_in_characters_not_bytes() {
        // 64 characters of two bytes each fit a varchar(64); 65 do not.
        assert!(required("model", &"é".repeat(64), 64).is_ok());
        let err = required("model", &"é".repeat(65), 64).unwrap_err();
        assert!(err.to_string().contains("is 65 characters long"), "{err}");
        assert!(required("model", &"e".repeat(65), 64).is_err());
    }

    #[test]
    fn amounts_are_bounded() {
        assert!(amount("c", MAX_AMOUNT_CENTS).is_ok());
        assert!(amount("c", f64::MAX).is_err());
        assert!(amount("c", -0.0).is_ok());
        // The bound keeps a sum of very many amounts finite.
        assert!((MAX_AMOUNT_CENTS * 1e290).is_finite());
    }
}
