//! Strict mode of the local AWS: proxies in front of Kinesis and DynamoDB that refuse
//! what the real services refuse, with AWS's own error codes and messages, so that
//! tests meet what production meets. The emulators are gentle: they never throttle
//! reads, never trim a shard.
//!
//! Built on the fault proxy's seam ([`ProxyLayer`]): each service gets a
//! [`FaultProxy`] whose layers are the strict rules, and whose [`FaultPlan`] still
//! injects faults on top. [`LocalAwsOptions::strict`](super::LocalAwsOptions::strict)
//! turns it on for [`LocalAws`](super::LocalAws); [`StrictAws::start`] puts it in front
//! of any pair of endpoints (an external Kinesis too).
//!
//! Kinesis ([`kinesis::StrictKinesis`]): per-shard read limits (GetRecords 5 calls/s
//! and 2 MiB/s, GetShardIterator 5/s), control-plane limits (ListShards per stream,
//! DescribeStream and DescribeStreamSummary per account), and retention (records
//! trimmed, closed shards deleted) with a retention settable at run time. Writes are
//! limited by the emulator itself (`enforce_limits`).
//!
//! DynamoDB ([`dynamodb::StrictDynamoDb`]): transaction conflicts, with transactions
//! held in flight a settable moment ([`DynamoDbLimits::transaction_hold`]) so that they
//! really meet other writes ([`conflicts`]).
//!
//! IAM ([`access::StrictIam`], in front of both services): requests signed with an
//! access key bound in [`StrictOptions::principals`] are authorised against that
//! principal's policy, and denied with AWS's `AccessDeniedException` ([`iam`]);
//! [`LocalAws::clients_as`](super::LocalAws::clients_as) builds clients signed with such
//! a key. Every refusal is counted per operation and [`RefusalKind`].
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use kcl_local::strict::RefusalKind;
//! use kcl_local::{LocalAws, LocalAwsOptions};
//!
//! let aws = LocalAws::start(LocalAwsOptions::strict()).await?;
//! let strict = aws.strict().expect("strict mode is on");
//! strict.kinesis().set_retention(Duration::from_secs(30));
//! let clients = aws.clients().await; // through the strict proxies
//! clients.kinesis.list_streams().send().await?;
//! assert_eq!(strict.refusals("ListStreams"), 0);
//! assert_eq!(strict.refusals_of("GetRecords", RefusalKind::ReadCallRate), 0);
//! aws.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod access;
pub mod conflicts;
pub mod dynamodb;
pub mod expiring;
pub mod iam;
pub mod kinesis;
pub mod rate;
pub mod retention;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::faults::{FaultPlan, FaultProxy, ProxyLayer, action_of};
use iam::Principals;
use kcl::aws::Endpoints;

pub use access::StrictIam;
pub use dynamodb::{DynamoDbLimits, StrictDynamoDb};
pub use kinesis::{KinesisLimits, StrictKinesis};

/// The account id strict answers name in their messages (the emulators' default).
pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";

/// What strict mode enforces. The defaults are AWS's.
#[derive(Clone, Debug)]
pub struct StrictOptions {
    /// Kinesis limits and retention.
    pub kinesis: KinesisLimits,
    /// The account id named in error messages ("... under account 000000000000") and
    /// in the ARNs IAM checks.
    pub account_id: String,
    /// DynamoDB behaviour: how long transactions are held in flight.
    pub dynamodb: DynamoDbLimits,
    /// Access key id → IAM principal restricted to its policy; requests signed with
    /// any other key are unrestricted. Empty by default.
    pub principals: Principals,
}

impl Default for StrictOptions {
    fn default() -> Self {
        StrictOptions {
            kinesis: KinesisLimits::default(),
            account_id: DEFAULT_ACCOUNT_ID.to_string(),
            dynamodb: DynamoDbLimits::default(),
            principals: Principals::default(),
        }
    }
}

