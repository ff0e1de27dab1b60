//! Encoding of the data exchange's frames. Record batches travel in the Arrow IPC stream
//! format; watermarks, barriers and end-of-input are small control frames; credits flow
//! back from the receiver.

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};
use sluice_runtime::Message;

const DATA: u8 = 0;
const WATERMARK: u8 = 1;
const BARRIER: u8 = 2;
const END: u8 = 3;

/// Identifies one channel: upstream subtask `channel` of the input of `subtask` of `vertex`,
/// in deployment `attempt` (a redeploy never reads a stale attempt's connection).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelKey {
    pub attempt: u64,
    pub vertex: usize,
    pub subtask: usize,
    pub channel: usize,
}

/// First frame on a data connection (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub key: ChannelKey,
    #[serde(default)]
    pub token: Option<String>,
}

pub fn encode(msg: &Message) -> Result<Vec<u8>> {
    Ok(match msg {
        Message::Data(batch) => {
            let mut out = vec![DATA];
            encode_batch(batch, &mut out)?;
            out
        }
        Message::Watermark(w) => {
            let mut out = vec![WATERMARK];
            out.extend_from_slice(&w.to_be_bytes());
            out
        }
        Message::Barrier(b) => {
            let mut out = vec![BARRIER];
            serde_json::to_writer(&mut out, b)?;
            out
        }
        Message::End => vec![END],
    })
}

pub fn decode(frame: &[u8]) -> Result<Message> {
    let (&tag, body) = frame.split_first().context("empty data frame")?;
    let num = |b: &[u8]| -> Result<[u8; 8]> {
        b.try_into()
            .map_err(|_| anyhow::anyhow!("control frame of {} bytes, expected 8", b.len()))
    };
    Ok(match tag {
        DATA => Message::Data(decode_batch(body)?),
        WATERMARK => Message::Watermark(i64::from_be_bytes(num(body)?)),
        BARRIER => Message::Barrier(serde_json::from_slice(body).context("barrier frame")?),
        END => Message::End,
        t => bail!("unknown data frame tag {t}"),
    })
}

/// One batch as a complete IPC stream (schema, batch, end marker): each frame decodes on its
/// own, so no reader state has to survive across frames. The schema costs a few hundred
/// bytes per batch, small next to batches of thousands of rows.
fn encode_batch(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
    let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut *out, &batch.schema())
        .context("arrow ipc writer")?;
    w.write(batch).context("arrow ipc write")?;
    w.finish().context("arrow ipc finish")?;
    Ok(())
}

fn decode_batch(body: &[u8]) -> Result<RecordBatch> {
    let mut r = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .context("arrow ipc reader")?;
    match r.next() {
        Some(b) => b.context("arrow ipc batch"),
        None => bail!("data frame without a record batch"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use sluice_runtime::message::Barrier;

    #[test]
    fn messages_round_trip() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .expect("batch");
        match decode(&encode(&Message::Data(batch.clone())).expect("enc")).expect("dec") {
            Message::Data(b) => assert_eq!(b, batch),
            m => panic!("decoded {m:?}"),
        }
        assert!(matches!(
            decode(&encode(&Message::Watermark(-5)).expect("enc")).expect("dec"),
            Message::Watermark(-5)
        ));
        let b = Barrier {
            checkpoint_id: 7,
            savepoint: Some("sp-1".into()),
        };
        match decode(&encode(&Message::Barrier(b.clone())).expect("enc")).expect("dec") {
            Message::Barrier(got) => assert_eq!(got, b),
            m => panic!("decoded {m:?}"),
        }
        assert!(matches!(
            decode(&encode(&Message::End).expect("enc")).expect("dec"),
            Message::End
        ));
        assert!(decode(&[9]).is_err());
        assert!(decode(&[WATERMARK, 1]).is_err());
    }
}
