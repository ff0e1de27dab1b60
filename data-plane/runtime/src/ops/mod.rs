//! The operators the planner's stages become.

pub mod dedup;
pub mod group;
pub mod join;
pub mod over;
pub mod stateless;
pub mod window;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Counter of records dropped because they arrived behind the watermark.
pub type LateCounter = Arc<AtomicU64>;
