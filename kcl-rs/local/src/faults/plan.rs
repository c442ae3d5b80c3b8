//! What to inject: faults, the rules that choose them, the plan that holds the rules,
//! and the one small trait the proxy asks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The `X-Amz-Target` prefix of Kinesis Data Streams operations.
pub const KINESIS_TARGET_PREFIX: &str = "Kinesis_20131202.";

/// The `X-Amz-Target` prefix of DynamoDB operations.
pub const DYNAMODB_TARGET_PREFIX: &str = "DynamoDB_20120810.";

/// The `X-Amz-Target` of a Kinesis operation: `kinesis_target("GetRecords")` is
/// `"Kinesis_20131202.GetRecords"`.
pub fn kinesis_target(operation: &str) -> String {
    format!("{KINESIS_TARGET_PREFIX}{operation}")
}

/// The `X-Amz-Target` of a DynamoDB operation: `dynamodb_target("UpdateItem")` is
/// `"DynamoDB_20120810.UpdateItem"`.
pub fn dynamodb_target(operation: &str) -> String {
    format!("{DYNAMODB_TARGET_PREFIX}{operation}")
}

/// What the proxy does to one request instead of (or before) forwarding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with an AWS JSON error, `{"__type": code, "message": message}`, without
    /// forwarding. See the constructors for the errors the services really send.
    Error {
        /// The HTTP status.
        status: u16,
        /// The AWS error code, e.g. `ProvisionedThroughputExceededException`.
        code: String,
        /// The error message.
        message: String,
    },
    /// Hold the request for `hold`, then close the connection without answering and
    /// without forwarding. With `hold` above the client's attempt timeout the client
    /// sees a timeout; below it, a connection closed late.
    Timeout {
        /// How long to hold the request.
        hold: Duration,
    },
    /// Wait `delay`, then forward as usual.
    Latency {
        /// The added delay.
        delay: Duration,
    },
    /// Close the connection without answering; the request is not forwarded.
    DropConnection,
    /// Forward the request, then close the connection instead of answering: the
    /// service acted but the client cannot know, so its retry repeats a done write.
    DropResponse,
    /// Forward the request and pass a streamed answer (a SubscribeToShard event stream)
    /// for `after`, then pass nothing more while keeping the client's connection open
    /// (the service's is closed): a subscription that goes silent. Other answers pass
    /// whole.
    Stall {
        /// How long the stream flows before it stalls.
        after: Duration,
    },
}

impl Fault {
    /// An AWS JSON error answer.
    pub fn error(status: u16, code: impl Into<String>, message: impl Into<String>) -> Fault {
        Fault::Error {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 `ProvisionedThroughputExceededException`: Kinesis over a shard's limits, or
    /// DynamoDB over a table's provisioned capacity.
    pub fn throughput_exceeded() -> Fault {
        Fault::error(
            400,
            "ProvisionedThroughputExceededException",
            "Rate exceeded (injected by the fault proxy)",
        )
    }

    /// 400 `ThrottlingException`: DynamoDB's (and other AWS services') request-rate
    /// throttling.
    pub fn throttling_exception() -> Fault {
        Fault::error(
            400,
            "ThrottlingException",
            "Rate of requests exceeds the allowed throughput (injected by the fault proxy)",
        )
    }

    /// 500 `InternalFailure`: Kinesis's internal error.
    pub fn internal_failure() -> Fault {
        Fault::error(
            500,
            "InternalFailure",
            "Internal service failure (injected by the fault proxy)",
        )
    }

    /// 500 `InternalServerError`: DynamoDB's internal error.
    pub fn internal_server_error() -> Fault {
        Fault::error(
            500,
            "InternalServerError",
            "Internal server error (injected by the fault proxy)",
        )
    }

    /// 503 `ServiceUnavailable`.
    pub fn service_unavailable() -> Fault {
        Fault::error(
            503,
            "ServiceUnavailable",
            "Service unavailable (injected by the fault proxy)",
        )
    }

    /// The kind this fault is counted under.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Error { status, code, .. } => {
                if *status >= 500 {
                    FaultKind::ServerError
                } else if *status == 429
                    || code.contains("Throttl")
                    || code.contains("ThroughputExceeded")
                    || code.contains("LimitExceeded")
                {
                    FaultKind::Throttling
                } else {
                    FaultKind::ClientError
                }
            }
            Fault::Timeout { .. } => FaultKind::Timeout,
            Fault::Latency { .. } => FaultKind::Latency,
            Fault::DropConnection => FaultKind::DroppedConnection,
            Fault::DropResponse => FaultKind::DroppedResponse,
            Fault::Stall { .. } => FaultKind::Stalled,
        }
    }
}

