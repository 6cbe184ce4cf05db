//! Input checks that run before any SQL: each failure names its field.

use crate::error::{Error, Result};

/// A required string of at most `max` characters (the column's varchar length).
pub(crate) fn required(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    let len = value.chars().count();
    if len > max {
        return Err(Error::invalid(
            field,
            format!("is {len} characters long, the column holds {max}"),
        ));
    }
    Ok(())
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

/// A finite, non-negative amount.
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
    Ok(())
}

/// A percentage in `0..=100`.
pub(crate) fn percent(field: &'static str, value: i32) -> Result<()> {
    if !(0..=100).contains(&value) {
        return Err(Error::invalid(field, format!("{value} is outside 0..=100")));
    }
    Ok(())
}
