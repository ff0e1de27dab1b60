//! The JobManager's end of the control RPC: one connection per TaskManager.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::unbounded_channel;

use super::state::{Jm, TaskManager, now_ms};
use crate::frame::{read_json, write_json};
use crate::rpc::{ToJm, ToTm};

pub async fn accept(jm: Arc<Jm>, listener: TcpListener) {
    loop {
        tokio::select! {
            _ = jm.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let jm = jm.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(jm, sock).await {
                            tracing::warn!("taskmanager connection from {peer}: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    tracing::error!("accepting RPC connections: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve(jm: Arc<Jm>, sock: TcpStream) -> Result<()> {
    sock.set_nodelay(true)?;
    let (mut r, mut w) = sock.into_split();
    let first: Option<ToJm> =
        tokio::time::timeout(Duration::from_secs(5), read_json(&mut r)).await??;
    let Some(ToJm::Register {
        tm_id,
        slots,
        data_addr,
        pid,
        token,
    }) = first
    else {
        bail!("the first message was not a registration");
    };
    if let Some(expected) = &jm.token
        && !crate::auth::token_matches(expected, token.as_deref().unwrap_or(""))
    {
        write_json(
            &mut w,
            &ToTm::Refused {
                reason: "wrong or missing token".into(),
            },
        )
        .await?;
        bail!("taskmanager {tm_id} presented a wrong token");
    }
    let (tx, mut rx) = unbounded_channel::<ToTm>();
    tx.send(ToTm::Registered {
        generation: jm.args.generation,
        heartbeat_interval_ms: jm.args.heartbeat_interval_ms,
    })?;
    let conn = {
        let mut st = jm.lock();
        let conn = st.next_conn;
        st.next_conn += 1;
        if st.tms.contains_key(&tm_id) {
            // The same id again: the old process is gone (or restarted); its slots with it.
            tracing::warn!("taskmanager {tm_id} registered again: the old registration is lost");
            st.tms.remove(&tm_id);
        }
        st.tms.insert(
            tm_id.clone(),
            TaskManager {
                slots,
                data_addr,
                pid,
                tx: tx.clone(),
                last_seen: Instant::now(),
                conn,
                registered_at_ms: now_ms(),
            },
        );
        conn
    };
    tracing::info!(
        "taskmanager {tm_id} (pid {pid}) registered with {slots} slots, data on {data_addr}"
    );
    jm.wake.notify_one();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            write_json(&mut w, &m).await?;
        }
        anyhow::Ok(())
    });
    let beat = {
        let tx = tx.clone();
        let every = Duration::from_millis(jm.args.heartbeat_interval_ms.max(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if tx.send(ToTm::Heartbeat).is_err() {
                    return;
                }
            }
        })
    };
    let res: Result<()> = async {
        loop {
            let msg: Option<ToJm> = tokio::select! {
                _ = jm.shutdown.cancelled() => return Ok(()),
                m = read_json(&mut r) => m?,
            };
            let Some(msg) = msg else {
                return Ok(());
            };
            let mut st = jm.lock();
            match st.tms.get_mut(&tm_id) {
                Some(t) if t.conn == conn => t.last_seen = Instant::now(),
                // Declared lost meanwhile (heartbeat timeout): this connection is stale.
                _ => bail!("taskmanager {tm_id} is no longer registered on this connection"),
            }
            match msg {
                ToJm::Heartbeat => {}
                ToJm::Metrics { attempt, samples } => {
                    if st.metrics_attempt == Some(attempt) {
                        st.samples.insert(tm_id.clone(), samples);
                        st.on_metrics();
                    }
                }
                ToJm::Event { subtask, event } => {
                    drop(st);
                    let _ = jm.inbox.send(super::Input::Event {
                        tm: tm_id.clone(),
                        subtask,
                        event,
                    });
                }
                ToJm::Register { .. } => bail!("registered twice on one connection"),
            }
        }
    }
    .await;
    beat.abort();
    writer.abort();
    {
        let mut st = jm.lock();
        if st.tms.get(&tm_id).is_some_and(|t| t.conn == conn) {
            st.tms.remove(&tm_id);
            st.samples.remove(&tm_id);
            tracing::warn!("taskmanager {tm_id} lost: its connection closed");
            st.note_lost(&tm_id, "its connection closed");
        }
    }
    jm.wake.notify_one();
    res
}
