//! Frames on async streams, over the contract's synchronous codec.

use agenix_proto::wire::{FrameError, decode_body, encode_frame, frame_len};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes one frame; nothing is written when the message is over the frame cap.
pub async fn write_frame<T: Serialize>(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &T,
) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame and parses it strictly (duplicate keys and unknown fields rejected).
pub async fn read_frame<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header).await?;
    let len = frame_len(header)?;
    // Grown as bytes arrive: a peer that announces a large frame and sends nothing holds
    // no memory for it.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    decode_body(&body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

    use agenix_proto::wire::{ErrorCode, MAX_FRAME, Request, Response};

    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_frames_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Stats {}).await.unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, Request::Stats {});
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame::<Request>(&mut huge.as_slice()).await,
            Err(FrameError::TooLarge(_))
        ));
        let mut truncated = 100u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(b"{\"type\"");
        assert!(matches!(
            read_frame::<Request>(&mut truncated.as_slice()).await,
            Err(FrameError::Io(_))
        ));
        let mut over = Vec::new();
        let big = Response::Error { code: ErrorCode::Internal, message: "x".repeat(MAX_FRAME) };
        assert!(matches!(write_frame(&mut over, &big).await, Err(FrameError::TooLarge(_))));
        assert!(over.is_empty(), "nothing of an oversized frame is written");
    }
}
