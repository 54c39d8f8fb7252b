//! Feeds every case of the shared vectors (`tests/contract/ingest_vectors.json`
//! at the repository root) to the pure validator, and to the check an MQTT
//! PUBLISH goes through; no Redis needed.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::PathBuf;

use serde_json::Value;
use visiontrack_ingestor::mqtt::{check_publish, Refusal, TOPICS};
use visiontrack_ingestor::timefmt::parse_rfc3339_ms;
use visiontrack_ingestor::validate::{validate, Limits};

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/contract/ingest_vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vectors are JSON")
}

fn body_of(case: &Value) -> Vec<u8> {
    let mut body = match (case.get("body"), case.get("body_text")) {
        (Some(b), None) => serde_json::to_vec(b).unwrap(),
        (None, Some(Value::String(t))) => t.as_bytes().to_vec(),
        _ => panic!("case {} needs exactly one of body and body_text", case["name"]),
    };
    if let Some(n) = case.get("body_repeat") {
        body = body.repeat(usize::try_from(n.as_u64().expect("body_repeat is a count")).unwrap());
    }
    body
}

/// Compares one case; `Err` describes the difference.
fn check(case: &Value, now_ms: i64, limits: &Limits) -> Result<(), String> {
    let body = body_of(case);
    let content_type = case["content_type"].as_str();
    let expect = &case["expect"];
    let status = expect["status"].as_u64().unwrap();
    match validate(content_type, &body, now_ms, limits) {
        Ok(readings) => {
            if status != 202 {
                return Err(format!("accepted {} readings, expected {status} {}", readings.len(), expect["error"]));
            }
            if expect["accepted"].as_u64() != Some(readings.len() as u64) {
                return Err(format!("accepted {}, expected {}", readings.len(), expect["accepted"]));
            }
            let want = expect["readings"].as_array().unwrap();
            if want.len() != readings.len() {
                return Err(format!("{} readings, the vector lists {}", readings.len(), want.len()));
            }
            for (i, (got, want)) in readings.iter().zip(want).enumerate() {
                let same = want[0].as_str() == Some(got.metric.as_str())
                    && want[1].as_i64() == Some(got.ts_ms)
                    && want[2].as_f64() == Some(got.value);
                if !same {
                    return Err(format!("reading {i}: got {got:?}, expected {want}"));
                }
            }
            Ok(())
        }
        Err(e) => {
            let got_details = serde_json::to_value(e.details()).unwrap();
            let want_details = expect.get("details").cloned().unwrap_or_else(|| Value::Array(vec![]));
            let got = (u64::from(e.status().as_u16()), e.code(), e.to_string(), got_details);
            let want = (
                status,
                expect["error"].as_str().unwrap_or("<none>"),
                expect["message"].as_str().unwrap_or("").to_owned(),
                want_details,
            );
            if got == want {
                Ok(())
            } else {
                Err(format!("got {got:?}\n      expected {want:?}"))
            }
        }
    }
}

fn limits_of(doc: &Value) -> Limits {
    let l = &doc["limits"];
    Limits {
        max_body_bytes: usize::try_from(l["max_body_bytes"].as_u64().unwrap()).unwrap(),
        max_readings: usize::try_from(l["max_readings"].as_u64().unwrap()).unwrap(),
        max_future_skew_seconds: l["max_future_skew_seconds"].as_i64().unwrap(),
        retention_days: l["retention_days"].as_i64().unwrap(),
    }
}

#[test]
fn every_shared_vector_passes() {
    let doc = vectors();
    let now_ms = parse_rfc3339_ms(doc["now"].as_str().unwrap()).expect("now is RFC 3339");
    let limits = limits_of(&doc);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let failures: Vec<String> =
        cases.iter().filter_map(|c| check(c, now_ms, &limits).err().map(|e| format!("{}: {e}", c["name"]))).collect();
    assert!(failures.is_empty(), "{} of {} vectors failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// An MQTT PUBLISH has no Content-Type: its payload is taken as JSON. So a case
/// refused only for its media type is left out; every other case must give the
/// same readings over MQTT, or be refused as a bad payload (413 as too large).
fn check_mqtt(case: &Value, now_ms: i64, limits: &Limits) -> Result<(), String> {
    let expect = &case["expect"];
    let status = expect["status"].as_u64().unwrap();
    if status == 415 {
        return Ok(());
    }
    let body = body_of(case);
    for topic in TOPICS {
        match (check_publish(topic, &body, now_ms, limits), status) {
            (Ok(readings), 202) => {
                let want = expect["readings"].as_array().unwrap();
                let got: Vec<Value> =
                    readings.iter().map(|r| serde_json::json!([r.metric, r.ts_ms, r.value])).collect();
                let same = got.len() == want.len()
                    && got
                        .iter()
                        .zip(want)
                        .all(|(g, w)| g[0] == w[0] && g[1].as_i64() == w[1].as_i64() && g[2].as_f64() == w[2].as_f64());
                if !same {
                    return Err(format!("{topic}: got {got:?}, expected {want:?}"));
                }
            }
            (Err(Refusal::TooLarge), 413) | (Err(Refusal::Invalid), 400) => {}
            (got, _) => return Err(format!("{topic}: got {got:?}, expected {status}")),
        }
    }
    Ok(())
}

#[test]
fn every_shared_vector_passes_over_mqtt() {
    let doc = vectors();
    let now_ms = parse_rfc3339_ms(doc["now"].as_str().unwrap()).expect("now is RFC 3339");
    let limits = limits_of(&doc);
    let cases = doc["cases"].as_array().unwrap();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check_mqtt(c, now_ms, &limits).err().map(|e| format!("{}: {e}", c["name"])))
        .collect();
    assert!(failures.is_empty(), "{} of {} vectors failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let other_topic = check_publish("v1/devices/me/attributes", br#"{"a":1}"#, now_ms, &limits);
    assert!(matches!(other_topic, Err(Refusal::Topic)));
}

#[test]
fn the_checker_notices_a_wrong_expectation() {
    // Guards the guard: a vector with a wrong answer must fail.
    let limits = Limits { max_body_bytes: 100, max_readings: 10, max_future_skew_seconds: 300, retention_days: 30 };
    let wrong_value = serde_json::json!({"name": "x", "content_type": "application/json", "body": {"a": 1},
        "expect": {"status": 202, "accepted": 1, "readings": [["a", 0, 2]]}});
    assert!(check(&wrong_value, 0, &limits).is_err());
    let missing_reading = serde_json::json!({"name": "x", "content_type": "application/json", "body": {"a": 1, "b": 2},
        "expect": {"status": 202, "accepted": 2, "readings": [["a", 0, 1]]}});
    assert!(check(&missing_reading, 0, &limits).is_err());
    let wrong_details = serde_json::json!({"name": "x", "content_type": "application/json", "body": [],
        "expect": {"status": 400, "error": "validation_error", "message": "body holds no readings",
                   "details": [{"index": 0, "field": null, "message": "x"}]}});
    assert!(check(&wrong_details, 0, &limits).is_err());
}
