//! Redis's answers read into the store's types: malformed ones are errors, never panics.

use bytes::Bytes;
use redis::Value;
use serde_json::value::RawValue;

use crate::data::MessageData;
use crate::store::{Attached, Logged, SessionState, SessionStoreError};

pub(super) fn bad_answer(what: &str) -> SessionStoreError {
    SessionStoreError::new(format!("unexpected answer from Redis: {what}"))
}

fn number(value: &Value) -> Result<u64, SessionStoreError> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| bad_answer("a negative number")),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_answer("not a number")),
        Value::SimpleString(s) => s.parse().map_err(|_| bad_answer("not a number")),
        _ => Err(bad_answer("not a number")),
    }
}

/// The seq of a stream entry id `seq-0`.
fn entry_seq(id: &Value) -> Result<u64, SessionStoreError> {
    let Value::BulkString(id) = id else {
        return Err(bad_answer("a stream id"));
    };
    std::str::from_utf8(id)
        .ok()
        .and_then(|id| id.split('-').next())
        .and_then(|seq| seq.parse().ok())
        .ok_or_else(|| bad_answer("a stream id"))
}

/// Stream entries (`XRANGE`'s answer) as logged messages.
pub(super) fn entries(value: Value) -> Result<Vec<Logged>, SessionStoreError> {
    let Value::Array(entries) = value else {
        return Err(bad_answer("stream entries"));
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(mut parts) = entry else {
                return Err(bad_answer("a stream entry"));
            };
            if parts.len() != 2 {
                return Err(bad_answer("a stream entry"));
            }
            let fields = parts.pop().unwrap_or_default();
            let seq = entry_seq(&parts[0])?;
            let Value::Array(fields) = fields else {
                return Err(bad_answer("stream fields"));
            };
            let (mut kind, mut data) = (None, None);
            for pair in fields.chunks(2) {
                if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                    match name.as_slice() {
                        b"k" => kind = Some(value.clone()),
                        b"d" => data = Some(value.clone()),
                        _ => {}
                    }
                }
            }
            let payload = match (kind.as_deref(), data) {
                (Some(b"b"), Some(data)) => MessageData::Binary(Bytes::from(data)),
                (Some(b"j"), Some(data)) => {
                    let json = String::from_utf8(data)
                        .ok()
                        .and_then(|text| RawValue::from_string(text).ok())
                        .ok_or_else(|| bad_answer("a logged message that is not JSON"))?;
                    MessageData::Json(json.into())
                }
                _ => return Err(bad_answer("a stream entry without kind or data")),
            };
            Ok(Logged { seq, payload })
        })
        .collect()
}

/// The `ATTACH` script's answer; `None` for `busy`.
pub(super) fn read_attached(
    answer: Vec<Value>,
    client: Option<String>,
) -> Result<Option<Attached>, SessionStoreError> {
    let word = match answer.first() {
        Some(Value::BulkString(word)) => word.as_slice(),
        _ => return Err(bad_answer("attach")),
    };
    match word {
        b"unknown" => return Ok(Some(Attached::Unknown)),
        b"expired" => return Ok(Some(Attached::Expired)),
        b"busy" => return Ok(None),
        b"held" => {}
        _ => return Err(bad_answer("attach")),
    }
    let mut answer = answer.into_iter().skip(1);
    let mut next = || answer.next().ok_or_else(|| bad_answer("attach"));
    let last_seq = number(&next()?)?;
    let acked = number(&next()?)?;
    let dropped = number(&next()?)?;
    let processed = number(&next()?)?;
    let first = entries(next()?)?;
    let messages = entries(next()?)?;
    Ok(Some(Attached::Held {
        state: SessionState {
            client,
            last_seq,
            acked,
            dropped,
            first_held: first.first().map_or(last_seq + 1, |m| m.seq),
            processed,
        },
        messages,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn stream_entries_become_logged_messages() {
        let read = entries(Value::Array(vec![
            entry("3-0", &["k", "j", "d", r#"{"a":1}"#]),
            entry("4-0", &["k", "b", "d", "\u{1}\u{2}"]),
        ]))
        .unwrap();
        assert_eq!(read[0].seq, 3);
        assert_eq!(read[0].payload, MessageData::from(r#"{"a":1}"#));
        assert_eq!(read[1].payload, MessageData::Binary(vec![1u8, 2].into()));
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        let bad = [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![])]),
            Value::Array(vec![entry("x-0", &["k", "j", "d", "1"])]),
            Value::Array(vec![entry("1-0", &["k", "j"])]),
            Value::Array(vec![entry("1-0", &["k", "j", "d", "not json"])]),
            Value::Array(vec![entry("1-0", &["k", "?", "d", "1"])]),
            Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Int(3)])]),
        ];
        for value in bad {
            assert!(entries(value.clone()).is_err(), "{value:?}");
        }
        for answer in [
            vec![],
            vec![Value::Int(1)],
            vec![bulk("what")],
            vec![bulk("held"), bulk("1")],
            vec![bulk("held"), bulk("-1"), bulk("0"), bulk("0"), bulk("0")],
            vec![
                bulk("held"),
                Value::Int(-3),
                Value::Int(0),
                Value::Int(0),
                Value::Int(0),
                Value::Array(vec![]),
                Value::Array(vec![]),
            ],
        ] {
            assert!(read_attached(answer.clone(), None).is_err(), "{answer:?}");
        }
    }

    #[test]
    fn an_attach_answer_reads_as_its_state() {
        let answer = vec![
            bulk("held"),
            Value::Int(5),
            bulk("2"),
            bulk("1"),
            bulk("4"),
            Value::Array(vec![entry("3-0", &["k", "j", "d", "3"])]),
            Value::Array(vec![
                entry("4-0", &["k", "j", "d", "4"]),
                entry("5-0", &["k", "j", "d", "5"]),
            ]),
        ];
        let Some(Attached::Held { state, messages }) =
            read_attached(answer, Some("c".into())).unwrap()
        else {
            panic!("held");
        };
        assert_eq!(
            (state.last_seq, state.acked, state.dropped, state.processed),
            (5, 2, 1, 4)
        );
        assert_eq!(state.first_held, 3);
        assert_eq!(state.client.as_deref(), Some("c"));
        assert_eq!(messages.len(), 2);
        assert!(matches!(read_attached(vec![bulk("busy")], None), Ok(None)));
        assert!(matches!(
            read_attached(vec![bulk("expired")], None),
            Ok(Some(Attached::Expired))
        ));
    }
}
