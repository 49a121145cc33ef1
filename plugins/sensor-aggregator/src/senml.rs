//! SenML (RFC 8428) JSON packs: parsing and resolution of base fields into
//! self-contained readings.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// Most records one pack may carry (each accepted reading is one usage
/// record, and a call may record at most 1024).
pub const MAX_RECORDS: usize = 1000;

/// Times below 2^28 seconds are relative to the time of receipt (RFC 8428
/// section 4.5.3).
const RELATIVE_LIMIT_S: f64 = 268_435_456.0;

/// A reading's value: one of SenML's value kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    /// `v`: a number (with `bv` added).
    V(f64),
    /// `vs`: a string.
    Vs(String),
    /// `vb`: a boolean.
    Vb(bool),
    /// `vd`: data, base64url as in the pack.
    Vd(String),
}

impl Value {
    /// The number aggregated for this value: `v` itself, `vb` as 0 or 1;
    /// strings and data have none.
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::V(x) => Some(*x),
            Value::Vb(b) => Some(f64::from(u8::from(*b))),
            Value::Vs(_) | Value::Vd(_) => None,
        }
    }
}

/// A resolved reading: base fields applied, time absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Full name (`bn` + `n`).
    pub name: String,
    /// Unit (`u`, else `bu`), if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<String>,
    /// Unix time in milliseconds.
    pub time_ms: i64,
    pub value: Value,
    /// Position of the record in the pack (0-based), counting every record.
    pub index: u32,
}

/// Parses `pack` and resolves every record that carries a value.
/// `now_ms` resolves relative times. Errors say what is malformed.
pub fn resolve(pack: &[u8], now_ms: i64) -> Result<Vec<Reading>, String> {
    let records: Vec<Map<String, Json>> =
        serde_json::from_slice(pack).map_err(|e| format!("not a SenML JSON array: {e}"))?;
    if records.is_empty() {
        return Err("the pack has no records".into());
    }
    if records.len() > MAX_RECORDS {
        return Err(format!(
            "the pack has {} records; the limit is {MAX_RECORDS}",
            records.len()
        ));
    }
    let mut base = Base::default();
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let at = |problem: String| format!("record {i}: {problem}");
        base.update(r).map_err(at)?;
        if let Some(reading) = resolve_record(r, &base, now_ms, i as u32).map_err(at)? {
            out.push(reading);
        }
    }
    if out.is_empty() {
        return Err("the pack has no record with a value".into());
    }
    Ok(out)
}

#[derive(Default)]
struct Base {
    name: String,
    time_s: f64,
    unit: Option<String>,
    value: f64,
}

impl Base {
    fn update(&mut self, r: &Map<String, Json>) -> Result<(), String> {
        for (k, v) in r {
            match k.as_str() {
                "bn" => self.name = string(k, v)?.to_string(),
                "bt" => self.time_s = number(k, v)?,
                "bu" => self.unit = Some(string(k, v)?.to_string()),
                "bv" => self.value = number(k, v)?,
                "bver" => {
                    let version = number(k, v)?;
                    if version > 10.0 {
                        return Err(format!("SenML version {version} is not supported"));
                    }
                }
                "bs" => return Err("base sum (`bs`) is not supported".into()),
                "n" | "t" | "u" | "v" | "vs" | "vb" | "vd" | "s" | "ut" => {}
                other if other.ends_with('_') => {
                    return Err(format!("must-understand field `{other}` is not supported"));
                }
                _ => {} // unknown fields without `_` may be ignored (RFC 8428 4.4)
            }
        }
        Ok(())
    }
}

