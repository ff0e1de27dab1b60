//! Data exchange between subtasks: in memory inside a TaskManager, over TCP between
//! TaskManagers, with credit-based flow control on every channel.
//!
//! A channel is one upstream subtask feeding one downstream subtask. The receiver owns a
//! buffer of `capacity` messages per channel and grants that many credits up front; the
//! sender spends one credit per message and blocks (backpressure) when it has none; the
//! receiver grants a credit back each time its subtask takes a message out of the buffer.
//! So a slow consumer stops its producers after at most `capacity` messages per channel,
//! and a TCP connection never carries more than the receiver can hold.
//!
//! Subtasks are threads and block; the network side runs on tokio. Both meet at
//! [`Credits`] (a counter with a condition variable) and at the gate's queue.

pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sluice_runtime::{Envelope, Message, RuntimeError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::frame::{read_frame, write_frame};
pub use wire::{ChannelKey, Hello};

/// Messages buffered per channel at the receiver (the credits a sender starts with).
pub const DEFAULT_CHANNEL_CAPACITY: u32 = 16;
/// How long a data connection may wait for its receiving subtask to be deployed.
const REGISTRATION_WAIT: Duration = Duration::from_secs(15);

/// Time senders of this process spent blocked without credit (backpressure), in nanoseconds.
pub static BACKPRESSURED_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The sender's view of a channel's credits.
#[derive(Debug, Default)]
pub struct Credits {
    state: Mutex<(u32, Option<String>)>,
    cv: Condvar,
}

impl Credits {
    pub fn new(initial: u32) -> Arc<Self> {
        Arc::new(Credits {
            state: Mutex::new((initial, None)),
            cv: Condvar::new(),
        })
    }

    /// Takes one credit, blocking until there is one; fails when the channel closed or
    /// `cancel` is set.
    pub fn acquire(&self, cancel: &AtomicBool) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let result = loop {
            if let Some(reason) = &s.1 {
                break Err(anyhow!("{reason}"));
            }
            if s.0 > 0 {
                s.0 -= 1;
                break Ok(());
            }
            if cancel.load(Ordering::Relaxed) {
                break Err(anyhow!("cancelled while waiting for credit"));
            }
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        BACKPRESSURED_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }

    pub fn grant(&self, n: u32) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 = s.0.saturating_add(n);
        self.cv.notify_all();
    }

    pub fn close(&self, reason: String) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.1.get_or_insert(reason);
        self.cv.notify_all();
    }

    pub fn available(&self) -> u32 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

/// What arrives at a gate: a message on a channel, or the failure of a channel.
type GateItem = (usize, Result<Message, String>);

/// How a consumed message's credit goes back to its sender.
enum CreditReturn {
    Local(Arc<Credits>),
    Remote(UnboundedSender<u32>),
}

/// The input of one subtask: `n` channels merged into one queue, in arrival order per
/// channel.
pub struct NetInputGate {
    rx: Receiver<GateItem>,
    returns: Vec<CreditReturn>,
    channels: usize,
}

impl NetInputGate {
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The next message, `Ok(None)` on timeout; a failed channel is an error.
    pub fn next_message(&mut self, timeout: Duration) -> Result<Option<Envelope>> {
        match self.rx.recv_timeout(timeout) {
            Ok((channel, Ok(message))) => {
                match self.returns.get(channel) {
                    Some(CreditReturn::Local(c)) => c.grant(1),
                    // A closed connection fails the channel on its own; nothing to return to.
                    Some(CreditReturn::Remote(tx)) => {
                        let _ = tx.send(1);
                    }
                    None => bail!("message on unknown channel {channel}"),
                }
                Ok(Some(Envelope { channel, message }))
            }
            Ok((channel, Err(e))) => Err(anyhow!("input channel {channel} failed: {e}")),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => bail!("every input channel is gone"),
        }
    }
}

/// One output channel of a subtask.
pub struct NetOutput {
    kind: OutputKind,
    cancel: Arc<AtomicBool>,
}

enum OutputKind {
    Local {
        credits: Arc<Credits>,
        tx: Sender<GateItem>,
        channel: usize,
    },
    Remote {
        credits: Arc<Credits>,
        tx: UnboundedSender<Vec<u8>>,
    },
}

