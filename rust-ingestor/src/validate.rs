//! Telemetry validation, section 3 of `docs/contracts.md`: a pure function of
//! the Content-Type, the body bytes, the current time and the limits. The
//! shared vectors in `tests/contract/ingest_vectors.json` pin it down.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::error::{ApiError, Detail};
use crate::timefmt::parse_rfc3339_ms;

/// The configurable limits of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_readings: usize,
    pub max_future_skew_seconds: i64,
    pub retention_days: i64,
}

/// One accepted reading; booleans are already `1.0`/`0.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub metric: String,
    pub ts_ms: i64,
    pub value: f64,
}

const MSG_NOT_OBJECT: &str = "must be an object";
const MSG_UNKNOWN_FIELD: &str = "unknown field";
const MSG_VALUES_TYPE: &str = "must be an object of metric names to values";
const MSG_NO_METRIC: &str = "must hold at least one metric";
const MSG_BAD_NAME: &str = "invalid metric name: must match ^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$";
const MSG_BAD_VALUE: &str = "must be a finite number or a boolean";
const MSG_VALUE_RANGE: &str = "must be a finite number between -1e300 and 1e300";
const MSG_BAD_TS: &str = "must be an RFC 3339 time or integer epoch milliseconds";

/// Largest accepted magnitude: the rollups sum values in doubles, and ~1.8e8 readings
/// at this bound fit in one sum where two of 1e308 overflow it.
const MAX_ABS_VALUE: f64 = 1e300;

/// Step 1: the media type, up to `;`, trimmed, case-insensitive.
pub fn check_media_type(content_type: Option<&str>) -> Result<(), ApiError> {
    let Some(ct) = content_type else { return Err(ApiError::UnsupportedMediaType) };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Steps 1–7 of the contract: the readings of an acceptable request, or the error to answer.
pub fn validate(
    content_type: Option<&str>,
    body: &[u8],
    now_ms: i64,
    limits: &Limits,
) -> Result<Vec<Reading>, ApiError> {
    check_media_type(content_type)?;
    if body.len() > limits.max_body_bytes {
        return Err(ApiError::PayloadTooLarge(limits.max_body_bytes));
    }
    let doc: Value = serde_json::from_slice(body).map_err(|_| ApiError::MalformedJson)?;
    // A lone object is not moved into a Vec of its own: one allocation less on the commonest body.
    let (single, many) = match doc {
        Value::Object(_) => (Some(doc), Vec::new()),
        Value::Array(a) if a.is_empty() => return Err(ApiError::validation("body holds no readings")),
        Value::Array(a) => (None, a),
        _ => return Err(ApiError::validation("body must be a JSON object or an array of objects")),
    };

    let count: usize = single.iter().chain(&many).map(count_readings).sum();
    if count > limits.max_readings {
        return Err(ApiError::validation(format!("too many readings: {count} > {}", limits.max_readings)));
    }

    let checker = Checker::new(now_ms, limits);
    let mut readings = Vec::with_capacity(count);
    let mut details = Vec::new();
    for (index, message) in single.into_iter().chain(many).enumerate() {
        checker.message(index, message, &mut readings, &mut details);
    }
    if details.is_empty() {
        Ok(readings)
    } else {
        Err(ApiError::Validation { message: "invalid readings; see details".into(), details })
    }
}

/// Step 5: the metric keys of one message (0 for a non-object).
fn count_readings(message: &Value) -> usize {
    match message {
        Value::Object(m) => match m.get("values") {
            Some(Value::Object(values)) => values.len(),
            Some(_) => 0,
            None => m.len() - usize::from(m.contains_key("ts")),
        },
        _ => 0,
    }
}

struct Checker {
    now_ms: i64,
    latest_ms: i64,
    earliest_ms: i64,
    limits: Limits,
}

impl Checker {
    fn new(now_ms: i64, limits: &Limits) -> Self {
        Self {
            now_ms,
            latest_ms: now_ms.saturating_add(limits.max_future_skew_seconds.saturating_mul(1000)),
            earliest_ms: now_ms.saturating_sub(limits.retention_days.saturating_mul(86_400_000)),
            limits: *limits,
        }
    }

    /// Step 6 for message `index`: push its readings, or a detail per problem.
    fn message(&self, index: usize, message: Value, readings: &mut Vec<Reading>, details: &mut Vec<Detail>) {
        let Value::Object(map) = message else {
            details.push(Detail { index, field: None, message: MSG_NOT_OBJECT.into() });
            return;
        };
        let ts = map.get("ts").map_or(Ok(self.now_ms), |v| self.ts(v));
        let structured = map.contains_key("values");
        let mut metrics = 0usize;
        for (key, value) in map {
            if key == "ts" {
                if let Err(message) = &ts {
                    details.push(Detail { index, field: Some(key), message: message.clone() });
                }
            } else if !structured {
                metrics += 1;
                Self::metric(index, key, &value, ts.as_ref().ok(), None, readings, details);
            } else if key == "values" {
                Self::values(index, value, ts.as_ref().ok(), readings, details);
            } else {
                details.push(Detail { index, field: Some(key), message: MSG_UNKNOWN_FIELD.into() });
            }
        }
        if !structured && metrics == 0 {
            details.push(Detail { index, field: None, message: MSG_NO_METRIC.into() });
        }
    }

    fn values(index: usize, values: Value, ts: Option<&i64>, readings: &mut Vec<Reading>, details: &mut Vec<Detail>) {
        let values: Map<String, Value> = match values {
            Value::Object(v) if v.is_empty() => {
                details.push(Detail { index, field: Some("values".into()), message: MSG_NO_METRIC.into() });
                return;
            }
            Value::Object(v) => v,
            _ => {
                details.push(Detail { index, field: Some("values".into()), message: MSG_VALUES_TYPE.into() });
                return;
            }
        };
        for (name, value) in values {
            Self::metric(index, name, &value, ts, Some("values."), readings, details);
        }
    }

    /// One metric: at most one detail (the name is checked before the value).
    #[allow(clippy::too_many_arguments)]
    fn metric(
        index: usize,
        name: String,
        value: &Value,
        ts: Option<&i64>,
        prefix: Option<&str>,
        readings: &mut Vec<Reading>,
        details: &mut Vec<Detail>,
    ) {
        let problem = if is_valid_metric_name(&name) {
            match metric_value(value) {
                Ok(v) => {
                    if let (Some(&ts_ms), true) = (ts, details.is_empty()) {
                        readings.push(Reading { metric: name, ts_ms, value: v });
                    }
                    return;
                }
                Err(message) => message,
            }
        } else {
            MSG_BAD_NAME
        };
        let field = match prefix {
            Some(p) => format!("{p}{name}"),
            None => name,
        };
        details.push(Detail { index, field: Some(field), message: problem.into() });
    }

    fn ts(&self, value: &Value) -> Result<i64, Cow<'static, str>> {
        let ms = match value {
            Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default(),
            // An integer past i64 is still an integer, and far in the future.
            Value::Number(n) if n.is_u64() => i64::MAX,
            Value::String(s) => parse_rfc3339_ms(s).ok_or(Cow::Borrowed(MSG_BAD_TS))?,
            _ => return Err(MSG_BAD_TS.into()),
        };
        if ms > self.latest_ms {
            Err(format!("is more than {} s in the future", self.limits.max_future_skew_seconds).into())
        } else if ms < self.earliest_ms {
            Err(format!("is older than the retention of {} days", self.limits.retention_days).into())
        } else {
            Ok(ms)
        }
    }
}