/// The kinds faults are counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// A 4xx throttling error (429, or a code naming throttling or exceeded limits).
    Throttling,
    /// A 5xx error.
    ServerError,
    /// Any other error answer.
    ClientError,
    /// A request held and then dropped.
    Timeout,
    /// A request delayed, then forwarded.
    Latency,
    /// A connection closed before forwarding.
    DroppedConnection,
    /// A connection closed after forwarding, instead of the answer.
    DroppedResponse,
    /// A streamed answer that stopped flowing.
    Stalled,
}

/// One request, as a [`FaultInjector`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The `X-Amz-Target` header, e.g. `Kinesis_20131202.GetRecords`; empty if absent.
    pub operation: &'a str,
    /// The request body (AWS JSON).
    pub body: &'a [u8],
}

/// Decides which requests get a fault. The proxy forwards; an injector only decides.
///
/// [`FaultPlan`] is the usual one; a closure `Fn(&Call) -> Option<Fault>` is one too.
pub trait FaultInjector: Send + Sync + 'static {
    /// The fault for this request, or `None` to forward it untouched.
    fn fault_for(&self, call: &Call<'_>) -> Option<Fault>;
}

impl<F> FaultInjector for F
where
    F: Fn(&Call<'_>) -> Option<Fault> + Send + Sync + 'static,
{
    fn fault_for(&self, call: &Call<'_>) -> Option<Fault> {
        self(call)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Trigger {
    /// Each matching call, with this probability.
    Probability(f64),
    /// The next `n` matching calls.
    Next(u64),
}

/// A rule of a [`FaultPlan`]: which calls (operation, optionally a body fragment),
/// how often (a probability, or the next N), and what fault.
///
/// ```
/// use kcl_local::faults::{Fault, Rule};
///
/// // Half of all GetRecords calls are throttled.
/// let throttle = Rule::kinesis("GetRecords", Fault::throughput_exceeded()).with_probability(0.5);
/// // The next two checkpoint writes fail with a 500.
/// let fail = Rule::dynamodb("UpdateItem", Fault::internal_server_error())
///     .when_body_contains("\"#checkpoint\"")
///     .for_next(2);
/// // Every DynamoDB call of any operation.
/// let all = Rule::new("DynamoDB_20120810.*", Fault::DropConnection);
/// # let _ = (throttle, fail, all);
/// ```
#[derive(Clone, Debug)]
pub struct Rule {
    operation: String,
    body_contains: Option<Vec<u8>>,
    trigger: Trigger,
    fault: Fault,
}

impl Rule {
    /// A rule for every call whose `X-Amz-Target` is `operation`; a pattern ending in
    /// `*` matches every target starting with what precedes it (`"*"` matches all).
    pub fn new(operation: impl Into<String>, fault: Fault) -> Rule {
        Rule {
            operation: operation.into(),
            body_contains: None,
            trigger: Trigger::Probability(1.0),
            fault,
        }
    }

    /// A rule for a Kinesis operation by name, e.g. `"GetRecords"`.
    pub fn kinesis(operation: &str, fault: Fault) -> Rule {
        Rule::new(kinesis_target(operation), fault)
    }

    /// A rule for a DynamoDB operation by name, e.g. `"UpdateItem"`.
    pub fn dynamodb(operation: &str, fault: Fault) -> Rule {
        Rule::new(dynamodb_target(operation), fault)
    }

    /// Each matching call gets the fault with probability `p` (clamped to 0..=1), drawn
    /// from the plan's seeded generator.
    pub fn with_probability(mut self, p: f64) -> Rule {
        self.trigger = Trigger::Probability(if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) });
        self
    }

    /// Only the next `n` matching calls get the fault; the rule then stays inert.
    pub fn for_next(mut self, n: u64) -> Rule {
        self.trigger = Trigger::Next(n);
        self
    }

    /// Only calls whose body contains `fragment` match (for example
    /// `"\"#checkpoint\""` to single out the lease store's checkpoint writes among
    /// UpdateItem calls).
    pub fn when_body_contains(mut self, fragment: impl AsRef<[u8]>) -> Rule {
        self.body_contains = Some(fragment.as_ref().to_vec());
        self
    }

    fn matches(&self, call: &Call<'_>) -> bool {
        let operation = match self.operation.strip_suffix('*') {
            Some(prefix) => call.operation.starts_with(prefix),
            None => call.operation == self.operation,
        };
        operation
            && self.body_contains.as_deref().is_none_or(|fragment| {
                fragment.is_empty() || call.body.windows(fragment.len()).any(|w| w == fragment)
            })
    }
}

/// Identifies a rule added to a [`FaultPlan`], to remove it later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u64);

/// An ordered list of [`Rule`]s, shared and changeable while a proxy uses it: clones
/// are handles to the same plan. For each call the first rule that matches and fires
/// gives the fault; at most one fault per call.
///
/// Probabilities are drawn from a generator seeded by [`FaultPlan::new`], so the same
/// sequence of calls gets the same faults. (Calls from concurrent tasks may arrive in
/// a different order from run to run.)
///
/// ```
/// use kcl_local::faults::{Call, Fault, FaultInjector, FaultPlan, Rule};
///
/// let plan = FaultPlan::new(7);
/// let id = plan.add(Rule::dynamodb("PutItem", Fault::service_unavailable()).for_next(1));
/// let put = Call { operation: "DynamoDB_20120810.PutItem", body: b"{}" };
/// assert_eq!(plan.fault_for(&put), Some(Fault::service_unavailable()));
/// assert_eq!(plan.fault_for(&put), None);
/// assert_eq!(plan.remaining(id), Some(0));
/// assert!(plan.remove(id));
/// ```
#[derive(Clone)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
}

