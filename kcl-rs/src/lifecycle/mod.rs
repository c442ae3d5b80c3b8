//! One shard consumer per held lease, driven as an explicit state machine:
//!
//! ```text
//! WaitingOnParents ──parents at SHARD_END (or gone)──> Initializing ──> Processing
//!        │                                                               │
//!        │ lease lost / shutdown                 shard end ──> ShardEnded ──┐
//!        v                                  lease lost ──> LeaseLost ───────┤
//!      Done <───────────────────────────── shutdown ──> ShutdownRequested ──┤
//!                                  handoff asked ──> HandingOff ────────────┘
//! ```
//!
//! Every exit is taken between batches, never in the middle of one: the batch in flight
//! finishes first (the processor is not cancelled mid-write).

mod consumer;
mod load;
mod parents;
mod supervise;

pub(crate) use consumer::ConsumerContext;
pub use consumer::{ConsumerOutcome, ConsumerState};
pub(crate) use supervise::run_supervised;
