//! Enhanced fan-out: each application reads every shard through its own registered
//! stream consumer, with records pushed over SubscribeToShard (2 MiB/s per shard per
//! consumer, not shared with other readers, and far lower latency than polling).
//!
//! - [`register_consumer`], [`list_consumers`], [`deregister_consumer`]
//!   (`registration`): the consumer a worker reads through. A worker in
//!   [`RetrievalMode::FanOut`](crate::RetrievalMode::FanOut) registers (or reuses) it at
//!   start; deregistering is left to the operator.
//! - `FanOutReader` (`subscription`, internal): one shard's subscriptions, renewed
//!   before each 5-minute session ends, with a watchdog for subscriptions that stop
//!   delivering, and the polling reader's resume and shard-end rules.
//!
//! On real AWS SubscribeToShard needs HTTP/2, which the SDK's default HTTPS client
//! negotiates; the local emulators serve it over HTTP/1.1.

mod registration;
#[cfg_attr(not(feature = "internals"), allow(dead_code, unused_imports))]
pub(crate) mod subscription;

pub use registration::{
    ConsumerError, StreamConsumer, deregister_consumer, describe_consumer, list_consumers,
    register_consumer, stream_arn,
};
pub(crate) use subscription::{FanOutConfig, FanOutReader};