struct PlanState {
    rules: Vec<(RuleId, Rule)>,
    next_id: u64,
    rng: StdRng,
}

impl FaultPlan {
    /// An empty plan (every call forwarded) whose probabilities draw from `seed`.
    pub fn new(seed: u64) -> FaultPlan {
        FaultPlan {
            state: Arc::new(Mutex::new(PlanState {
                rules: Vec::new(),
                next_id: 0,
                rng: StdRng::seed_from_u64(seed),
            })),
        }
    }

    /// Restarts the probability draws from `seed`, keeping the rules: for a plan made
    /// elsewhere (a strict proxy's) that a test wants reproducible with its own seed.
    pub fn reseed(&self, seed: u64) {
        self.lock().rng = StdRng::seed_from_u64(seed);
    }

    /// Adds `rule` (builder style).
    pub fn with(self, rule: Rule) -> FaultPlan {
        self.add(rule);
        self
    }

    /// Adds `rule` after the existing ones; effective from the next call.
    pub fn add(&self, rule: Rule) -> RuleId {
        let mut state = self.lock();
        let id = RuleId(state.next_id);
        state.next_id += 1;
        state.rules.push((id, rule));
        id
    }

    /// Removes a rule; `false` if it was not there.
    pub fn remove(&self, id: RuleId) -> bool {
        let mut state = self.lock();
        let before = state.rules.len();
        state.rules.retain(|(rule_id, _)| *rule_id != id);
        state.rules.len() != before
    }

