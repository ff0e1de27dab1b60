//! Length-prefixed frames on a byte stream: a 4-byte big-endian length, then the payload.
//! Both the control RPC (JSON payloads) and the data exchange use them.

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Larger frames are refused: a corrupt length must not make us allocate gigabytes.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        bail!("frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit");
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_FRAME_BYTES {
        bail!(
            "frame of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
            payload.len()
        );
    }
    w.write_all(&(payload.len() as u32).to_be_bytes()).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Reads one JSON frame.
pub async fn read_json<R, T>(r: &mut R) -> Result<Option<T>>
where
    R: AsyncReadExt + Unpin,
    T: serde::de::DeserializeOwned,
{
    match read_frame(r).await? {
        None => Ok(None),
        Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
    }
}

pub async fn write_json<W, T>(w: &mut W, msg: &T) -> Result<()>
where
    W: AsyncWriteExt + Unpin,
    T: serde::Serialize,
{
    write_frame(w, &serde_json::to_vec(msg)?).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_lengths_fail() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello").await.expect("write");
        write_frame(&mut a, b"").await.expect("write empty");
        assert_eq!(
            read_frame(&mut b).await.expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(read_frame(&mut b).await.expect("read"), Some(Vec::new()));
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        assert!(read_frame(&mut b).await.is_err());
        drop(a);
        let (a2, mut b2) = tokio::io::duplex(64);
        drop(a2);
        assert_eq!(read_frame(&mut b2).await.expect("eof"), None);
    }
}
