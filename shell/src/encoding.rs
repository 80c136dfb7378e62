//! How rows become keys and values.
//!
//! - A row of table T lives at `/t/<T's id in decimal>/<primary key>`, the primary key's
//!   columns encoded one after another with [`encode_key_value`]: an order-preserving
//!   ("memcomparable") encoding, so comparing two keys bytewise compares their primary
//!   keys column by column, and a prefix of the primary key is a key range.
//! - Each encoded value is self-delimiting: no encoded value is a prefix of another, so
//!   the keys of all rows whose leading columns equal some values are exactly the keys
//!   starting with those columns' encodings.
//! - The value is [`ROW_FORMAT`] then the row's other columns, by column id, in rmp-serde
//!   (NULLs left out). Primary key columns are not repeated: they are decoded from the key.

use std::collections::BTreeMap;

use crate::error::SqlError;
use crate::value::Value;

/// Every table key starts with this.
pub const TABLE_PREFIX: &[u8] = b"/t/";
/// The first byte of a stored row value: the format it is in.
pub const ROW_FORMAT: u8 = 1;

const NULL_TAG: u8 = 0x00;
const BOOL_TAG: u8 = 0x10;
const INT_TAG: u8 = 0x20;
const FLOAT_TAG: u8 = 0x30;
const TEXT_TAG: u8 = 0x40;
const BYTES_TAG: u8 = 0x50;
/// In text and bytes, 0x00 is written 0x00 0xff and the value ends with 0x00 0x01, so the
/// end sorts before any continuation and a shorter string before its extensions.
const ESCAPED_ZERO: u8 = 0xff;
const TERMINATOR: u8 = 0x01;

/// The prefix of every key of table `id`: `/t/<id>/`.
pub fn table_prefix(id: u64) -> Vec<u8> {
    let mut key = TABLE_PREFIX.to_vec();
    key.extend_from_slice(id.to_string().as_bytes());
    key.push(b'/');
    key
}

/// The key range `[start, end)` holding every row of table `id`.
pub fn table_span(id: u64) -> (Vec<u8>, Vec<u8>) {
    let start = table_prefix(id);
    let end = prefix_end(&start);
    (start, end)
}

/// The first key after every key that starts with `prefix` (empty if there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    rshard_common::api::prefix_end(prefix).unwrap_or_default()
}

/// Appends the order-preserving encoding of `value` to `out`.
pub fn encode_key_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(NULL_TAG),
        Value::Bool(b) => {
            out.push(BOOL_TAG);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            out.push(INT_TAG);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Float(f) => {
            out.push(FLOAT_TAG);
            // -0 and 0 are one value; flipping the sign bit of positives and every bit of
            // negatives makes the bit patterns sort as the numbers do.
            let f = if *f == 0.0 { 0.0 } else { *f };
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits ^ (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::Text(s) => {
            out.push(TEXT_TAG);
            escape(s.as_bytes(), out);
        }
        Value::Bytes(b) => {
            out.push(BYTES_TAG);
            escape(b, out);
        }
    }
}

fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        out.push(byte);
        if byte == 0 {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(0);
    out.push(TERMINATOR);
}

/// The key of the row of table `table` whose primary key is `key_values`.
pub fn row_key(table: u64, key_values: &[&Value]) -> Vec<u8> {
    let mut key = table_prefix(table);
    for value in key_values {
        encode_key_value(value, &mut key);
    }
    key
}

/// Decodes one value from the front of `bytes`; returns it and the bytes after it.
pub fn decode_key_value(bytes: &[u8]) -> Result<(Value, &[u8]), SqlError> {
    let corrupt = |what: &str| SqlError::Corrupt(format!("key encoding: {what}"));
    let (&tag, rest) = bytes.split_first().ok_or_else(|| corrupt("no value"))?;
    let fixed = |rest: &[u8]| -> Result<u64, SqlError> {
        let bytes: [u8; 8] = rest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("a number cut short"))?;
        Ok(u64::from_be_bytes(bytes))
    };
    Ok(match tag {
        NULL_TAG => (Value::Null, rest),
        BOOL_TAG => match rest.split_first() {
            Some((0, rest)) => (Value::Bool(false), rest),
            Some((1, rest)) => (Value::Bool(true), rest),
            _ => return Err(corrupt("a bad boolean")),
        },
        INT_TAG => (Value::Int((fixed(rest)? ^ (1 << 63)) as i64), &rest[8..]),
        FLOAT_TAG => {
            let ordered = fixed(rest)?;
            let bits = if ordered >> 63 == 1 {
                ordered ^ (1 << 63)
            } else {
                !ordered
            };
            (Value::Float(f64::from_bits(bits)), &rest[8..])
        }
        TEXT_TAG | BYTES_TAG => {
            let mut raw = Vec::new();
            let mut index = 0;
            loop {
                match (rest.get(index), rest.get(index + 1)) {
                    (Some(0), Some(&ESCAPED_ZERO)) => raw.push(0),
                    (Some(0), Some(&TERMINATOR)) => break,
                    (Some(0), _) | (None, _) => return Err(corrupt("an unterminated string")),
                    (Some(&byte), _) => {
                        raw.push(byte);
                        index += 1;
                        continue;
                    }
                }
                index += 2;
            }
            let value = if tag == TEXT_TAG {
                Value::Text(String::from_utf8(raw).map_err(|_| corrupt("text not UTF-8"))?)
            } else {
                Value::Bytes(raw)
            };
            (value, &rest[index + 2..])
        }
        other => return Err(corrupt(&format!("unknown tag {other:#04x}"))),
    })
}