/// `^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$`, matched against the whole name.
pub fn is_valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.split_first() {
        Some((first, rest)) if b.len() <= 64 => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'))
        }
        _ => false,
    }
}

fn metric_value(value: &Value) -> Result<f64, &'static str> {
    match value {
        // One comparison also refuses NaN and infinities (the parser already does).
        Value::Number(n) => n.as_f64().filter(|f| f.abs() <= MAX_ABS_VALUE).ok_or(MSG_VALUE_RANGE),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        _ => Err(MSG_BAD_VALUE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { max_body_bytes: 1024, max_readings: 5, max_future_skew_seconds: 300, retention_days: 30 };
    const NOW: i64 = 1_795_748_400_000;

    fn ok(body: &str) -> Vec<Reading> {
        validate(Some("application/json"), body.as_bytes(), NOW, &LIMITS).unwrap()
    }

    #[test]
    fn metric_names_follow_the_pattern() {
        assert!(is_valid_metric_name("a"));
        assert!(is_valid_metric_name("_x.y:z-9"));
        assert!(is_valid_metric_name(&"a".repeat(64)));
        assert!(!is_valid_metric_name(&"a".repeat(65)));
        assert!(!is_valid_metric_name(""));
        assert!(!is_valid_metric_name("9a"));
        assert!(!is_valid_metric_name("a b"));
        assert!(!is_valid_metric_name("temp\n"));
        assert!(!is_valid_metric_name("é"));
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let e = validate(Some("application/json"), b"{\"a\xff\":1}", NOW, &LIMITS).unwrap_err();
        assert_eq!(e.code(), "malformed_json");
    }

    #[test]
    fn duplicate_keys_keep_first_position_and_last_value() {
        let r = ok(r#"{"a":1,"b":2,"a":3}"#);
        let got: Vec<(&str, f64)> = r.iter().map(|r| (r.metric.as_str(), r.value)).collect();
        assert_eq!(got, [("a", 3.0), ("b", 2.0)]);
    }

    #[test]
    fn values_are_parsed_to_the_nearest_double() {
        // Literals that serde_json's default (fast, approximate) float parsing puts one double
        // away from the correctly rounded one that Rust's and Python's parsers give.
        for literal in ["1.3e72", "2.2250738585072011e-308", "9.109383701528e-31", "8.988465674311579e299"] {
            let got = ok(&format!(r#"{{"a":{literal}}}"#))[0].value;
            assert_eq!(got.to_bits(), literal.parse::<f64>().unwrap().to_bits(), "{literal}");
        }
    }

    #[test]
    fn the_value_bound_is_inclusive() {
        let above = f64::from_bits(MAX_ABS_VALUE.to_bits() + 1);
        assert_eq!(metric_value(&Value::from(MAX_ABS_VALUE)), Ok(MAX_ABS_VALUE));
        assert_eq!(metric_value(&Value::from(-MAX_ABS_VALUE)), Ok(-MAX_ABS_VALUE));
        assert_eq!(metric_value(&Value::from(above)), Err(MSG_VALUE_RANGE));
        assert_eq!(metric_value(&Value::from(-above)), Err(MSG_VALUE_RANGE));
        assert_eq!(metric_value(&Value::from(true)), Ok(1.0));
    }

    #[test]
    fn absent_ts_is_now() {
        assert_eq!(ok(r#"{"a":true}"#), [Reading { metric: "a".into(), ts_ms: NOW, value: 1.0 }]);
    }
}
