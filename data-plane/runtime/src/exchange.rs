//! Sending a subtask's output to the next vertex's subtasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::DataType;
use arrow_select::take::take_record_batch;
use sluice_sql::Exchange;
use sluice_state::{key_group_of, subtask_for_key_group};

use crate::error::{Context, Result};
use crate::keys::KeyEncoder;
use crate::message::{Barrier, Message};
use crate::operator::Collector;
use crate::task::OutputChannel;

enum Partitioner {
    Forward,
    Hash {
        keys: KeyEncoder,
        max_parallelism: u16,
    },
    Rebalance {
        next: usize,
    },
    Broadcast,
}

/// The output of a subtask whose vertex ends in an exchange: one
/// [`OutputChannel`] per subtask of the next vertex, whatever the transport.
pub struct ExchangeOutput {
    channel: usize,
    senders: Vec<Box<dyn OutputChannel>>,
    partitioner: Partitioner,
    records_out: Arc<AtomicU64>,
}

impl ExchangeOutput {
    pub fn new(
        exchange: &Exchange,
        input_types: &[DataType],
        channel: usize,
        senders: Vec<Box<dyn OutputChannel>>,
        max_parallelism: u16,
        records_out: Arc<AtomicU64>,
    ) -> Result<Self> {
        let partitioner = match exchange {
            Exchange::Forward => Partitioner::Forward,
            Exchange::Hash { keys } => Partitioner::Hash {
                keys: KeyEncoder::new(keys.clone(), input_types)?,
                max_parallelism,
            },
            Exchange::Rebalance => Partitioner::Rebalance { next: channel },
            Exchange::Broadcast => Partitioner::Broadcast,
        };
        Ok(ExchangeOutput {
            channel,
            senders,
            partitioner,
            records_out,
        })
    }

    fn send(&mut self, target: usize, message: Message) -> Result<()> {
        self.senders[target].send(message)
    }

    fn send_all(&mut self, message: Message) -> Result<()> {
        for t in 0..self.senders.len() {
            self.send(t, message.clone())?;
        }
        Ok(())
    }

    pub fn end(&mut self) -> Result<()> {
        self.send_all(Message::End)
    }

    pub fn barrier(&mut self, barrier: &Barrier) -> Result<()> {
        self.send_all(Message::Barrier(barrier.clone()))
    }
}

impl Collector for ExchangeOutput {
    fn collect(&mut self, batch: RecordBatch) -> Result<()> {
        let n = self.senders.len();
        self.records_out
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        match &mut self.partitioner {
            Partitioner::Forward => {
                let t = self.channel % n;
                self.send(t, Message::Data(batch))
            }
            Partitioner::Rebalance { next } => {
                let t = *next % n;
                *next = next.wrapping_add(1);
                self.send(t, Message::Data(batch))
            }
            Partitioner::Broadcast => self.send_all(Message::Data(batch)),
            Partitioner::Hash {
                keys,
                max_parallelism,
            } => {
                if n == 1 {
                    return self.send(0, Message::Data(batch));
                }
                let k = keys.encode(&batch)?;
                let mut idx: Vec<Vec<u32>> = vec![Vec::new(); n];
                let (mp, p) = (*max_parallelism, n as u16);
                for r in 0..batch.num_rows() {
                    let kg = key_group_of(k.key(r), mp);
                    idx[subtask_for_key_group(kg, mp, p) as usize].push(r as u32);
                }
                for (t, rows) in idx.into_iter().enumerate() {
                    if rows.is_empty() {
                        continue;
                    }
                    let part = if rows.len() == batch.num_rows() {
                        batch.clone()
                    } else {
                        take_record_batch(&batch, &UInt32Array::from(rows))
                            .ctx(|| "hash exchange".into())?
                    };
                    self.send(t, Message::Data(part))?;
                }
                Ok(())
            }
        }
    }

    fn watermark(&mut self, watermark: i64) -> Result<()> {
        self.send_all(Message::Watermark(watermark))
    }
}