impl NetOutput {
    /// Sends one message, blocking while the receiver has granted no credit; fails once
    /// the cancel flag given at wiring time is set.
    pub fn send_message(&self, message: Message) -> Result<()> {
        let cancel = &*self.cancel;
        match &self.kind {
            OutputKind::Local {
                credits,
                tx,
                channel,
            } => {
                credits.acquire(cancel)?;
                tx.send((*channel, Ok(message)))
                    .map_err(|_| anyhow!("the downstream subtask stopped"))
            }
            OutputKind::Remote { credits, tx } => {
                let frame = wire::encode(&message)?;
                credits.acquire(cancel)?;
                tx.send(frame)
                    .map_err(|_| anyhow!("the data connection to the downstream subtask closed"))
            }
        }
    }

    pub fn credits(&self) -> &Arc<Credits> {
        match &self.kind {
            OutputKind::Local { credits, .. } | OutputKind::Remote { credits, .. } => credits,
        }
    }
}

impl sluice_runtime::task::InputGate for NetInputGate {
    fn recv_timeout(&mut self, timeout: Duration) -> sluice_runtime::Result<Option<Envelope>> {
        self.next_message(timeout)
            .map_err(|e| RuntimeError::Task(format!("{e:#}")))
    }
}

impl sluice_runtime::task::OutputChannel for NetOutput {
    fn send(&mut self, message: Message) -> sluice_runtime::Result<()> {
        self.send_message(message)
            .map_err(|e| RuntimeError::Task(format!("{e:#}")))
    }
}

/// A gate's channels that other TaskManagers will connect to, waiting for their connection.
struct RemoteSlot {
    tx: Sender<GateItem>,
    credit_rx: UnboundedReceiver<u32>,
    capacity: u32,
}

/// One TaskManager's data endpoint: accepts connections for the channels of its subtasks.
#[derive(Clone)]
pub struct DataServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    addr: SocketAddr,
    token: Option<String>,
    slots: Mutex<HashMap<ChannelKey, RemoteSlot>>,
    registered: tokio::sync::Notify,
}

/// Where each input channel of a gate comes from.
pub enum InputSource {
    /// Another subtask in this process: its output is returned to wire it.
    Local,
    /// A subtask on another TaskManager, which connects here.
    Remote(ChannelKey),
}

