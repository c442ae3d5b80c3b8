//! The consumer side: statistics computed online from the stream, exactly once.
//!
//! - [`summary`]: the statistics as exact integers, and the top-10 list.
//! - [`plan`]: which DynamoDB writes one transaction makes for a run of records (pure).
//! - [`hold`]: orders held in memory until they complete, written once (pure).
//! - [`size`]: DynamoDB's item and transaction size rules, for the plan.
//! - [`items`]: how those writes and the stored items look in DynamoDB.
//! - [`store`]: the tables and the calls.
//! - [`isolate`]: which record explains a refused transaction (pure).
//! - [`halt`]: how a processor stops its worker on an error no record explains.
//! - [`processor`]: the kcl-rs record processor that ties them together.
//!
//! The design, and why it is exactly once, is in `docs/delivery-stats.md`.

pub mod halt;
pub mod hold;
pub mod isolate;
pub mod items;
pub mod plan;
pub mod processor;
pub mod size;
pub mod store;
pub mod summary;

pub use halt::Halt;
pub use processor::StatsProcessor;
pub use store::{StatsStore, StoreError, StoredStats};
pub use summary::{Summary, Totals};
