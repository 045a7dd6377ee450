//! Strict JSON for request bodies: serde_json's parser, with repeated member names refused.
//!
//! RFC 8259 §4 leaves a repeated name's meaning to the implementation; serde_json keeps the
//! last one, another parser (a proxy, a WAF, an audit log) may keep the first, so
//! `{"userId":14,"userId":13}` could mean two users to two readers. The JWT code already
//! refuses such objects; bodies are refused the same way, at every depth. Pure: bytes in, a
//! value or a sentence out. Nesting depth is bounded by serde_json's recursion limit (128).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a body was not a JSON value; the text is meant for the `400` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses one JSON value (surrounding whitespace allowed, nothing else), refusing any object
/// that names a member twice.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0).map_err(|e| JsonError(e.to_string()))
}

/// A member name shown in an error is cut here: the body may be 64 KiB of one name.
const SHOWN_NAME_CHARS: usize = 40;

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json gives only finite floats.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.contains_key(&name) {
                let shown: String = name.chars().take(SHOWN_NAME_CHARS).collect();
                let cut = if shown.len() < name.len() { "…" } else { "" };
                return Err(de::Error::custom(format!(
                    "the member {shown:?}{cut} appears more than once"
                )));
            }
            let Strict(value) = map.next_value()?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        let cases = [
            r#"{"amount":5000,"description":"coffee","occurredAt":"2025-01-01T00:00:00Z"}"#,
            r#"{"a":[1,-2,3.5,1e3,true,false,null,"x\u00e9\n"],"b":{"c":{}}}"#,
            r#"  {"userId":18446744073709551615}  "#,
            "[]",
            "\"s\"",
            "-0",
            r#"{"a":{"x":1},"b":{"x":1}}"#,
        ];
        for text in cases {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes()).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn repeated_names_are_refused_at_every_depth() {
        let cases = [
            r#"{"userId":14,"userId":13,"amount":1}"#,
            r#"{"a":1,"a":1}"#,
            r#"{"x":{"b":1,"b":2}}"#,
            r#"[{"b":1},{"c":1,"c":1}]"#,
            r#"{"a\u0062":1,"ab":2}"#,
        ];
        for text in cases {
            let err = parse(text.as_bytes()).unwrap_err().0;
            assert!(err.contains("appears more than once"), "{text}: {err}");
        }
        let long = format!(r#"{{"{0}":1,"{0}":2}}"#, "n".repeat(1000));
        let err = parse(long.as_bytes()).unwrap_err().0;
        assert!(err.len() < 200 && err.contains('…'), "{err}");
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let deep = "[".repeat(100_000);
        let cases: [&[u8]; 9] = [
            b"",
            b"{",
            b"{\"a\":1,}",
            b"{\"a\":1} x",
            b"\xff",
            b"{\"a\":NaN}",
            b"{\"\xc3\":1}",
            b"{1:2}",
            deep.as_bytes(),
        ];
        for bytes in cases {
            assert!(parse(bytes).is_err(), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    /// The fuzz target's check (fuzz/fuzz_targets/json.rs), for a bounded stable run.
    fn check(bytes: &[u8]) {
        let loose = serde_json::from_slice::<Value>(bytes);
        match parse(bytes) {
            Ok(value) => assert_eq!(loose.ok(), Some(value)),
            Err(e) => {
                assert!(e.0.len() <= 400, "{e}");
                if loose.is_ok() {
                    assert!(e.0.contains("appears more than once"), "{e}");
                }
            }
        }
    }

    /// A small deterministic generator: objects of members drawn from a few names (so
    /// repeats happen) and values, half of them then hit by one random byte.
    #[test]
    fn random_bodies_agree_with_serde_json_but_for_repeats() {
        const NAMES: [&str; 5] = ["amount", "userId", "a", "a\\u0061", "aa"];
        const VALUES: [&str; 12] = [
            "1",
            "-0",
            "1e400",
            "5000",
            "true",
            "null",
            "\"x\"",
            "\"\\ud800\"",
            "[1,{}]",
            "9223372036854775808",
            "0.5",
            "{\"b\":1,\"c\":[]}",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut accepted, mut repeats, mut other) = (0, 0, 0);
        for _ in 0..20_000 {
            let members: Vec<String> = (0..next(5))
                .map(|_| format!("\"{}\":{}", NAMES[next(NAMES.len())], VALUES[next(VALUES.len())]))
                .collect();
            let mut body = format!("{{{}}}", members.join(",")).into_bytes();
            if next(2) == 0 {
                let at = next(body.len());
                body[at] = next(256) as u8;
            }
            check(&body);
            match parse(&body) {
                Ok(_) => accepted += 1,
                Err(e) if e.0.contains("more than once") => repeats += 1,
                Err(_) => other += 1,
            }
        }
        assert!(accepted > 1000 && repeats > 1000 && other > 1000, "{accepted} {repeats} {other}");
    }
}
