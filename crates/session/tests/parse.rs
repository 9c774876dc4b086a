//! Parsing client frames never panics, whatever a client sends.

use bytes::Bytes;
use proptest::prelude::*;
use wsguard_session::protocol::{ClientFrame, ServerFrame, decode_binary};

/// Text that looks like a frame often enough to reach the per-type checks.
fn frame_like() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[a-f0-9]{0,40}".prop_map(|s| format!("\"{s}\"")),
        Just("{\"a\":[1,{}]}".to_owned()),
    ];
    let key = prop_oneof![
        Just("type"),
        Just("session"),
        Just("last"),
        Just("id"),
        Just("seq"),
        Just("data"),
        Just("x"),
    ];
    let kind = prop_oneof![
        Just("\"hello\""),
        Just("\"resume\""),
        Just("\"msg\""),
        Just("\"ack\""),
        Just("\"session\""),
        Just("1"),
    ];
    (kind, prop::collection::vec((key, value), 0..6)).prop_map(|(kind, fields)| {
        let mut text = format!("{{\"type\":{kind}");
        for (k, v) in fields {
            text.push_str(&format!(",\"{k}\":{v}"));
        }
        text.push('}');
        text
    })
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = ClientFrame::parse(&text);
        let _ = ServerFrame::parse(&text);
    }

    #[test]
    fn frame_like_text_never_panics_and_parsed_frames_round_trip(text in frame_like()) {
        if let Ok(frame) = ClientFrame::parse(&text) {
            prop_assert_eq!(ClientFrame::parse(&frame.to_text()), Ok(frame));
        }
        let _ = ServerFrame::parse(&text);
    }

    #[test]
    fn truncated_frame_like_text_never_panics(text in frame_like(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(text.len() + 1);
        if text.is_char_boundary(cut) {
            let _ = ClientFrame::parse(&text[..cut]);
        }
    }

    #[test]
    fn arbitrary_binary_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        let frame = Bytes::from(bytes);
        match decode_binary(&frame) {
            Ok((n, payload)) => {
                prop_assert!(n > 0);
                prop_assert_eq!(payload.len() + 8, frame.len());
            }
            Err(_) => prop_assert!(frame.len() < 8 || frame[..8] == [0; 8]),
        }
    }
}