fn resolve_record(
    r: &Map<String, Json>,
    base: &Base,
    now_ms: i64,
    index: u32,
) -> Result<Option<Reading>, String> {
    let mut values = Vec::new();
    if let Some(v) = r.get("v") {
        values.push(Value::V(base.value + number("v", v)?));
    }
    if let Some(v) = r.get("vs") {
        values.push(Value::Vs(string("vs", v)?.to_string()));
    }
    if let Some(v) = r.get("vb") {
        values.push(Value::Vb(v.as_bool().ok_or("`vb` must be a boolean")?));
    }
    if let Some(v) = r.get("vd") {
        let data = string("vd", v)?;
        if !data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("`vd` must be base64url without padding".into());
        }
        values.push(Value::Vd(data.to_string()));
    }
    if r.contains_key("s") {
        return Err("sum values (`s`) are not supported".into());
    }
    let value = match values.len() {
        0 if !r.contains_key("n") && !r.contains_key("t") => return Ok(None), // base fields only
        0 => return Err("the record has no value (`v`, `vs`, `vb` or `vd`)".into()),
        1 => values.pop().expect("one value"),
        _ => return Err("the record has more than one value field".into()),
    };
    let n = match r.get("n") {
        Some(v) => string("n", v)?,
        None => "",
    };
    let name = format!("{}{n}", base.name);
    check_name(&name)?;
    let t = match r.get("t") {
        Some(v) => number("t", v)?,
        None => 0.0,
    };
    let mut time_s = base.time_s + t;
    if time_s < RELATIVE_LIMIT_S {
        time_s += now_ms as f64 / 1000.0;
    }
    let unit = match r.get("u") {
        Some(v) => Some(string("u", v)?.to_string()),
        None => base.unit.clone(),
    };
    Ok(Some(Reading {
        name,
        unit,
        time_ms: (time_s * 1000.0).round() as i64,
        value,
        index,
    }))
}

/// RFC 8428 4.5.1: names are A-Z a-z 0-9 `-` `:` `.` `/` `_`, starting with
/// a letter or digit, at most 200 bytes here.
pub fn check_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'.' | b'/' | b'_'));
    if first_ok && rest_ok && name.len() <= 200 {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid SenML name"))
    }
}

fn string<'a>(key: &str, v: &'a Json) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("`{key}` must be a string"))
}

fn number(key: &str, v: &Json) -> Result<f64, String> {
    v.as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("`{key}` must be a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn base_fields_apply_to_following_records() {
        let pack = br#"[
            {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.32e+09,"bu":"Cel","bv":10,"n":"temp","v":13.5},
            {"n":"temp","t":10,"v":14},
            {"n":"door","u":"","vb":true},
            {"n":"label","vs":"north"},
            {"n":"blob","vd":"aGVsbG8"}
        ]"#;
        let r = resolve(pack, NOW).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].name, "urn:dev:ow:10e2073a01080063:temp");
        assert_eq!(r[0].value, Value::V(23.5));
        assert_eq!(r[0].time_ms, 1_320_000_000_000);
        assert_eq!(r[0].unit.as_deref(), Some("Cel"));
        assert_eq!(r[1].value, Value::V(24.0));
        assert_eq!(r[1].time_ms, 1_320_000_010_000);
        assert_eq!(r[2].value, Value::Vb(true));
        assert_eq!(r[2].unit.as_deref(), Some(""));
        assert_eq!(r[3].value, Value::Vs("north".into()));
        assert_eq!(r[4].value, Value::Vd("aGVsbG8".into()));
    }

    #[test]
    fn relative_times_count_from_receipt() {
        let r = resolve(br#"[{"n":"a","v":1},{"n":"a","t":-5,"v":2}]"#, NOW).unwrap();
        assert_eq!(r[0].time_ms, NOW);
        assert_eq!(r[1].time_ms, NOW - 5000);
    }

    #[test]
    fn malformed_packs_say_why() {
        let cases: [(&[u8], &str); 7] = [
            (b"{}", "not a SenML JSON array"),
            (b"[]", "no records"),
            (br#"[{"n":"a"}]"#, "no value"),
            (br#"[{"n":"a","v":1,"vs":"x"}]"#, "more than one value"),
            (br#"[{"n":"a","v":"1"}]"#, "`v` must be a number"),
            (br#"[{"n":" a","v":1}]"#, "not a valid SenML name"),
            (br#"[{"n":"a","v":1,"x_":2}]"#, "must-understand"),
        ];
        for (pack, expected) in cases {
            let e = resolve(pack, NOW).unwrap_err();
            assert!(e.contains(expected), "{e} (expected {expected})");
        }
    }
}