    /// Removes every rule: all calls are forwarded again.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// How many calls a [`Rule::for_next`] rule has left to fault; `None` for a
    /// probability rule or an unknown id.
    pub fn remaining(&self, id: RuleId) -> Option<u64> {
        self.lock()
            .rules
            .iter()
            .find(|(rule_id, _)| *rule_id == id)
            .and_then(|(_, rule)| match rule.trigger {
                Trigger::Next(n) => Some(n),
                Trigger::Probability(_) => None,
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlanState> {
        // A panic elsewhere while holding the lock leaves the rules consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for FaultPlan {
    /// An empty plan with seed 0.
    fn default() -> Self {
        FaultPlan::new(0)
    }
}

impl std::fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("FaultPlan")
            .field("rules", &state.rules)
            .finish()
    }
}

impl FaultInjector for FaultPlan {
    fn fault_for(&self, call: &Call<'_>) -> Option<Fault> {
        let mut state = self.lock();
        let PlanState { rules, rng, .. } = &mut *state;
        for (_, rule) in rules.iter_mut().filter(|(_, rule)| rule.matches(call)) {
            let fires = match &mut rule.trigger {
                Trigger::Next(0) => false,
                Trigger::Next(n) => {
                    *n -= 1;
                    true
                }
                Trigger::Probability(p) => rng.random::<f64>() < *p,
            };
            if fires {
                return Some(rule.fault.clone());
            }
        }
        None
    }
}

/// What a proxy has seen: calls per operation and faults injected per operation and
/// kind. A snapshot; [`FaultProxy::counts`](super::FaultProxy::counts) takes a new one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received per `X-Amz-Target`, faulted or not.
    pub calls: BTreeMap<String, u64>,
    /// Faults injected per `X-Amz-Target` and kind.
    pub injected: BTreeMap<(String, FaultKind), u64>,
}

impl FaultCounts {
    /// Requests received for `operation` (an `X-Amz-Target`).
    pub fn calls(&self, operation: &str) -> u64 {
        self.calls.get(operation).copied().unwrap_or(0)
    }

    /// Faults of `kind` injected into `operation`.
    pub fn injected(&self, operation: &str, kind: FaultKind) -> u64 {
        self.injected
            .get(&(operation.to_string(), kind))
            .copied()
            .unwrap_or(0)
    }

