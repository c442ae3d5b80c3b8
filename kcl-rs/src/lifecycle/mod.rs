//! One shard consumer per held lease, driven as an explicit state machine:
//!
//! ```text
//! WaitingOnParents ──parents done──> Initializing ──> Processing ──shard end──> ShardEnded
//!    │                                 │   │  └─checkpoint is SHARD_END──────────────^  │
//!    │                                 │   └─lease item gone──> LeaseLost               │
//!    │ lease lost / shutdown /         │                           ^                    │
//!    │ handoff asked                   │        Processing ──lease lost─┘               │
//!    v                                 v                                                │
//!  (the matching state)     Processing ──shutdown──> ShutdownRequested               │
//!                           Processing ──reading failed for good──> Failing             │
//!                           Processing ──handoff asked──> HandingOff                    │
//!                                                                                       v
//!  ShardEnded, LeaseLost, ShutdownRequested, HandingOff, Failing ──────────> Done(outcome)
//! ```
//!
//! The final state carries the [`ConsumerOutcome`], which the worker reports to its
//! caller ([`WorkerEvent::ShardStopped`](crate::WorkerEvent::ShardStopped)). The
//! decisions are pure functions tested from tables: which state an interruption leads
//! to (`ConsumerState::interrupted`) and how a stopping consumer ends
//! (`ConsumerState::stopped`).
//!
//! | from | to | when |
//! |---|---|---|
//! | WaitingOnParents | Initializing | every parent is done: its lease is at SHARD_END, or it has no lease and is not to be read (see `parents`); a missing parent still listed gets its lease created and is waited for |
//! | WaitingOnParents, Initializing, Processing | ShutdownRequested / HandingOff / LeaseLost | the worker stops / another worker asked / the lease was lost |
//! | Initializing | ShardEnded | the lease's checkpoint is already SHARD_END |
//! | Initializing | LeaseLost | the lease item is gone |
//! | Processing | ShardEnded | the shard was read to its end, or Kinesis no longer has it (trimmed) |
//! | Processing | Failing | reading failed for good |
//! | ShardEnded | Done | SHARD_END written and the lease released (`ShardEnded`); or the write failed and the lease is let go (`Failed`), or it was lost (`LeaseLost`) |
//! | LeaseLost | Done | after `lease_lost` (`LeaseLost`) |
//! | ShutdownRequested, HandingOff, Failing | Done | after `shutdown_requested`; the lease is released or handed over (`ShutDown`, `HandedOver`, `Failed`), or, when that fails, left to expire (`LeaseLost`, or `Failed` when failing) |
//!
//! Whatever way a consumer ends (a processor panic included, caught by
//! `supervise`), its lease is not left held with nobody reading: it is released, or,
//! when the release fails or hangs past a third of the failover time, no longer
//! renewed, so that it expires and the shard is read again within twice the failover
//! time.
//!
//! Every exit is taken between batches, never in the middle of one: the batch in flight
//! finishes first (the processor is not cancelled mid-write).

mod consumer;
mod load;
mod parents;
mod supervise;

pub(crate) use consumer::{ConsumerContext, Leader};
pub use consumer::{ConsumerOutcome, ConsumerState};
pub(crate) use supervise::{let_go, let_go_limit, park, run_supervised};
