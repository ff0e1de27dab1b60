//! Admission against a compute pool's `max_kpu` (DESIGN §6).
//!
//! Every decision runs inside a transaction that holds the pool's row lock
//! (`SELECT … FOR UPDATE`), and reads the reservations of the pool's applications under
//! it: concurrent starts serialise on the lock, so N starts against room for k admit
//! exactly k. Used by the API (start, scale-up) and by the reconciler (the queue).

use sluice_api_types::{Admission, AppId, OrgId, PoolId};

use crate::store::{self, StoreError};

/// The outcome of asking for `requested` milli-KPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reserved (or already held).
    Admitted,
    /// Waiting in the pool's FIFO queue (pools with admission `queue`).
    Queued { position: i64 },
    /// Does not fit and the pool rejects (admission `reject`).
    Exhausted { free: u64, requested: u64 },
}

/// Asks for `requested` milli-KPU for `app` (which replaces what it holds, so a scale-up
/// asks only for the difference in effect). Locks the pool row.
pub async fn admit(
    conn: &mut store::Conn,
    org: &OrgId,
    pool: &PoolId,
    app: &AppId,
    requested: u64,
) -> Result<Decision, StoreError> {
    let row = store::compute_pool::get(conn, org, pool, true)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("pool {pool} of {app} is missing")))?;
    let rt = store::runtime::ensure(conn, org, app, pool).await?;
    let requested_i = i64::try_from(requested).unwrap_or(i64::MAX);
    if rt.reserved_kpu_milli >= requested_i {
        if rt.queued_seq.is_some() {
            store::runtime::dequeue(conn, app).await?;
            store::runtime::sync_pool_status(conn, pool).await?;
        }
        return Ok(Decision::Admitted);
    }
    let max = i64::from(row.max_kpu) * 1000;
    let others = store::runtime::reserved_in_pool(conn, pool, Some(app)).await?;
    let queue_mode = row.admission == store::compute_pool::admission_str(Admission::Queue);
    // FIFO: in a queueing pool a newcomer never overtakes those already waiting.
    let behind_others = queue_mode
        && rt.queued_seq.is_none()
        && store::runtime::others_queued(conn, pool, app).await?;
    let first_in_queue = match rt.queued_seq {
        Some(seq) => store::runtime::queue_position(conn, pool, seq).await? == 1,
        None => true,
    };
    let decision = if others + requested_i <= max && !behind_others && first_in_queue {
        store::runtime::reserve(conn, app, requested_i).await?;
        Decision::Admitted
    } else if queue_mode {
        let seq = store::runtime::enqueue(conn, app, requested_i).await?;
        Decision::Queued {
            position: store::runtime::queue_position(conn, pool, seq).await?,
        }
    } else {
        Decision::Exhausted {
            free: u64::try_from(max - others - rt.reserved_kpu_milli).unwrap_or(0),
            requested,
        }
    };
    store::runtime::sync_pool_status(conn, pool).await?;
    Ok(decision)
}

/// Sets what `app` holds to `kpu_milli` (0 releases it; lowering never needs room), leaves
/// the queue, then admits queued applications in FIFO order while they fit. Returns the
/// applications admitted from the queue. Locks the pool row.
pub async fn set_held(
    conn: &mut store::Conn,
    org: &OrgId,
    pool: &PoolId,
    app: &AppId,
    kpu_milli: u64,
) -> Result<Vec<String>, StoreError> {
    store::compute_pool::get(conn, org, pool, true).await?;
    if store::runtime::get(conn, app).await?.is_some() {
        store::runtime::reserve(conn, app, i64::try_from(kpu_milli).unwrap_or(i64::MAX)).await?;
    }
    admit_queued(conn, org, pool).await
}

/// Admits queued applications of the pool, oldest first, while they fit; stops at the first
/// that does not (FIFO). The caller holds the pool's row lock.
pub async fn admit_queued(
    conn: &mut store::Conn,
    org: &OrgId,
    pool: &PoolId,
) -> Result<Vec<String>, StoreError> {
    let Some(row) = store::compute_pool::get(conn, org, pool, true).await? else {
        return Ok(Vec::new());
    };
    let max = i64::from(row.max_kpu) * 1000;
    let mut used = store::runtime::reserved_in_pool(conn, pool, None).await?;
    let mut admitted = Vec::new();
    for (app, _org, asked) in store::runtime::queue(conn, pool).await? {
        let app_id: AppId = store::id(&app)?;
        let held = store::runtime::get(conn, &app_id)
            .await?
            .map_or(0, |r| r.reserved_kpu_milli);
        if used - held + asked > max {
            break;
        }
        store::runtime::reserve(conn, &app_id, asked).await?;
        used = used - held + asked;
        admitted.push(app);
    }
    store::runtime::sync_pool_status(conn, pool).await?;
    Ok(admitted)
}
