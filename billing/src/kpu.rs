//! KPU sizing (DESIGN.md §3): `ceil(P / K)` task KPUs plus the JobManager's orchestration share.

use crate::error::{BillingError, Result};

/// Default orchestration share of the JobManager, in milli-KPU (0.25 KPU).
pub const DEFAULT_ORCHESTRATION_SHARE_MILLI: i64 = 250;

/// Largest `parallelism_per_kpu` a TaskManager accepts (DESIGN.md §3: 1..8).
pub const MAX_PARALLELISM_PER_KPU: u32 = 8;

/// Upper bound on an orchestration share: a JobManager never needs more than a whole KPU here,
/// and the bound keeps a typo in a price book from billing tenants for phantom capacity.
pub const MAX_ORCHESTRATION_SHARE_MILLI: i64 = 1000;

/// Milli-KPUs held by an application with `parallelism` subtasks packed `parallelism_per_kpu` to
/// a TaskManager, plus `orchestration_share_milli` for the JobManager.
pub fn kpu_milli(
    parallelism: u32,
    parallelism_per_kpu: u32,
    orchestration_share_milli: i64,
) -> Result<i64> {
    if parallelism == 0 {
        return Err(BillingError::param(
            "parallelism",
            "must be at least 1, got 0",
        ));
    }
    if !(1..=MAX_PARALLELISM_PER_KPU).contains(&parallelism_per_kpu) {
        return Err(BillingError::param(
            "parallelism_per_kpu",
            format!("must be in 1..={MAX_PARALLELISM_PER_KPU}, got {parallelism_per_kpu}"),
        ));
    }
    if !(0..=MAX_ORCHESTRATION_SHARE_MILLI).contains(&orchestration_share_milli) {
        return Err(BillingError::param(
            "orchestration_share_milli",
            format!(
                "must be in 0..={MAX_ORCHESTRATION_SHARE_MILLI}, got {orchestration_share_milli}"
            ),
        ));
    }
    let task_kpus = i64::from(parallelism.div_ceil(parallelism_per_kpu));
    Ok(task_kpus * 1000 + orchestration_share_milli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_task_managers_up_and_adds_the_share() {
        assert_eq!(kpu_milli(1, 1, 250).unwrap(), 1250);
        assert_eq!(kpu_milli(4, 4, 250).unwrap(), 1250);
        assert_eq!(kpu_milli(5, 4, 250).unwrap(), 2250);
        assert_eq!(kpu_milli(8, 3, 0).unwrap(), 3000);
        assert_eq!(
            kpu_milli(u32::MAX, 1, 1000).unwrap(),
            i64::from(u32::MAX) * 1000 + 1000
        );
    }

    #[test]
    fn rejects_out_of_range_inputs_naming_them() {
        assert_eq!(
            kpu_milli(0, 1, 250).unwrap_err().parameter(),
            Some("parallelism")
        );
        assert_eq!(
            kpu_milli(1, 0, 250).unwrap_err().parameter(),
            Some("parallelism_per_kpu")
        );
        assert_eq!(
            kpu_milli(1, 9, 250).unwrap_err().parameter(),
            Some("parallelism_per_kpu")
        );
        assert_eq!(
            kpu_milli(1, 1, -1).unwrap_err().parameter(),
            Some("orchestration_share_milli")
        );
        assert_eq!(
            kpu_milli(1, 1, 1001).unwrap_err().parameter(),
            Some("orchestration_share_milli")
        );
    }
}
