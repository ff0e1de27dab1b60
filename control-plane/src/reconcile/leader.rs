//! Leadership of the reconciler: an advisory lock held by a dedicated session, and a
//! leader epoch that fences every write.
//!
//! Election takes `pg_try_advisory_lock(leader_lock_key)` on its own connection and, on that
//! session, increments `reconciler_leader.epoch`: the new epoch is this term's. Every write
//! of the reconciler runs in a transaction opened by [`Reconciler::fenced`], whose first
//! statement share-locks that row and compares the epoch with the writer's. A leader that
//! lost its session (killed by PostgreSQL, partitioned, paused past a successor's election)
//! and has not noticed yet cannot write: the successor's increment waits for the deposed
//! leader's in-flight fenced transactions to commit, and every later one sees the new epoch
//! and is refused with [`Deposed`]; the deposed leader then ends its pass and steps down.
//! Rows written under a term carry its epoch (`leader_epoch` of `application_status`,
//! `events` and `runs`, filled from the transaction's `sluice.leader_epoch`), so it can be
//! seen who wrote what.
//!
//! The provisioner acts under the same term: it is activated at the epoch when this process
//! is elected (re-reading what a predecessor left and re-adopting what runs) and deactivated
//! before the lock is released.

use anyhow::{Context as _, Result};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::Reconciler;

/// A write transaction of the reconciler, fenced by the leader epoch.
pub type FencedTx = sqlx::Transaction<'static, sqlx::Postgres>;

/// The current term of this process: its epoch, and a token cancelled when it learns it
/// was deposed.
pub(super) struct Term {
    pub(super) epoch: i64,
    pub(super) deposed: CancellationToken,
}

/// Leadership held by this process: the session that holds the advisory lock (closing it
/// releases the lock) and the epoch it was elected at.
pub struct Leadership {
    conn: PgConnection,
    epoch: i64,
}

impl Leadership {
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// A write refused because a newer leader was elected.
#[derive(Debug, thiserror::Error)]
#[error("deposed: this reconciler led at epoch {mine}, the current leader epoch is {current}")]
pub struct Deposed {
    pub mine: i64,
    pub current: i64,
}

fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{host}:{}", std::process::id())
}

impl Reconciler {
    /// Takes the leader lock if it is free: increments the epoch, activates the provisioner
    /// at it and starts a term. `None` when another session holds the lock.
    pub async fn elect(&self) -> Result<Option<Leadership>> {
        let mut conn = PgConnection::connect(&self.db_url)
            .await
            .context("connect the leader-lock session")?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.cfg.leader_lock_key)
            .fetch_one(&mut conn)
            .await
            .context("try the leader lock")?;
        if !got {
            conn.close().await.ok();
            return Ok(None);
        }
        // On the lock's own session: while it holds the lock nobody else increments.
        let epoch: i64 = match sqlx::query_scalar(
            "INSERT INTO reconciler_leader AS l (lock_key, epoch, holder) VALUES ($1, 1, $2)
             ON CONFLICT (lock_key) DO UPDATE
             SET epoch = l.epoch + 1, holder = EXCLUDED.holder, elected_at = now(), passes = 0,
                 checked_at = NULL
             RETURNING epoch",
        )
        .bind(self.cfg.leader_lock_key)
        .bind(holder())
        .fetch_one(&mut conn)
        .await
        {
            Ok(e) => e,
            Err(e) => {
                conn.close().await.ok();
                return Err(anyhow::Error::new(e).context("increment the leader epoch"));
            }
        };
        if let Some(p) = &self.engine.provisioner
            && let Err(e) = p.activate(epoch as u64).await
        {
            conn.close().await.ok();
            return Err(anyhow::Error::new(e)
                .context(format!("activate the provisioner at leader epoch {epoch}")));
        }
        *self.term.lock().unwrap_or_else(|p| p.into_inner()) = Some(Term {
            epoch,
            deposed: CancellationToken::new(),
        });
        tracing::info!(epoch, "reconciler: elected leader");
        Ok(Some(Leadership { conn, epoch }))
    }

    /// Ends the term: the provisioner stops acting first, then the lock is released.
    pub async fn step_down(&self, l: Leadership) {
        {
            let mut term = self.term.lock().unwrap_or_else(|p| p.into_inner());
            if term.as_ref().is_some_and(|t| t.epoch == l.epoch)
                && let Some(t) = term.take()
            {
                t.deposed.cancel();
            }
        }
        if let Some(p) = &self.engine.provisioner {
            p.deactivate(l.epoch as u64).await;
        }
        l.conn.close().await.ok();
        tracing::info!(epoch = l.epoch, "reconciler: stepped down");
    }

    /// The epoch of this process's term, while it leads (and has not learnt otherwise).
    pub fn leader_epoch(&self) -> Option<i64> {
        self.term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|t| !t.deposed.is_cancelled())
            .map(|t| t.epoch)
    }

    pub(super) fn term_token(&self) -> Option<(i64, CancellationToken)> {
        self.term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| (t.epoch, t.deposed.clone()))
    }

    /// Whether `l` still holds the lock and its epoch is still the current one; counts the
    /// check in `reconciler_leader.passes` (operators and tests see the term's progress).
    pub(super) async fn still_leads(&self, l: &mut Leadership) -> Result<bool> {
        let checked: Option<i64> = sqlx::query_scalar(
            "UPDATE reconciler_leader SET passes = passes + 1, checked_at = now()
             WHERE lock_key = $1 AND epoch = $2
               AND EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                   AND pid = pg_backend_pid() AND granted
                   AND ((classid::bigint << 32) | objid::bigint) = $1)
             RETURNING passes",
        )
        .bind(self.cfg.leader_lock_key)
        .bind(l.epoch)
        .fetch_optional(&mut l.conn)
        .await
        .context("re-check leadership")?;
        Ok(checked.is_some())
    }

    /// A transaction in which this process may write: refused (with [`Deposed`], and the
    /// term marked deposed) unless it leads at the current epoch. The epoch's row stays
    /// share-locked until the transaction ends, so no successor is elected meanwhile.
    pub async fn fenced(&self) -> Result<FencedTx> {
        let Some((mine, deposed)) = self.term_token() else {
            anyhow::bail!(
                "this process does not lead: the reconciler writes only under leadership"
            );
        };
        if deposed.is_cancelled() {
            anyhow::bail!("the term at leader epoch {mine} has ended: no more writes");
        }
        let mut tx = self.db.begin().await?;
        let current: Option<(i64, String)> = sqlx::query_as(
            "SELECT epoch, set_config('sluice.leader_epoch', epoch::text, true)
             FROM reconciler_leader WHERE lock_key = $1 FOR SHARE",
        )
        .bind(self.cfg.leader_lock_key)
        .fetch_optional(&mut *tx)
        .await
        .context("check the leader epoch")?;
        let current = current.map_or(0, |(e, _)| e);
        if current != mine {
            tx.rollback().await.ok();
            deposed.cancel();
            tracing::warn!(
                mine,
                current,
                "reconciler: a newer leader was elected; stepping down"
            );
            return Err(Deposed { mine, current }.into());
        }
        Ok(tx)
    }
}
