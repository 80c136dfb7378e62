//! Framing on QUIC streams: a 4-byte big-endian length, then that many bytes of a
//! MessagePack (rmp-serde) message.
//!
//! Every reader states the largest frame it takes. A length over it, a stream that ends
//! inside a frame, or bytes that do not decode as the expected message are a [`WireError`]:
//! the caller closes that stream (and only that stream) and logs it. Nothing is allocated
//! before the length is checked, so a hostile peer cannot make a reader reserve more than
//! its limit.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("frame of {bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge { bytes: usize, max_bytes: usize },
    #[error("undecodable frame: {0}")]
    Malformed(String),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream error: {0}")]
    Stream(String),
}

/// `message` with its length prefix, ready to write; refused if over `max_bytes`.
pub fn encode_frame<T: Serialize>(message: &T, max_bytes: usize) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0; LENGTH_PREFIX_BYTES];
    rmp_serde::encode::write(&mut frame, message)
        .map_err(|error| WireError::Malformed(error.to_string()))?;
    let bytes = frame.len() - LENGTH_PREFIX_BYTES;
    if bytes > max_bytes {
        return Err(WireError::TooLarge { bytes, max_bytes });
    }
    let length = u32::try_from(bytes).map_err(|_| WireError::TooLarge { bytes, max_bytes })?;
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(frame)
}

/// The body length a prefix announces, if within `max_bytes`.
pub fn body_length(
    prefix: [u8; LENGTH_PREFIX_BYTES],
    max_bytes: usize,
) -> Result<usize, WireError> {
    let bytes = u32::from_be_bytes(prefix) as usize;
    if bytes > max_bytes {
        return Err(WireError::TooLarge { bytes, max_bytes });
    }
    Ok(bytes)
}

pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    rmp_serde::from_slice(body).map_err(|error| WireError::Malformed(error.to_string()))
}

/// Reads one frame from `stream`: `Ok(None)` if the stream ended cleanly before it.
pub async fn read_frame<T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    max_bytes: usize,
) -> Result<Option<T>, WireError> {
    match read_length(stream, max_bytes).await? {
        Some(bytes) => read_body(stream, bytes).await.map(Some),
        None => Ok(None),
    }
}

/// The length of the next frame's body (checked against `max_bytes`), or `None` if the
/// stream ended cleanly between frames. Lets a reader reserve memory before the body.
pub async fn read_length(
    stream: &mut quinn::RecvStream,
    max_bytes: usize,
) -> Result<Option<usize>, WireError> {
    let mut prefix = [0; LENGTH_PREFIX_BYTES];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => body_length(prefix, max_bytes).map(Some),
        Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(WireError::Truncated),
        Err(quinn::ReadExactError::ReadError(error)) => Err(WireError::Stream(error.to_string())),
    }
}

/// Bytes a frame body's buffer starts with: it grows as the bytes arrive, so a prefix
/// that announces a large frame costs nothing until the peer sends it.
const INITIAL_BODY_BYTES: usize = 64 << 10;

/// Reads and decodes a body of `bytes` bytes (from [`read_length`]).
pub async fn read_body<T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    bytes: usize,
) -> Result<T, WireError> {
    let mut body: Vec<u8> = Vec::with_capacity(bytes.min(INITIAL_BODY_BYTES));
    while body.len() < bytes {
        let wanted = bytes - body.len();
        // `read_chunk` returns at most `wanted` bytes.
        let chunk = match stream.read_chunk(wanted, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Err(WireError::Truncated),
            Err(error) => return Err(WireError::Stream(error.to_string())),
        };
        let needed = body.len() + chunk.len();
        if needed > body.capacity() {
            // Double, but never past the announced size.
            let target = (body.capacity() * 2).max(needed).min(bytes);
            body.reserve_exact(target - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    decode_body(&body)
}

/// Writes an encoded frame (from [`encode_frame`]).
pub async fn write_frame(stream: &mut quinn::SendStream, frame: &[u8]) -> Result<(), WireError> {
    stream
        .write_all(frame)
        .await
        .map_err(|error| WireError::Stream(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_its_prefix_is_its_length() {
        let message = (7u64, "value".to_string());
        let frame = encode_frame(&message, 1024).expect("encodes");
        let prefix: [u8; 4] = frame[..4].try_into().expect("four bytes");
        assert_eq!(body_length(prefix, 1024).ok(), Some(frame.len() - 4));
        let decoded: (u64, String) = decode_body(&frame[4..]).expect("decodes");
        assert_eq!(decoded, message);
    }

    #[test]
    fn oversized_and_garbage_frames_are_typed_errors() {
        let big = vec![0u8; 2000];
        assert!(matches!(
            encode_frame(&serde_bytes::ByteBuf::from(big), 1000),
            Err(WireError::TooLarge {
                max_bytes: 1000,
                ..
            })
        ));
        assert!(matches!(
            body_length(u32::MAX.to_be_bytes(), 1 << 20),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_body::<(u64, String)>(&[0xc1, 0xff, 0x00]),
            Err(WireError::Malformed(_))
        ));
    }
}
