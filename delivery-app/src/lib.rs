//! The food-delivery application of the kcl-rs toolkit: a simulated delivery platform
//! whose events are produced with `producer` and consumed with `kcl-rs` into exact
//! statistics kept in DynamoDB.
//!
//! - [`sim`]: the simulation (grid, drivers, orders) and its ground truth.
//! - [`events`]: the JSON schema on the stream and its validating parser.
//! - [`stats`]: the consumer: an exactly-once record processor and its DynamoDB store.
//! - [`report`]: what `delivery-app stats` prints, beside the ground truth.
//! - [`sink`]: putting simulated events on the stream with the producer.
//! - [`autoscaler`]: splitting hot shards and merging cold ones from the lease loads.
//! - [`scenario`]: a whole run — workers as processes, crashes, resharding — shared by
//!   `demo`, the tests and the benchmark.
//! - [`connect`]: where the AWS services are (local by default).
//! - [`principals`]: each command's IAM principal on the strict local AWS.
//! - [`audit`]: a worker's log of what it wrote, checked by the chaos run.
//! - [`chaos`]: the chaos run: seeded faults, then proof that every guarantee held.

#![warn(missing_docs)]

pub mod audit;
pub mod autoscaler;
pub mod chaos;
pub mod clock;
pub mod connect;
pub mod dashboard;
pub mod events;
pub mod http;
pub mod metrics;
pub mod principals;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod sink;
pub mod stats;
pub mod worker;
