//! Length-prefixed frames: a u32 little-endian payload length, then the payload.
//!
//! Typed frames carry bincode 2 (serde, standard config); raw frames carry opaque bytes (client
//! requests and responses, whose types belong to the server).
//!
//! What a peer can make us allocate: the length is checked against the caller's
//! `frame_bytes_max` before anything is allocated, and the payload buffer then grows only as
//! bytes arrive (`read_payload_into`), so a peer announcing 5 MiB and sending 10 bytes makes us
//! hold 10 bytes plus at most one `FRAME_READ_CHUNK_BYTES` chunk, not 5 MiB.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// The ceiling for any configured `frame_bytes_max`. It is also bincode's decode limit, which
/// bounds what a frame's inner length fields may claim (a `Bytes` field announcing 4 GiB inside
/// a 100-byte frame fails instead of allocating).
pub const FRAME_BYTES_LIMIT: u32 = 64 << 20;

/// How far a payload buffer may grow ahead of the bytes that have arrived: the first step, and
/// the smallest. Later steps double what has arrived (never past the frame's end), so a large
/// frame costs a logarithmic number of reallocations and at most twice its received bytes.
pub const FRAME_READ_CHUNK_BYTES: usize = 64 << 10;
/// Scratch buffer for `skip_payload`.
const SKIP_CHUNK_BYTES: usize = 4 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: u64, max: u32 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("encode failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ FRAME_BYTES_LIMIT as usize }>()
}

fn check_len(len: u64, frame_bytes_max: u32) -> Result<(), CodecError> {
    let max = frame_bytes_max.min(FRAME_BYTES_LIMIT);
    if len > u64::from(max) {
        return Err(CodecError::Oversize { len, max });
    }
    Ok(())
}

/// Encodes `value` as one frame (prefix included), ready to be written.
pub fn encode_frame<T: Serialize>(value: &T, frame_bytes_max: u32) -> Result<Bytes, CodecError> {
    let mut buf = vec![0u8; FRAME_HEADER_BYTES];
    bincode::serde::encode_into_std_write(value, &mut buf, bincode::config::standard())?;
    let len = (buf.len() - FRAME_HEADER_BYTES) as u64;
    check_len(len, frame_bytes_max)?;
    // check_len bounded len by FRAME_BYTES_LIMIT, so it fits a u32.
    buf[..FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(Bytes::from(buf))
}

/// The length prefix of a raw frame of `payload_len` bytes, to write before the payload
/// without copying it.
pub fn raw_frame_header(
    payload_len: usize,
    frame_bytes_max: u32,
) -> Result<[u8; FRAME_HEADER_BYTES], CodecError> {
    check_len(payload_len as u64, frame_bytes_max)?;
    // check_len bounded the length by FRAME_BYTES_LIMIT, so it fits a u32.
    Ok((payload_len as u32).to_le_bytes())
}

/// Frames opaque bytes.
pub fn encode_raw_frame(payload: &[u8], frame_bytes_max: u32) -> Result<Bytes, CodecError> {
    check_len(payload.len() as u64, frame_bytes_max)?;
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload.len());
    buf.put_u32_le(payload.len() as u32);
    buf.put_slice(payload);
    Ok(buf.freeze())
}

/// Decodes one typed payload; the whole slice must be consumed.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(payload, bincode_config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != payload.len() {
        let trailing = payload.len() - used;
        return Err(CodecError::Malformed(format!("{trailing} trailing bytes")));
    }
    Ok(value)
}

/// Reads the next frame's length prefix and checks it against `frame_bytes_max`.
/// `Ok(None)`: the stream ended cleanly between frames.
pub async fn read_frame_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: u32,
) -> Result<Option<u32>, CodecError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if !read_exact_or_end(reader, &mut header).await? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header);
    check_len(u64::from(len), frame_bytes_max)?;
    Ok(Some(len))
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on a clean end before the first byte, and
/// `Truncated` on an end inside them.
pub async fn read_exact_or_end<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<bool, CodecError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(CodecError::Truncated)
            };
        }
        filled += n;
    }
    Ok(true)
}