/// Why a strict layer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RefusalKind {
    /// A per-shard call rate (GetRecords, GetShardIterator):
    /// `ProvisionedThroughputExceededException`; SubscribeToShard's 1 call per second
    /// per consumer and shard: `LimitExceededException`.
    ReadCallRate,
    /// A shard's read throughput (2 MiB/s): `ProvisionedThroughputExceededException`.
    ReadThroughput,
    /// A control-plane rate (ListShards, DescribeStream, DescribeStreamSummary):
    /// `LimitExceededException`.
    ControlPlaneRate,
    /// A shard deleted after the retention: `ResourceNotFoundException`.
    ShardGone,
    /// A DynamoDB write meeting a transaction in flight: `TransactionConflictException`,
    /// or a transaction cancelled with reason `TransactionConflict`.
    TransactionConflict,
    /// A call the IAM policy does not allow: `AccessDeniedException`.
    AccessDenied,
}

/// Refusals per operation (`X-Amz-Target`) and kind, shared by the layers of one
/// [`StrictAws`]. Layers record; tests read through [`StrictAws`].
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<(String, RefusalKind), u64>>,
}

impl Refusals {
    /// Counts one refusal of `operation` (an `X-Amz-Target`).
    pub fn record(&self, operation: &str, kind: RefusalKind) {
        *self
            .lock()
            .entry((operation.to_string(), kind))
            .or_default() += 1;
    }

    /// Refusals of `operation`, of any kind. `operation` is an `X-Amz-Target` or the
    /// bare action (`"GetRecords"`).
    pub fn of(&self, operation: &str) -> u64 {
        self.sum(|op, _| matches_operation(op, operation))
    }

    /// Refusals of `operation` (as in [`Refusals::of`]) of `kind`.
    pub fn of_kind(&self, operation: &str, kind: RefusalKind) -> u64 {
        self.sum(|op, k| k == kind && matches_operation(op, operation))
    }

    /// All refusals of `kind`, any operation.
    pub fn kind(&self, kind: RefusalKind) -> u64 {
        self.sum(|_, k| k == kind)
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.sum(|_, _| true)
    }

    /// Every count, keyed by (`X-Amz-Target`, kind).
    pub fn snapshot(&self) -> BTreeMap<(String, RefusalKind), u64> {
        self.lock().clone()
    }

    fn sum(&self, keep: impl Fn(&str, RefusalKind) -> bool) -> u64 {
        self.lock()
            .iter()
            .filter(|((op, kind), _)| keep(op, *kind))
            .map(|(_, n)| n)
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, RefusalKind), u64>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn matches_operation(target: &str, asked: &str) -> bool {
    target == asked || (!asked.contains('.') && action_of(target) == asked)
}

/// Strict proxies running in front of a Kinesis and a DynamoDB. Stop with
/// [`StrictAws::shutdown`]; dropping stops them too (without waiting).
#[derive(Debug)]
pub struct StrictAws {
    kinesis_proxy: FaultProxy,
    dynamodb_proxy: FaultProxy,
    kinesis: Arc<StrictKinesis>,
    dynamodb: Arc<StrictDynamoDb>,
    iam: Arc<StrictIam>,
    refusals: Arc<Refusals>,
}

impl StrictAws {
    /// Starts a strict proxy on 127.0.0.1 (ephemeral ports) in front of each endpoint
    /// (`http://host:port`).
    pub async fn start(
        options: &StrictOptions,
        kinesis_url: &str,
        dynamodb_url: &str,
    ) -> std::io::Result<StrictAws> {
        StrictAws::start_on(options, (0, 0), kinesis_url, dynamodb_url).await
    }