    /// Faults of `kind` injected into any operation.
    pub fn injected_of_kind(&self, kind: FaultKind) -> u64 {
        self.injected
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Faults injected in all.
    pub fn total_injected(&self) -> u64 {
        self.injected.values().sum()
    }

    pub(super) fn record(&mut self, operation: &str, fault: Option<FaultKind>) {
        *self.calls.entry(operation.to_string()).or_default() += 1;
        if let Some(kind) = fault {
            *self
                .injected
                .entry((operation.to_string(), kind))
                .or_default() += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(operation: &'a str, body: &'a [u8]) -> Call<'a> {
        Call { operation, body }
    }

    #[test]
    fn rules_match_targets_prefixes_and_body_fragments() {
        let get_records = kinesis_target("GetRecords");
        let cases = [
            (Rule::kinesis("GetRecords", Fault::DropConnection), true),
            (Rule::kinesis("PutRecords", Fault::DropConnection), false),
            (Rule::new("Kinesis_20131202.*", Fault::DropConnection), true),
            (
                Rule::new("DynamoDB_20120810.*", Fault::DropConnection),
                false,
            ),
            (Rule::new("*", Fault::DropConnection), true),
            (
                Rule::kinesis("GetRecords", Fault::DropConnection).when_body_contains("Iter"),
                true,
            ),
            (
                Rule::kinesis("GetRecords", Fault::DropConnection).when_body_contains("Limit"),
                false,
            ),
        ];
        for (rule, expected) in cases {
            assert_eq!(
                rule.matches(&call(&get_records, b"{\"ShardIterator\":\"x\"}")),
                expected,
                "{rule:?}"
            );
        }
    }

    #[test]
    fn next_n_fires_exactly_n_times_and_first_matching_rule_wins() {
        let plan = FaultPlan::new(1)
            .with(Rule::dynamodb("UpdateItem", Fault::internal_server_error()).for_next(2))
            .with(Rule::new("*", Fault::throttling_exception()));
        let update = dynamodb_target("UpdateItem");
        let faults: Vec<_> = (0..4)
            .map(|_| plan.fault_for(&call(&update, b"")).map(|f| f.kind()))
            .collect();
        assert_eq!(
            faults,
            [
                Some(FaultKind::ServerError),
                Some(FaultKind::ServerError),
                Some(FaultKind::Throttling),
                Some(FaultKind::Throttling)
            ]
        );
    }

    #[test]
    fn probabilities_are_reproducible_from_the_seed() {
        let draws = |seed| {
            let plan = FaultPlan::new(seed)
                .with(Rule::new("*", Fault::DropConnection).with_probability(0.5));
            (0..200)
                .map(|_| plan.fault_for(&call("x", b"")).is_some())
                .collect::<Vec<_>>()
        };
        let first = draws(42);
        assert_eq!(first, draws(42));
        assert_ne!(first, draws(43));
        let hits = first.iter().filter(|&&hit| hit).count();
        assert!((60..=140).contains(&hits), "{hits} of 200 at p = 0.5");
        let never =
            FaultPlan::new(0).with(Rule::new("*", Fault::DropConnection).with_probability(0.0));
        assert!((0..100).all(|_| never.fault_for(&call("x", b"")).is_none()));
    }

    #[test]
    fn a_reseeded_plan_draws_as_a_plan_made_with_that_seed() {
        let draws = |plan: &FaultPlan| {
            (0..200)
                .map(|_| plan.fault_for(&call("x", b"")).is_some())
                .collect::<Vec<_>>()
        };
        let rule = || Rule::new("*", Fault::DropConnection).with_probability(0.5);
        let made = FaultPlan::new(42).with(rule());
        let reseeded = FaultPlan::default().with(rule());
        draws(&reseeded);
        reseeded.reseed(42);
        assert_eq!(draws(&reseeded), draws(&made));
    }

    #[test]
    fn faults_are_counted_by_kind() {
        let kinds = [
            (Fault::throughput_exceeded(), FaultKind::Throttling),
            (Fault::throttling_exception(), FaultKind::Throttling),
            (Fault::error(429, "TooMany", "m"), FaultKind::Throttling),
            (Fault::internal_failure(), FaultKind::ServerError),
            (Fault::internal_server_error(), FaultKind::ServerError),
            (Fault::service_unavailable(), FaultKind::ServerError),
            (
                Fault::error(400, "ValidationException", "m"),
                FaultKind::ClientError,
            ),
            (
                Fault::Timeout {
                    hold: Duration::from_secs(1),
                },
                FaultKind::Timeout,
            ),
            (
                Fault::Latency {
                    delay: Duration::from_millis(1),
                },
                FaultKind::Latency,
            ),
            (Fault::DropConnection, FaultKind::DroppedConnection),
            (Fault::DropResponse, FaultKind::DroppedResponse),
        ];
        for (fault, kind) in kinds {
            assert_eq!(fault.kind(), kind, "{fault:?}");
        }
        let mut counts = FaultCounts::default();
        counts.record("a", None);
        counts.record("a", Some(FaultKind::Throttling));
        counts.record("b", Some(FaultKind::Throttling));
        assert_eq!(counts.calls("a"), 2);
        assert_eq!(counts.injected("a", FaultKind::Throttling), 1);
        assert_eq!(counts.injected_of_kind(FaultKind::Throttling), 2);
        assert_eq!(counts.total_injected(), 2);
    }
}