/// Reads and drops `len` bytes through a small scratch buffer (a payload refused unread).
pub async fn skip_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut len: usize,
) -> Result<(), CodecError> {
    let mut scratch = [0u8; SKIP_CHUNK_BYTES];
    while len > 0 {
        let want = len.min(SKIP_CHUNK_BYTES);
        let n = reader.read(&mut scratch[..want]).await?;
        if n == 0 {
            return Err(CodecError::Truncated);
        }
        len -= n;
    }
    Ok(())
}

/// Appends exactly `len` bytes from `reader` to `buffer`, growing it only as bytes arrive.
///
/// Bound (what a peer can make us hold): while `received` of the `len` bytes have arrived,
/// the capacity added to `buffer` is at most `min(len, received + max(FRAME_READ_CHUNK_BYTES,
/// received))`: the bytes that arrived, plus one chunk or as much again, never more than the
/// announced length. `Vec::reserve_exact` keeps that exact (`BytesMut::reserve` and
/// `Vec::reserve` may double the whole allocation, overshooting the frame's end).
///
/// ```text
/// announced 5 MiB, sent 10 B:  capacity 64 KiB         (one chunk, then waits for bytes)
/// announced 5 MiB, sent 5 MiB: 64K 128K 256K .. 4M 5M  (7 reallocations, ends at exactly 5 MiB)
/// ```
///
/// On error `buffer` keeps what arrived (the caller drops it).
pub async fn read_payload_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
    buffer: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = buffer.len();
    let end = start.checked_add(len).ok_or(CodecError::Oversize {
        len: len as u64,
        max: FRAME_BYTES_LIMIT,
    })?;
    while buffer.len() < end {
        if buffer.len() == buffer.capacity() {
            let received = buffer.len() - start;
            let step = FRAME_READ_CHUNK_BYTES.max(received).min(end - buffer.len());
            buffer.reserve_exact(step);
        }
        // The spare capacity ends at or before the frame's end (the capacity grew to at most
        // `end` above, or was larger already): cap the read so it never takes bytes of the next
        // frame.
        let room = (end - buffer.len()).min(buffer.capacity() - buffer.len());
        let n = reader.read_buf(&mut (&mut *buffer).limit(room)).await?;
        if n == 0 {
            return Err(CodecError::Truncated);
        }
    }
    Ok(())
}

/// Reads `len` payload bytes into a buffer that grows as they arrive (`read_payload_into`).
pub async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: u32,
) -> Result<Bytes, CodecError> {
    let mut payload = Vec::new();
    read_payload_into(reader, len as usize, &mut payload).await?;
    Ok(Bytes::from(payload))
}

