//! The one printable form of keys (and raw values) that the admin commands, `rshard kv` and
//! the shell share, on input and on output.
//!
//! Printable ASCII other than the backslash stands for itself; `\xNN` (two hex digits)
//! stands for any byte and `\\` for a backslash. [`show`] escapes every byte that is not
//! printable ASCII (space included, so a key is one word), and [`parse`] of what `show`
//! printed gives the bytes back.

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum KeyTextError {
    #[error("incomplete \\x escape at byte {at} of {text:?}: it needs two hex digits")]
    IncompleteEscape { text: String, at: usize },
    #[error("bad \\x escape {escape:?} in {text:?}: it needs two hex digits")]
    BadHex { text: String, escape: String },
    #[error("a backslash must start \\xNN or \\\\ in {text:?}")]
    LoneBackslash { text: String },
}

/// Parses `\xNN` and `\\` escapes.
pub fn parse(text: &str) -> Result<Vec<u8>, KeyTextError> {
    let mut bytes = Vec::with_capacity(text.len());
    let raw = text.as_bytes();
    let mut index = 0;
    while index < raw.len() {
        match (raw[index], raw.get(index + 1)) {
            (b'\\', Some(b'\\')) => {
                bytes.push(b'\\');
                index += 2;
            }
            (b'\\', Some(b'x')) => {
                let hex = text.get(index + 2..index + 4).ok_or_else(|| {
                    KeyTextError::IncompleteEscape {
                        text: text.to_string(),
                        at: index,
                    }
                })?;
                let byte = u8::from_str_radix(hex, 16).map_err(|_| KeyTextError::BadHex {
                    text: text.to_string(),
                    escape: hex.to_string(),
                })?;
                bytes.push(byte);
                index += 4;
            }
            (b'\\', _) => {
                return Err(KeyTextError::LoneBackslash {
                    text: text.to_string(),
                })
            }
            (byte, _) => {
                bytes.push(byte);
                index += 1;
            }
        }
    }
    Ok(bytes)
}

/// Bytes as text, escaping what is not printable ASCII.
pub fn show(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'\\' => text.push_str("\\\\"),
            0x21..=0x7e => text.push(byte as char),
            _ => text.push_str(&format!("\\x{byte:02x}")),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(parse(&show(&all)).ok(), Some(all));
        assert_eq!(parse("a\\x00b").ok(), Some(b"a\x00b".to_vec()));
        assert!(parse("\\q").is_err() && parse("\\x4").is_err() && parse("\\xzz").is_err());
        // A multi-byte character after \x is an error, not a panic on a char boundary.
        assert!(parse("\\xé").is_err());
    }
}