    /// Like [`StrictAws::start`], the proxies listening on 127.0.0.1 at `ports`
    /// (Kinesis, DynamoDB; 0 picks a free one).
    pub async fn start_on(
        options: &StrictOptions,
        ports: (u16, u16),
        kinesis_url: &str,
        dynamodb_url: &str,
    ) -> std::io::Result<StrictAws> {
        let refusals = Arc::new(Refusals::default());
        let kinesis = Arc::new(StrictKinesis::new(
            options.kinesis.clone(),
            options.account_id.clone(),
            Arc::clone(&refusals),
        ));
        let dynamodb = Arc::new(StrictDynamoDb::new(
            options.dynamodb.clone(),
            dynamodb_url,
            Arc::clone(&refusals),
        ));
        let iam = Arc::new(StrictIam::new(
            options.principals.clone(),
            options.account_id.clone(),
            Some(Arc::clone(&kinesis)),
            Arc::clone(&refusals),
        ));
        // IAM first: AWS authorises a request before it throttles or conflicts it.
        let kinesis_layers: Vec<Arc<dyn ProxyLayer>> = vec![iam.clone(), kinesis.clone()];
        let dynamodb_layers: Vec<Arc<dyn ProxyLayer>> = vec![iam.clone(), dynamodb.clone()];
        let (kinesis_port, dynamodb_port) = ports;
        let kinesis_proxy = FaultProxy::start_layered_on(
            kinesis_port,
            kinesis_url,
            FaultPlan::default(),
            kinesis_layers,
        )
        .await?;
        let dynamodb_proxy = FaultProxy::start_layered_on(
            dynamodb_port,
            dynamodb_url,
            FaultPlan::default(),
            dynamodb_layers,
        )
        .await?;
        Ok(StrictAws {
            kinesis_proxy,
            dynamodb_proxy,
            kinesis,
            dynamodb,
            iam,
            refusals,
        })
    }

    /// The strict endpoints: clients given these meet strict mode.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints::local(self.kinesis_proxy.url(), self.dynamodb_proxy.url())
    }

    /// The Kinesis layer: its limits and retention, changeable at run time.
    pub fn kinesis(&self) -> &StrictKinesis {
        &self.kinesis
    }

    /// The DynamoDB layer: its transaction hold, changeable at run time.
    pub fn dynamodb(&self) -> &StrictDynamoDb {
        &self.dynamodb
    }

    /// The IAM layer: its principals, changeable at run time.
    pub fn iam(&self) -> &StrictIam {
        &self.iam
    }

    /// The refusal counts of every layer.
    pub fn refusal_counts(&self) -> &Refusals {
        &self.refusals
    }

    /// Refusals of `operation` (an `X-Amz-Target`, or the bare action such as
    /// `"GetRecords"`), of any kind.
    pub fn refusals(&self, operation: &str) -> u64 {
        self.refusals.of(operation)
    }

    /// Refusals of `operation` of `kind`.
    pub fn refusals_of(&self, operation: &str, kind: RefusalKind) -> u64 {
        self.refusals.of_kind(operation, kind)
    }

    /// The proxy in front of Kinesis: its [`FaultPlan`] injects faults before the
    /// strict rules, and it counts calls per operation.
    pub fn kinesis_proxy(&self) -> &FaultProxy {
        &self.kinesis_proxy
    }

    /// The proxy in front of DynamoDB, as [`StrictAws::kinesis_proxy`].
    pub fn dynamodb_proxy(&self) -> &FaultProxy {
        &self.dynamodb_proxy
    }

    /// Stops both proxies and waits for them.
    pub async fn shutdown(self) {
        self.kinesis_proxy.shutdown().await;
        self.dynamodb_proxy.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_by_target_or_action() {
        let refusals = Refusals::default();
        refusals.record("Kinesis_20131202.GetRecords", RefusalKind::ReadCallRate);
        refusals.record("Kinesis_20131202.GetRecords", RefusalKind::ReadThroughput);
        refusals.record("Kinesis_20131202.ListShards", RefusalKind::ControlPlaneRate);
        refusals.record(
            "DynamoDB_20120810.UpdateItem",
            RefusalKind::TransactionConflict,
        );
        assert_eq!(refusals.of("GetRecords"), 2);
        assert_eq!(refusals.of("Kinesis_20131202.GetRecords"), 2);
        assert_eq!(refusals.of("Records"), 0);
        assert_eq!(
            refusals.of_kind("GetRecords", RefusalKind::ReadThroughput),
            1
        );
        assert_eq!(refusals.kind(RefusalKind::ControlPlaneRate), 1);
        assert_eq!(refusals.of("UpdateItem"), 1);
        assert_eq!(refusals.total(), 4);
    }
}