/// Reads the next frame's payload. `Ok(None)`: the stream ended cleanly between frames.
pub async fn read_raw_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: u32,
) -> Result<Option<Bytes>, CodecError> {
    match read_frame_header(reader, frame_bytes_max).await? {
        Some(len) => read_payload(reader, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads and decodes the next typed frame. `Ok(None)`: clean end of stream.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: u32,
) -> Result<Option<T>, CodecError> {
    match read_raw_frame(reader, frame_bytes_max).await? {
        Some(payload) => decode_payload(&payload).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvraft::message::{Message, MessageBody};

    fn message() -> Message {
        let body = MessageBody::Heartbeat {
            commit: 7,
            read_round: 3,
        };
        Message {
            from: 1,
            to: 2,
            term: 5,
            body,
        }
    }

    #[tokio::test]
    async fn codec_round_trips_many_frames_then_clean_end() {
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend_from_slice(&encode_frame(&message(), 1024).unwrap());
        }
        let mut reader = &wire[..];
        for _ in 0..3 {
            let got: Option<Message> = read_frame(&mut reader, 1024).await.unwrap();
            assert_eq!(got, Some(message()));
        }
        let end: Option<Message> = read_frame(&mut reader, 1024).await.unwrap();
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn codec_refuses_oversize_length_before_reading_payload() {
        // Announces 4 GiB - 1 and carries nothing: must fail on the length alone.
        let wire = u32::MAX.to_le_bytes();
        let err = read_raw_frame(&mut &wire[..], 1024).await.unwrap_err();
        assert!(
            matches!(err, CodecError::Oversize { len, max: 1024 } if len == u64::from(u32::MAX))
        );
        let err = encode_raw_frame(&[0u8; 2048], 1024).unwrap_err();
        assert!(matches!(err, CodecError::Oversize { len: 2048, .. }));
    }

    #[tokio::test]
    async fn codec_reports_malformed_truncated_and_trailing() {
        let garbage = encode_raw_frame(&[0xff; 16], 1024).unwrap();
        let err = read_frame::<Message, _>(&mut &garbage[..], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)));

        let frame = encode_frame(&message(), 1024).unwrap();
        let cut = &frame[..frame.len() - 1];
        let err = read_frame::<Message, _>(&mut &cut[..], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::Truncated));
        let err = read_frame::<Message, _>(&mut &frame[..2], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::Truncated));

        let mut payload = frame[FRAME_HEADER_BYTES..].to_vec();
        payload.push(0);
        let err = decode_payload::<Message>(&payload).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)));
    }

    /// A reader that hands out at most `piece` bytes per read, like a network stream.
    struct Trickle<'a> {
        data: &'a [u8],
        piece: usize,
    }

    impl tokio::io::AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.piece.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Regression (issue 10, bug 4): the old codec allocated the announced length up front.
    #[tokio::test]
    async fn codec_buffer_grows_only_with_bytes_received() {
        const ANNOUNCED: usize = 5 << 20;
        let bytes = vec![7u8; 3 << 20];
        for sent in [
            0,
            10,
            1000,
            64 << 10,
            (64 << 10) + 1,
            200_000,
            (1 << 20) + 3,
            3 << 20,
        ] {
            let mut reader = Trickle {
                data: &bytes[..sent],
                piece: 1500,
            };
            let mut buffer = Vec::new();
            let err = read_payload_into(&mut reader, ANNOUNCED, &mut buffer)
                .await
                .unwrap_err();
            assert!(matches!(err, CodecError::Truncated), "{err}");
            assert_eq!(buffer.len(), sent);
            let bound = sent + FRAME_READ_CHUNK_BYTES.max(sent);
            assert!(
                buffer.capacity() <= bound,
                "sent {sent}: capacity {} > {bound}",
                buffer.capacity()
            );
            if sent <= FRAME_READ_CHUNK_BYTES {
                assert!(buffer.capacity() <= sent + FRAME_READ_CHUNK_BYTES);
            }
        }
    }

    #[tokio::test]
    async fn codec_large_frame_in_pieces_ends_at_exact_capacity_and_keeps_next_frame() {
        let payload: Vec<u8> = (0..(5u32 << 20) + 17).map(|i| i as u8).collect();
        let mut wire = encode_raw_frame(&payload, 8 << 20).unwrap().to_vec();
        wire.extend_from_slice(&encode_raw_frame(b"next", 8 << 20).unwrap());
        let mut reader = Trickle {
            data: &wire,
            piece: 70_000,
        };
        let len = read_frame_header(&mut reader, 8 << 20)
            .await
            .unwrap()
            .unwrap();
        let mut buffer = Vec::new();
        read_payload_into(&mut reader, len as usize, &mut buffer)
            .await
            .unwrap();
        assert_eq!(buffer, payload);
        assert_eq!(
            buffer.capacity(),
            payload.len(),
            "never past the frame's end"
        );
        let next = read_raw_frame(&mut reader, 1024).await.unwrap();
        assert_eq!(next.as_deref(), Some(&b"next"[..]));
        assert_eq!(read_raw_frame(&mut reader, 1024).await.unwrap(), None);
    }

    #[test]
    fn codec_decode_limit_stops_inner_length_claims() {
        // A Vec<u8> announcing ~2^40 elements inside a 9-byte payload.
        let mut payload = vec![253u8];
        payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode_payload::<Vec<u8>>(&payload).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)));
    }
}