/// The primary key values in a row key of table `table` (`columns` of them).
pub fn decode_row_key(table: u64, key: &[u8], columns: usize) -> Result<Vec<Value>, SqlError> {
    let prefix = table_prefix(table);
    let mut rest = key.strip_prefix(prefix.as_slice()).ok_or_else(|| {
        SqlError::Corrupt(format!("key {} is not in table {table}", show_key(key)))
    })?;
    let mut values = Vec::with_capacity(columns);
    for _ in 0..columns {
        let (value, after) = decode_key_value(rest)?;
        values.push(value);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(SqlError::Corrupt(format!(
            "key {} has bytes after its primary key",
            show_key(key)
        )));
    }
    Ok(values)
}

/// A key in the shared printable form.
pub fn show_key(key: &[u8]) -> String {
    rshard_common::keytext::show(key)
}

/// The stored value of a row: its non-key columns by id, NULLs left out.
pub fn encode_row(columns: &BTreeMap<u32, Value>) -> Result<Vec<u8>, SqlError> {
    let present: BTreeMap<u32, &Value> = columns
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(id, value)| (*id, value))
        .collect();
    let mut out = vec![ROW_FORMAT];
    rmp_serde::encode::write(&mut out, &present)
        .map_err(|error| SqlError::Corrupt(format!("encoding a row: {error}")))?;
    Ok(out)
}

/// The columns of a stored row value, by id.
pub fn decode_row(bytes: &[u8]) -> Result<BTreeMap<u32, Value>, SqlError> {
    match bytes.split_first() {
        Some((&ROW_FORMAT, body)) => rmp_serde::from_slice(body)
            .map_err(|error| SqlError::Corrupt(format!("a stored row does not decode: {error}"))),
        Some((format, _)) => Err(SqlError::Corrupt(format!(
            "a stored row is in unknown format {format}"
        ))),
        None => Err(SqlError::Corrupt("a stored row is empty".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_spans_do_not_overlap_for_ids_sharing_digits() {
        let (start1, end1) = table_span(1);
        let (start10, _) = table_span(10);
        // "/t/10/" is not inside table 1's span: the '/' after the id separates them.
        assert!(!(start1 <= start10 && start10 < end1));
        assert_eq!(end1, b"/t/10".to_vec());
    }

    #[test]
    fn corrupt_keys_are_errors() {
        for bad in [
            &[0x20, 1, 2][..],
            &[0x40, b'a'],
            &[0x40, 0, 7],
            &[0x99],
            &[0x10, 5],
        ] {
            assert!(decode_key_value(bad).is_err(), "{bad:?}");
        }
        assert!(decode_row(&[]).is_err());
        assert!(decode_row(&[7, 1]).is_err());
        assert!(decode_row(&[ROW_FORMAT, 0xc1]).is_err());
    }
}
