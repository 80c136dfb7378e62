//! Property tests: the key encoding orders keys as their values order, for every type and
//! for composite keys, and decodes back; the row codec round-trips.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use proptest::prelude::*;
use rshard_shell::encoding::{decode_key_value, decode_row, encode_key_value, encode_row};
use rshard_shell::value::Value;

/// One value of one type (a key column has one type); `None` is NULL.
fn value_of(kind: u8) -> BoxedStrategy<Value> {
    let null = Just(Value::Null);
    match kind {
        0 => prop_oneof![1 => null, 9 => any::<i64>().prop_map(Value::Int)].boxed(),
        1 => prop_oneof![
            1 => null,
            9 => any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| Value::Float(if f == 0.0 { 0.0 } else { f }))
        ]
        .boxed(),
        2 => prop_oneof![1 => null, 9 => ".{0,40}".prop_map(Value::Text)].boxed(),
        3 => prop_oneof![
            1 => null,
            9 => proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8), any::<u8>()], 0..40)
                .prop_map(Value::Bytes)
        ]
        .boxed(),
        _ => prop_oneof![1 => null, 9 => any::<bool>().prop_map(Value::Bool)].boxed(),
    }
}

/// The order keys must have: NULL first, then by value.
fn key_order(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (a, b) => a.compare(b).expect("same types").expect("not null"),
    }
}

fn encode(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in values {
        encode_key_value(value, &mut out);
    }
    out
}

fn composite() -> impl Strategy<Value = (Vec<Value>, Vec<Value>)> {
    proptest::collection::vec(0u8..5, 1..4).prop_flat_map(|kinds| {
        let a: Vec<_> = kinds.iter().map(|&k| value_of(k)).collect();
        let b: Vec<_> = kinds.iter().map(|&k| value_of(k)).collect();
        (a, b)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn composite_keys_sort_as_their_values((a, b) in composite()) {
        let expected = a.iter().zip(&b).map(|(x, y)| key_order(x, y)).find(|o| *o != Ordering::Equal).unwrap_or(Ordering::Equal);
        prop_assert_eq!(encode(&a).cmp(&encode(&b)), expected);
    }

    #[test]
    fn keys_decode_to_their_values((a, _) in composite()) {
        let bytes = encode(&a);
        let mut rest = bytes.as_slice();
        for value in &a {
            let (decoded, after) = decode_key_value(rest).expect("decodes");
            prop_assert_eq!(&decoded, value);
            rest = after;
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn no_encoded_value_is_a_prefix_of_another_of_its_type(kind in 0u8..5, a in any::<u64>(), b in any::<u64>()) {
        // Self-delimiting: a prefix-of relation would let one key's range hold another's.
        let _ = (a, b);
        let runner_a = value_of(kind);
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let x = runner_a.new_tree(&mut runner).expect("a value").current();
        let y = value_of(kind).new_tree(&mut runner).expect("a value").current();
        let (ex, ey) = (encode(std::slice::from_ref(&x)), encode(std::slice::from_ref(&y)));
        if ex != ey {
            prop_assert!(!ey.starts_with(&ex) && !ex.starts_with(&ey), "{:?} {:?}", x, y);
        }
    }

    #[test]
    fn rows_round_trip(columns in proptest::collection::btree_map(1u32..300, (0u8..5).prop_flat_map(value_of), 0..20)) {
        let bytes = encode_row(&columns).expect("encodes");
        let decoded = decode_row(&bytes).expect("decodes");
        let present: BTreeMap<u32, Value> = columns.into_iter().filter(|(_, v)| !v.is_null()).collect();
        prop_assert_eq!(decoded, present);
    }

    #[test]
    fn garbage_never_panics_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_key_value(&bytes);
        let _ = decode_row(&bytes);
        let _ = rshard_shell::encoding::decode_row_key(1, &bytes, 2);
    }
}

#[test]
fn edge_values_sort_as_numbers_and_strings_do() {
    let ordered = [
        vec![
            Value::Int(i64::MIN),
            Value::Int(-1),
            Value::Int(0),
            Value::Int(1),
            Value::Int(i64::MAX),
        ],
        vec![
            Value::Float(f64::MIN),
            Value::Float(-1.5),
            Value::Float(-f64::MIN_POSITIVE),
            Value::Float(0.0),
            Value::Float(f64::MIN_POSITIVE),
            Value::Float(2.0),
            Value::Float(f64::MAX),
        ],
        vec![
            Value::Text(String::new()),
            Value::Text("\u{0}".into()),
            Value::Text("\u{0}\u{0}".into()),
            Value::Text("a".into()),
            Value::Text("a\u{0}".into()),
            Value::Text("ab".into()),
            Value::Text("b".into()),
            Value::Text("é".into()),
        ],
        vec![
            Value::Bytes(vec![]),
            Value::Bytes(vec![0]),
            Value::Bytes(vec![0, 0]),
            Value::Bytes(vec![0, 1]),
            Value::Bytes(vec![1]),
            Value::Bytes(vec![255]),
        ],
        vec![Value::Bool(false), Value::Bool(true)],
    ];
    for values in ordered {
        let mut with_null = vec![Value::Null];
        with_null.extend(values);
        for pair in with_null.windows(2) {
            assert!(
                encode(&pair[..1]) < encode(&pair[1..]),
                "{:?} < {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    // -0 and 0 are one key.
    assert_eq!(encode(&[Value::Float(-0.0)]), encode(&[Value::Float(0.0)]));
}