impl DataServer {
    /// Binds and starts accepting.
    pub async fn bind(addr: SocketAddr, token: Option<String>) -> Result<DataServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the data address {addr}"))?;
        let inner = Arc::new(ServerInner {
            addr: listener.local_addr()?,
            token,
            slots: Mutex::new(HashMap::new()),
            registered: tokio::sync::Notify::new(),
        });
        let srv = DataServer { inner };
        let s = srv.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((sock, peer)) => {
                        let s = s.clone();
                        tokio::spawn(async move {
                            if let Err(e) = s.serve(sock).await {
                                tracing::warn!("data connection from {peer}: {e:#}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::error!("accepting data connections: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(srv)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Builds a gate over `sources`; returns it with the local outputs (by channel index)
    /// that the upstream subtasks of this process send into.
    pub fn gate(
        &self,
        sources: Vec<InputSource>,
        capacity: u32,
        cancel: &Arc<AtomicBool>,
    ) -> (NetInputGate, HashMap<usize, NetOutput>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut returns = Vec::new();
        let mut locals = HashMap::new();
        let channels = sources.len();
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (ch, src) in sources.into_iter().enumerate() {
            match src {
                InputSource::Local => {
                    let credits = Credits::new(capacity);
                    returns.push(CreditReturn::Local(credits.clone()));
                    locals.insert(
                        ch,
                        NetOutput {
                            kind: OutputKind::Local {
                                credits,
                                tx: tx.clone(),
                                channel: ch,
                            },
                            cancel: cancel.clone(),
                        },
                    );
                }
                InputSource::Remote(key) => {
                    let (ctx, crx) = unbounded_channel();
                    returns.push(CreditReturn::Remote(ctx));
                    slots.insert(
                        key,
                        RemoteSlot {
                            tx: tx.clone(),
                            credit_rx: crx,
                            capacity,
                        },
                    );
                }
            }
        }
        drop(slots);
        self.inner.registered.notify_waiters();
        (
            NetInputGate {
                rx,
                returns,
                channels,
            },
            locals,
        )
    }

    /// Forgets the channels of deployments before `attempt` that never got a connection.
    pub fn drop_attempts_before(&self, attempt: u64) {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| k.attempt >= attempt);
    }

    async fn take_slot(&self, key: &ChannelKey) -> Result<RemoteSlot> {
        let deadline = Instant::now() + REGISTRATION_WAIT;
        loop {
            let notified = self.inner.registered.notified();
            if let Some(s) = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key)
            {
                return Ok(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no subtask here expects channel {key:?}");
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    async fn serve(&self, sock: TcpStream) -> Result<()> {
        sock.set_nodelay(true)?;
        let (mut r, mut w) = sock.into_split();
        let hello: Hello = match read_frame(&mut r).await? {
            Some(b) => serde_json::from_slice(&b).context("data connection hello")?,
            None => return Ok(()),
        };
        if let Some(t) = &self.inner.token
            && !crate::auth::token_matches(t, hello.token.as_deref().unwrap_or(""))
        {
            bail!("data connection with a wrong token");
        }
        let RemoteSlot {
            tx,
            mut credit_rx,
            capacity,
        } = self.take_slot(&hello.key).await?;
        let channel = hello.key.channel;
        // Credits go back on their own task so a full gate never stalls their return.
        let writer = tokio::spawn(async move {
            let mut pending = capacity;
            loop {
                while let Ok(n) = credit_rx.try_recv() {
                    pending += n;
                }
                if pending > 0 {
                    write_frame(&mut w, &pending.to_be_bytes()).await?;
                    w.flush().await?;
                    pending = 0;
                }
                match credit_rx.recv().await {
                    Some(n) => pending += n,
                    None => return anyhow::Ok(()),
                }
            }
        });
        let result = async {
            loop {
                let Some(frame) = read_frame(&mut r).await? else {
                    bail!("the upstream TaskManager closed the connection before the end");
                };
                let msg = wire::decode(&frame)?;
                let end = matches!(msg, Message::End);
                if tx.send((channel, Ok(msg))).is_err() {
                    // The subtask is gone (cancelled): stop reading.
                    return Ok(());
                }
                if end {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = &result {
            let _ = tx.send((channel, Err(format!("{e:#}"))));
        }
        writer.abort();
        result
    }
}

/// Opens the sending side of a remote channel: connects (retrying until `connect_timeout`),
/// then writes frames and takes credits in the background.
pub fn connect_remote(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    key: ChannelKey,
    token: Option<String>,
    connect_timeout: Duration,
    cancel: &Arc<AtomicBool>,
) -> NetOutput {
    let credits = Credits::new(0);
    let (tx, mut rx) = unbounded_channel::<Vec<u8>>();
    let c = credits.clone();
    rt.spawn(async move {
        let res: Result<()> = async {
            let deadline = Instant::now() + connect_timeout;
            let sock = loop {
                match TcpStream::connect(addr).await {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("connecting to {addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
                }
            };
            sock.set_nodelay(true)?;
            let (mut r, mut w) = sock.into_split();
            write_frame(&mut w, &serde_json::to_vec(&Hello { key, token })?).await?;
            w.flush().await?;
            let credits = c.clone();
            let reader = tokio::spawn(async move {
                while let Some(f) = read_frame(&mut r).await? {
                    let n: [u8; 4] = f
                        .as_slice()
                        .try_into()
                        .map_err(|_| anyhow!("credit frame of {} bytes", f.len()))?;
                    credits.grant(u32::from_be_bytes(n));
                }
                // The receiver hung up: a sender waiting for credit must not wait forever.
                credits.close(format!(
                    "the receiving TaskManager at {addr} closed the data connection"
                ));
                anyhow::Ok(())
            });
            while let Some(frame) = rx.recv().await {
                write_frame(&mut w, &frame).await?;
                // Flush when nothing else is queued: batches of frames share a syscall.
                if rx.is_empty() {
                    w.flush().await?;
                }
            }
            w.flush().await?;
            w.shutdown().await.ok();
            reader.abort();
            Ok(())
        }
        .await;
        if let Err(e) = res {
            c.close(format!("data connection to {addr}: {e:#}"));
        }
    });
    NetOutput {
        kind: OutputKind::Remote { credits, tx },
        cancel: cancel.clone(),
    }
}

#[cfg(test)]
mod tests;
