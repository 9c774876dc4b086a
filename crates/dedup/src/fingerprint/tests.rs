use super::encoding::{LONG, TAG_TEXT, put_bytes};
use super::sip::Sip;
use super::*;

fn fp() -> Fingerprinter {
    Fingerprinter::new(*b"0123456789abcdef", true)
}

/// What `fp()` gives a text message hashed as its bytes.
fn text_bytes(text: &[u8]) -> Fingerprint {
    let mut h = Sip::<1, 3>::new(*b"0123456789abcdef");
    put_bytes(&mut h, TAG_TEXT, text);
    Fingerprint(h.finish())
}

#[test]
fn key_order_and_whitespace_do_not_matter() {
    let f = fp();
    let a = f.fingerprint_json(br#"{"a":1,"b":{"x":[1,2,{"k":"v","j":null}],"y":true}}"#);
    let b = f.fingerprint_json(
        b"{ \"b\" : { \"y\" : true, \"x\" : [ 1 , 2 , { \"j\": null, \"k\": \"v\" } ] },\n \"a\" : 1 }",
    );
    assert_eq!(a, b);
}

#[test]
fn different_values_differ() {
    let f = fp();
    let docs: [&[u8]; 12] = [
        br#"{"a":1}"#,
        br#"{"a":2}"#,
        br#"{"a":"1"}"#,
        br#"{"b":1}"#,
        br#"{"a":1,"b":1}"#,
        br#"[1,2]"#,
        br#"[2,1]"#,
        br#"[[1],2]"#,
        br#"[[1,2]]"#,
        br#"{"a":[]}"#,
        br#"{"a":{}}"#,
        br#"{"a":null}"#,
    ];
    let mut seen = std::collections::HashSet::new();
    for d in docs {
        assert!(seen.insert(f.fingerprint_json(d)), "collision for {:?}", d);
    }
}

#[test]
fn numbers_compare_by_value() {
    let f = fp();
    let one = f.fingerprint_json(b"[1]");
    assert_eq!(one, f.fingerprint_json(b"[1.0]"));
    assert_eq!(one, f.fingerprint_json(b"[1e0]"));
    assert_eq!(one, f.fingerprint_json(b"[10e-1]"));
    assert_eq!(f.fingerprint_json(b"[0]"), f.fingerprint_json(b"[-0.0]"));
    assert_eq!(f.fingerprint_json(b"[0.1]"), f.fingerprint_json(b"[0.10]"));
    assert_ne!(one, f.fingerprint_json(b"[1.5]"));
    assert_ne!(
        f.fingerprint_json(b"[18446744073709551615]"),
        f.fingerprint_json(b"[18446744073709551614]")
    );
}

#[test]
fn large_top_level_objects_and_escaped_keys_are_order_invariant() {
    let f = fp();
    let entries: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
    let sizes = [1, 2, 15, 16, 17, 40];
    for n in sizes {
        let forward = format!("{{{}}}", entries[..n].join(","));
        let backward: Vec<_> = entries[..n].iter().rev().cloned().collect();
        let backward = format!("{{ {} }}", backward.join(" , "));
        let a = f.fingerprint_json(forward.as_bytes());
        assert_eq!(a, f.fingerprint_json(backward.as_bytes()), "{n} entries");
        assert_ne!(a, text_bytes(forward.as_bytes()));
    }
    assert_eq!(
        f.fingerprint_json(br#"{"\u0062":[1,{"y":2,"x":1}],"a":"\u00e9"}"#),
        f.fingerprint_json("{\"a\":\"\u{e9}\",\"b\":[1,{\"x\":1,\"y\":2}]}".as_bytes())
    );
    // The same object nested and at the top level is found equal in both layouts.
    assert_eq!(
        f.fingerprint_json(br#"[{"a":1,"b":2}]"#),
        f.fingerprint_json(br#"[{"b":2,"a":1}]"#)
    );
    assert_ne!(
        f.fingerprint_json(br#"{"a":1,"b":2}"#),
        f.fingerprint_json(br#"{"a":2,"b":1}"#)
    );
}

#[test]
fn escapes_are_compared_unescaped() {
    let f = fp();
    assert_eq!(
        f.fingerprint_json(br#"{"\u0061":"\u0041"}"#),
        f.fingerprint_json(br#"{"a":"A"}"#)
    );
}

#[test]
fn non_json_and_malformed_hash_as_bytes() {
    let f = fp();
    for text in [
        &b"hello"[..],
        b"{\"a\":",
        b"{\"a\":1} trailing",
        b"",
        b"   ",
        b"\xff\x00",
    ] {
        assert_eq!(f.fingerprint_json(text), text_bytes(text));
        // The same bytes in a binary message are another message.
        assert_ne!(f.fingerprint_json(text), f.fingerprint_bytes(text));
    }
    assert_ne!(
        f.fingerprint_json(b"{\"a\":1} x"),
        f.fingerprint_json(b"{\"a\":1} y")
    );
    // A JSON value never shares a fingerprint with the same bytes taken raw.
    assert_ne!(f.fingerprint_json(b"[1]"), text_bytes(b"[1]"));
}

#[test]
fn deep_nesting_falls_back_to_bytes_without_overflow() {
    let f = fp();
    let deep = |n: usize| {
        let mut s = "[".repeat(n);
        s.push_str(&"]".repeat(n));
        s.into_bytes()
    };
    let ok = deep(MAX_DEPTH as usize);
    assert_ne!(f.fingerprint_json(&ok), text_bytes(&ok));
    for n in [MAX_DEPTH as usize + 1, 200, 100_000] {
        let d = deep(n);
        assert_eq!(f.fingerprint_json(&d), text_bytes(&d));
    }
    let objects = "{\"a\":".repeat(50_000);
    assert_eq!(
        f.fingerprint_json(objects.as_bytes()),
        text_bytes(objects.as_bytes())
    );
}

#[test]
fn keys_and_algorithms_change_fingerprints() {
    let doc = br#"{"a":1}"#;
    let a = Fingerprinter::new([1; 16], true).fingerprint_json(doc);
    assert_ne!(a, Fingerprinter::new([2; 16], true).fingerprint_json(doc));
    assert_ne!(a, Fingerprinter::new([1; 16], false).fingerprint_json(doc));
    assert_eq!(a, Fingerprinter::new([1; 16], true).fingerprint_json(doc));
    assert_eq!(
        Fingerprinter::random(true).fingerprint_json(doc),
        Fingerprinter::random(true).fingerprint_json(doc)
    );
}

#[test]
fn duplicate_keys_and_swapped_values_differ() {
    let f = fp();
    assert_ne!(
        f.fingerprint_json(br#"{"a":1,"b":2}"#),
        f.fingerprint_json(br#"{"a":2,"b":1}"#)
    );
    assert_ne!(
        f.fingerprint_json(br#"{"a":1,"a":1}"#),
        f.fingerprint_json(br#"{"a":1}"#)
    );
}

#[test]
fn scopes_separate_keys() {
    let f = fp();
    let c = Content::Text(br#"{"a":1}"#);
    let keys = [
        f.key(Scope::Global, c),
        f.key(Scope::Connection(1), c),
        f.key(Scope::Connection(2), c),
        f.key(Scope::Client("alice"), c),
        f.key(Scope::Client("bob"), c),
    ];
    let set: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(set.len(), keys.len());
}

#[test]
fn reader_accepts_exactly_json() {
    let f = fp();
    let valid: [&[u8]; 10] = [
        b"0",
        b"-0.5e-3",
        b"\"\\u00e9\\ud83d\\ude00\\n\"",
        b"[]",
        b"{}",
        b" [ true , false , null ] ",
        b"{\"a\":{\"b\":[{}]}}",
        b"1E+2",
        b"\"\xc3\xa9\"",
        b"123456789012345678901234567890",
    ];
    for v in valid {
        assert!(serde_json::from_slice::<serde_json::Value>(v).is_ok());
        assert_ne!(f.fingerprint_json(v), text_bytes(v), "{:?}", v);
    }
    let invalid: [&[u8]; 14] = [
        b"01",
        b"1.",
        b".5",
        b"-",
        b"1e",
        b"tru",
        b"[1,]",
        b"{\"a\"}",
        b"{\"a\":1,}",
        b"\"\\x\"",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"tab\there\"",
        b"[1] [2]",
    ];
    for v in invalid {
        assert!(
            serde_json::from_slice::<serde_json::Value>(v).is_err(),
            "{:?}",
            v
        );
        assert_eq!(f.fingerprint_json(v), text_bytes(v), "{:?}", v);
    }
    assert_eq!(
        f.fingerprint_json(b"\"\\u00e9\""),
        f.fingerprint_json("\"\u{e9}\"".as_bytes())
    );
    assert_eq!(
        f.fingerprint_json(b"[1e20]"),
        f.fingerprint_json(b"[100000000000000000000]")
    );
    assert_eq!(
        f.fingerprint_json(b"[1e19]"),
        f.fingerprint_json(b"[10000000000000000000]")
    );
}

/// `s` as a JSON string with every character written as a `\u` escape.
fn all_escaped(s: &str) -> String {
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

#[test]
fn strings_of_every_length_in_every_place() {
    let f = fp();
    for len in 0..=40 {
        let s: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let plain = format!("\"{s}\"");
        let escaped = all_escaped(&s);
        // At the very end of the input, with room after it, and unescaped into the arena.
        let top = f.fingerprint_json(plain.as_bytes());
        assert_eq!(
            top,
            f.fingerprint_json(format!("{plain}        ").as_bytes())
        );
        assert_eq!(top, f.fingerprint_json(escaped.as_bytes()), "{len}");
        // As a key and as a value, in each of those forms.
        let obj = f.fingerprint_json(format!("{{{plain}:{plain}}}").as_bytes());
        assert_eq!(
            obj,
            f.fingerprint_json(format!("{{ {escaped} : {escaped} }}").as_bytes())
        );
        assert_eq!(
            f.fingerprint_json(format!("[{plain},1]").as_bytes()),
            f.fingerprint_json(format!("[{escaped},1]").as_bytes())
        );
        // A trailing NUL is data, not padding; one byte more or less is another string.
        let nul = f.fingerprint_json(format!("\"{s}\\u0000\"").as_bytes());
        assert_ne!(top, nul, "{len}");
        if len > 0 {
            let shorter = format!("\"{}\"", &s[..len - 1]);
            assert_ne!(top, f.fingerprint_json(shorter.as_bytes()));
            let other = format!("{{\"{}_\":\"{s}\"}}", &s[..len - 1]);
            assert_ne!(obj, f.fingerprint_json(other.as_bytes()));
        }
        // Raw bytes of every length are told apart too.
        assert_ne!(
            f.fingerprint_bytes(s.as_bytes()),
            f.fingerprint_bytes(format!("{s}\0").as_bytes())
        );
    }
}

#[test]
fn long_strings_keep_their_length() {
    let f = fp();
    for len in [LONG - 1, LONG, LONG + 1, LONG + 8] {
        let s = "x".repeat(len);
        let doc = format!("{{\"{s}\":\"{s}\"}}");
        let a = f.fingerprint_json(doc.as_bytes());
        let escaped = format!("{{\"\\u0078{}\":\"{s}\"}}", &s[1..]);
        assert_eq!(a, f.fingerprint_json(escaped.as_bytes()), "{len}");
        let longer = format!("{{\"{s}\":\"{s}x\"}}");
        assert_ne!(a, f.fingerprint_json(longer.as_bytes()), "{len}");
    }
}

#[test]
fn keys_that_share_their_first_bytes_are_order_invariant() {
    let f = fp();
    let pairs: [(&[u8], &[u8]); 4] = [
        (br#"{"abcdeX":1,"abcdeY":2}"#, br#"{"abcdeY":2,"abcdeX":1}"#),
        (
            br#"{"abcdefgh1":1,"abcdefgh2":2}"#,
            br#"{"abcdefgh2":2,"abcdefgh1":1}"#,
        ),
        // The same zero-padded prefix, and still two keys.
        (br#"{"a":1,"a\u0000":2}"#, br#"{"a\u0000":2,"a":1}"#),
        (br#"{"a":[1],"b":{},"c":0}"#, br#"{"c":0,"b":{},"a":[1]}"#),
    ];
    for (a, b) in pairs {
        assert_eq!(f.fingerprint_json(a), f.fingerprint_json(b), "{:?}", a);
        assert_ne!(f.fingerprint_json(a), text_bytes(a), "{:?}", a);
    }
    assert_ne!(
        f.fingerprint_json(br#"{"abcdeX":1,"abcdeY":2}"#),
        f.fingerprint_json(br#"{"abcdeX":2,"abcdeY":1}"#)
    );
}

#[test]
fn a_repeated_key_anywhere_hashes_the_document_as_bytes() {
    let f = fp();
    let wide = |keys: &[&str]| {
        let entries: Vec<String> = keys.iter().map(|k| format!("\"{k}\":1")).collect();
        format!("{{{}}}", entries.join(","))
    };
    let names: Vec<String> = (0..20).map(|i| format!("key{i}")).collect();
    let mut first_and_last: Vec<&str> = names.iter().map(String::as_str).collect();
    first_and_last.push("key0");
    let mut sixteenth_and_seventeenth: Vec<&str> = names.iter().map(String::as_str).collect();
    sixteenth_and_seventeenth[16] = "key15";
    let docs: Vec<Vec<u8>> = [
        r#"{"a":1,"a":2}"#.to_owned(),
        r#"{"a":2,"a":1}"#.to_owned(),
        r#"{"a":1,"a":1}"#.to_owned(),
        r#"{"a":null,"b":0,"a":[1]}"#.to_owned(),
        r#"{"\u0061":1,"a":1}"#.to_owned(),
        r#"{"abcdefgh1":1,"abcdefgh1":2}"#.to_owned(),
        r#"[1,{"x":{"k":1,"k":2}}]"#.to_owned(),
        r#"{"outer":[{"k":1,"k":2}]}"#.to_owned(),
        wide(&first_and_last),
        wide(&sixteenth_and_seventeenth),
        format!(r#"{{"n":{}}}"#, wide(&first_and_last)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    for doc in &docs {
        assert_eq!(
            f.fingerprint_json(doc),
            text_bytes(doc),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
    // Twenty distinct keys, and the same in reverse, are still a JSON value.
    let distinct: Vec<&str> = names.iter().map(String::as_str).collect();
    let reversed: Vec<&str> = distinct.iter().rev().copied().collect();
    let a = f.fingerprint_json(wide(&distinct).as_bytes());
    assert_ne!(a, text_bytes(wide(&distinct).as_bytes()));
    assert_eq!(a, f.fingerprint_json(wide(&reversed).as_bytes()));
}

#[test]
fn large_objects_with_nested_values_are_order_invariant() {
    let f = fp();
    for n in [15, 16, 17, 18, 40] {
        let entries: Vec<String> = (0..n)
            .map(|i| match i % 4 {
                0 => format!("\"key{i}\":{{\"x\":[{i},{{\"y\":\"{i}\",\"z\":null}}]}}"),
                1 => format!("\"key{i}\":[\"long enough to take three words {i}\"]"),
                2 => format!("\"key{i}\":{i}.5"),
                _ => format!("\"k\\u0065y{i}\":\"v\\n{i}\""),
            })
            .collect();
        let forward = format!("{{{}}}", entries.join(","));
        let mut backward = entries.clone();
        backward.reverse();
        let backward = format!("{{\n  {}\n}}", backward.join(",\n  "));
        let a = f.fingerprint_json(forward.as_bytes());
        assert_eq!(a, f.fingerprint_json(backward.as_bytes()), "{n} entries");
        // One nested value changed changes the whole.
        let changed = forward.replacen("\"z\":null", "\"z\":false", 1);
        assert_ne!(a, f.fingerprint_json(changed.as_bytes()), "{n} entries");
        // The same object as an array element.
        assert_eq!(
            f.fingerprint_json(format!("[{forward}]").as_bytes()),
            f.fingerprint_json(format!("[{backward}]").as_bytes())
        );
    }
}

#[test]
fn integers_at_the_word_boundaries() {
    let f = fp();
    let edges: [i128; 10] = [
        (1 << 55) - 1,
        1 << 55,
        -(1 << 55),
        -(1 << 55) - 1,
        i64::MAX as i128,
        i64::MIN as i128,
        i64::MAX as i128 + 1,
        i64::MIN as i128 - 1,
        999_999_999_999_999_999,
        1_000_000_000_000_000_000,
    ];
    let mut seen = std::collections::HashSet::new();
    for v in edges {
        let a = f.fingerprint_json(format!("[{v}]").as_bytes());
        assert!(seen.insert(a), "{v}");
        // Other spellings of the same integer, whether or not a double holds it.
        for other in [format!("[{v}.0]"), format!("[{v}e0]"), format!("[{v}0e-1]")] {
            assert_eq!(a, f.fingerprint_json(other.as_bytes()), "{other}");
        }
        assert_ne!(a, f.fingerprint_json(format!("[{v}.5]").as_bytes()), "{v}");
    }
    assert_eq!(
        f.fingerprint_json(b"[1000000000000000000]"),
        f.fingerprint_json(b"[1e18]")
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Integral doubles equal integers by design; keep the two apart here.
            (-1e6f64..1e6)
                .prop_filter("non-integral", |x| x.fract() != 0.0)
                .prop_map(Value::from),
            "[a-z\\\\\"\u{e9}\u{1f600}\n]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z]{0,4}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Wide objects (past the sorted size) of keys that often share their first bytes, long
    /// strings and strings with control characters.
    fn wide_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-z\u{1}\t\"\\\\]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 80, 24, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[ab]{4,7}", inner, 0..24)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Writes `v` with object keys in reverse order and spaces everywhere.
    fn reversed(v: &serde_json::Value, out: &mut String) {
        write_reversed(v, out, false);
    }

    /// As [`reversed`], with every string written as `\u` escapes if `escape`.
    fn write_reversed(v: &serde_json::Value, out: &mut String, escape: bool) {
        let string = |s: &str| {
            if escape {
                all_escaped(s)
            } else {
                serde_json::to_string(s).unwrap()
            }
        };
        use serde_json::Value;
        match v {
            Value::Array(a) => {
                out.push_str("[ ");
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" , ");
                    }
                    write_reversed(x, out, escape);
                }
                out.push_str(" ]");
            }
            Value::Object(m) => {
                out.push_str("{\n");
                let mut entries: Vec<_> = m.iter().collect();
                entries.reverse();
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(",\t");
                    }
                    out.push_str(&string(k));
                    out.push_str(" : ");
                    write_reversed(x, out, escape);
                }
                out.push_str("\r\n}");
            }
            Value::String(s) => out.push_str(&string(s)),
            other => out.push_str(&serde_json::to_string(other).unwrap()),
        }
    }

    proptest! {
        #[test]
        fn same_value_same_fingerprint_whatever_the_layout(v in value()) {
            let f = fp();
            let compact = serde_json::to_string(&v).unwrap();
            let mut other = String::new();
            reversed(&v, &mut other);
            prop_assert_ne!(f.fingerprint_json(compact.as_bytes()), text_bytes(compact.as_bytes()));
            prop_assert_eq!(f.fingerprint_json(compact.as_bytes()), f.fingerprint_json(other.as_bytes()));
        }

        #[test]
        fn wide_objects_escapes_and_layout_do_not_matter(v in wide_value()) {
            let f = fp();
            let compact = serde_json::to_string(&v).unwrap();
            let a = f.fingerprint_json(compact.as_bytes());
            let mut other = String::new();
            reversed(&v, &mut other);
            prop_assert_eq!(a, f.fingerprint_json(other.as_bytes()));
            let mut escaped = String::new();
            write_reversed(&v, &mut escaped, true);
            prop_assert_eq!(a, f.fingerprint_json(escaped.as_bytes()));
            prop_assert_ne!(a, text_bytes(compact.as_bytes()));
        }

        #[test]
        fn wide_different_values_differ(a in wide_value(), b in wide_value()) {
            prop_assume!(a != b);
            let f = fp();
            let (a, b) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
            prop_assert_ne!(f.fingerprint_json(&a), f.fingerprint_json(&b));
        }

        /// Every cut of a document is JSON exactly when serde_json says so, and hashes as
        /// bytes otherwise.
        #[test]
        fn truncated_documents_hash_as_bytes(v in value()) {
            let f = fp();
            let doc = serde_json::to_vec(&v).unwrap();
            for cut in 0..doc.len() {
                let part = &doc[..cut];
                let json = serde_json::from_slice::<serde_json::Value>(part).is_ok();
                prop_assert_eq!(
                    json,
                    f.fingerprint_json(part) != text_bytes(part),
                    "{:?}",
                    String::from_utf8_lossy(part)
                );
            }
        }

        #[test]
        fn number_forms_compare_by_value(n in any::<i32>(), x in -1e6f64..1e6) {
            let f = fp();
            let one = |text: String| f.fingerprint_json(format!("{{\"n\":[{text}]}}").as_bytes());
            let int = one(n.to_string());
            for form in [format!("{n}.0"), format!("{n}e0"), format!("{n}0e-1"), format!("{n}.000E+0")] {
                prop_assert_eq!(int, one(form));
            }
            prop_assert_ne!(int, one(format!("{}", i64::from(n) + 1)));
            prop_assert_eq!(one(format!("{x}")), one(format!("{x:e}")));
            prop_assert_eq!(one(format!("{x:e}")), one(format!("{x:E}")));
        }

        #[test]
        fn different_values_differ(a in value(), b in value()) {
            prop_assume!(a != b);
            let f = fp();
            let (a, b) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
            prop_assert_ne!(f.fingerprint_json(&a), f.fingerprint_json(&b));
        }
    }
}
