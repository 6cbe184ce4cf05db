//! The provenance input hash: canonical JSON, SHA-256, the first 16 hex digits.
//!
//! Byte-compatible with the original Python system, which hashed
//! `json.dumps(payload, sort_keys=True, separators=(",", ":"))`: object keys sorted by code
//! point at every level, no whitespace, every character outside printable ASCII escaped as
//! `\uXXXX` (lowercase hex, UTF-16 surrogate pairs above U+FFFF), integers of any size in
//! plain decimal, and floats as Python's `repr` writes them (`1.0`, `1e-05`, `1e+16`).
//! Stored hashes therefore keep matching. Pure: no database, no schema.

use std::fmt::Write as _;

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// The first 16 lowercase hex digits of the SHA-256 of `payload`'s canonical text.
///
/// ```
/// let hash = costdb::input_hash::compute_input_hash(&serde_json::json!({
///     "model": "gpt-4", "tokens": 1200, "temperature": 0.7
/// }));
/// assert_eq!(hash, "9bc53fedb32cbea5");
/// ```
pub fn compute_input_hash(payload: &Value) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(canonical_json(payload).as_bytes());
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

/// The canonical text that [`compute_input_hash`] hashes (pure ASCII).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// What is left to write: a value, an object key, or a closing or separating character.
enum Step<'a> {
    Value(&'a Value),
    Key(&'a str),
    Char(char),
}

/// Schedules the `i`-th entry of an object (entries are pushed last to first).
fn push_entry<'a>(todo: &mut Vec<Step<'a>>, i: usize, key: &'a str, item: &'a Value) {
    todo.push(Step::Value(item));
    todo.push(Step::Key(key));
    if i > 0 {
        todo.push(Step::Char(','));
    }
}

/// Writes `root` with an explicit stack, so nesting of any depth fits in memory, not in
/// the thread's stack.
fn write_value(out: &mut String, root: &Value) {
    let mut todo = vec![Step::Value(root)];
    while let Some(step) = todo.pop() {
        let value = match step {
            Step::Char(c) => {
                out.push(c);
                continue;
            }
            Step::Key(key) => {
                write_string(out, key);
                out.push(':');
                continue;
            }
            Step::Value(value) => value,
        };
        match value {
            Value::Null => out.push_str("null"),
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Number(n) => write_number(out, n),
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                out.push('[');
                todo.push(Step::Char(']'));
                // Pushed last to first, so they are written first to last.
                for (i, item) in items.iter().enumerate().rev() {
                    todo.push(Step::Value(item));
                    if i > 0 {
                        todo.push(Step::Char(','));
                    }
                }
            }
            Value::Object(map) => {
                out.push('{');
                todo.push(Step::Char('}'));
                // Code-point order, whatever order the map keeps (serde_json's default map
                // is already sorted: then no copy is made).
                if map.keys().is_sorted() {
                    for (i, (key, item)) in map.iter().enumerate().rev() {
                        push_entry(&mut todo, i, key, item);
                    }
                } else {
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    for (i, (key, item)) in entries.into_iter().enumerate().rev() {
                        push_entry(&mut todo, i, key, item);
                    }
                }
            }
        }
    }
}

/// A JSON string as Python writes it with `ensure_ascii`.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Most text is printable ASCII without quotes or backslashes: copy it whole.
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A number as Python writes it: integers exactly as written (any size), floats as `repr`.
fn write_number(out: &mut String, n: &Number) {
    // With serde_json's `arbitrary_precision`, a number keeps the text it was parsed from
    // (or that serde_json wrote for it): Python reads JSON integers as exact ints.
    let text = n.as_str();
    let is_float = text.contains(['.', 'e', 'E']);
    if !is_float {
        let digits = text.trim_start_matches('-');
        if digits.bytes().all(|b| b == b'0') {
            out.push('0'); // Python has no negative integer zero
        } else {
            out.push_str(text);
        }
        return;
    }
    match text.parse::<f64>() {
        Ok(x) => write_python_float(out, x),
        Err(_) => out.push_str(text),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional when the
/// decimal exponent is in `-4..16` (always with a fractional part), else `d.ddde±XX`.
fn write_python_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e16", "1e-5", "0e0".
    let mut sci = Scratch::default();
    let _ = write!(sci, "{x:e}");
    let sci = sci.as_str();
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("a decimal exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let mut digits_buf = Scratch::default();
    for c in mantissa.chars().filter(|c| *c != '.') {
        let _ = digits_buf.write_char(c);
    }
    let digits = digits_buf.as_str();
    out.push_str(sign);
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// A small stack buffer for formatting one float (at most 24 bytes: 17 digits, a point,
/// a sign, `e` and a 4-character exponent).
#[derive(Default)]
struct Scratch {
    buf: [u8; 32],
    len: usize,
}

impl Scratch {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).expect("only ASCII is written")
    }
}

impl std::fmt::Write for Scratch {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn the_originals_test_vectors() {
        let vectors = [
            ("{}", "{}", "44136fa355b3678a"),
            (
                r#"{"model":"gpt-4","tokens":1200,"temperature":0.7}"#,
                r#"{"model":"gpt-4","temperature":0.7,"tokens":1200}"#,
                "9bc53fedb32cbea5",
            ),
            (
                r#"{"é":"😀\n\u0001/","A":null,"a":true}"#,
                r#"{"A":null,"a":true,"\u00e9":"\ud83d\ude00\n\u0001/"}"#,
                "5440aa6b7ab4ab48",
            ),
            (
                r#"{"x":123456789012345678901234567890}"#,
                r#"{"x":123456789012345678901234567890}"#,
                "cea3ccc5f5b10918",
            ),
            (
                r#"{"x":1e22,"y":12345678901234567.0,"z":0.0001,"w":-0.0}"#,
                r#"{"w":-0.0,"x":1e+22,"y":1.2345678901234568e+16,"z":0.0001}"#,
                "72934b5f4806238b",
            ),
        ];
        for (input, canonical, hash) in vectors {
            let value = parsed(input);
            assert_eq!(canonical_json(&value), canonical, "{input}");
            assert_eq!(compute_input_hash(&value), hash, "{input}");
        }
        // The vector with NaN and Infinity cannot be a serde_json::Value; its other
        // numbers still format as Python does.
        assert_eq!(
            canonical_json(&parsed(r#"{"b":1,"a":[1.0,2,1e16,1e-5,0.1]}"#)),
            r#"{"a":[1.0,2,1e+16,1e-05,0.1],"b":1}"#
        );
    }

    #[test]
    fn floats_follow_python_repr() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.5, "1.5"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456.789, "123456.789"),
            (1.5e-7, "1.5e-07"),
            (-2.5e100, "-2.5e+100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
        ];
        for (x, want) in cases {
            let mut out = String::new();
            write_python_float(&mut out, x);
            assert_eq!(out, want, "{x:e}");
        }
    }

    #[test]
    fn integers_are_exact_and_differ_from_floats() {
        assert_eq!(
            canonical_json(&parsed("[-0, 0, -12, 18446744073709551616]")),
            "[0,0,-12,18446744073709551616]"
        );
        assert_ne!(
            compute_input_hash(&parsed(r#"{"a":1}"#)),
            compute_input_hash(&parsed(r#"{"a":1.0}"#))
        );
    }
}
