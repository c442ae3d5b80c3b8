//! One conversation with a child: send a message, answer its checkpoint requests until
//! it reports `status` for that message, all within `timeoutInSeconds`.

use std::future::Future;
use std::time::Duration;

use kcl::checkpoint::{CheckpointError, Checkpointer, ExtendedSequenceNumber};
use kcl::leases::LeaseError;
use kcl::processor::ProcessRecordsInput;

use crate::child::{ChildError, ChildProcess, ChildSpec};
use crate::protocol::{CheckpointRequest, FromChild, JsonRecord, ToChild};

/// The Java checkpointer exceptions a child can be told about, by their simple names
/// (what `CheckpointError.value` holds in amazon_kclpy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JavaCheckpointError {
    /// No checkpointer in this state (during `initialize` or `leaseLost`).
    InvalidState,
    /// The lease is lost or the processor was shut down: stop checkpointing.
    Shutdown,
    /// The lease table throttled the write even after retries.
    Throttling,
    /// The lease table failed otherwise.
    Dependency,
    /// Not a valid position: beyond the last delivered record, before the last
    /// checkpoint, or not a sequence number.
    IllegalArgument,
}

impl JavaCheckpointError {
    /// The Java exception's simple name.
    pub fn java_name(self) -> &'static str {
        match self {
            JavaCheckpointError::InvalidState => "InvalidStateException",
            JavaCheckpointError::Shutdown => "ShutdownException",
            JavaCheckpointError::Throttling => "ThrottlingException",
            JavaCheckpointError::Dependency => "KinesisClientLibDependencyException",
            JavaCheckpointError::IllegalArgument => "IllegalArgumentException",
        }
    }

    /// What Java's checkpointer would have thrown for a kcl-rs checkpoint error.
    pub fn from_checkpoint_error(error: &CheckpointError) -> JavaCheckpointError {
        match error {
            CheckpointError::LeaseLost { .. } => JavaCheckpointError::Shutdown,
            CheckpointError::BeyondDelivered { .. } | CheckpointError::BehindLast { .. } => {
                JavaCheckpointError::IllegalArgument
            }
            CheckpointError::NothingPrepared { .. } => JavaCheckpointError::InvalidState,
            CheckpointError::Store { source, .. } => match source {
                LeaseError::Transient { message } if is_throttling(message) => {
                    JavaCheckpointError::Throttling
                }
                LeaseError::ConditionFailed { .. } => JavaCheckpointError::Shutdown,
                _ => JavaCheckpointError::Dependency,
            },
            // A kind of failure this daemon does not know yet: Java's catch-all.
            _ => JavaCheckpointError::Dependency,
        }
    }
}

fn is_throttling(message: &str) -> bool {
    [
        "Throttl",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The checkpointing a conversation needs: kcl's [`Checkpointer`], or a fake in tests.
pub trait Checkpointing: Send {
    /// Checkpoints everything delivered so far.
    fn checkpoint_delivered(
        &mut self,
    ) -> impl Future<Output = Result<(), JavaCheckpointError>> + Send;
    /// Checkpoints at a record position.
    fn checkpoint_at(
        &mut self,
        position: ExtendedSequenceNumber,
    ) -> impl Future<Output = Result<(), JavaCheckpointError>> + Send;
}

impl Checkpointing for Checkpointer {
    async fn checkpoint_delivered(&mut self) -> Result<(), JavaCheckpointError> {
        self.checkpoint()
            .await
            .map_err(|e| log_refusal(self.shard_id(), &e))
    }

    async fn checkpoint_at(
        &mut self,
        position: ExtendedSequenceNumber,
    ) -> Result<(), JavaCheckpointError> {
        let result = Checkpointer::checkpoint_at(self, position).await;
        result.map_err(|e| log_refusal(self.shard_id(), &e))
    }
}

fn log_refusal(shard_id: &str, error: &CheckpointError) -> JavaCheckpointError {
    let java = JavaCheckpointError::from_checkpoint_error(error);
    tracing::info!(shard = %shard_id, %error, answer = java.java_name(), "checkpoint refused");
    java
}

/// Which message a checkpoint request arrives during: what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// During `initialize` or `leaseLost`: Java has no checkpointer then.
    NoCheckpointer,
    /// During `processRecords` or `shutdownRequested`.
    Processing,
    /// During `shardEnded`: `SHARD_END` (or `null`) is what the child should ask.
    ShardEnded,
}

/// What to do with a checkpoint request: a pure decision, tested from a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointAction {
    /// Answer with this error without writing anything.
    Refuse(JavaCheckpointError),
    /// Answer success without writing: at shard end the framework writes `SHARD_END`
    /// after `shardEnded` returns.
    AcceptShardEnd,
    /// Checkpoint everything delivered.
    Delivered,
    /// Checkpoint at this position.
    At(ExtendedSequenceNumber),
}

/// Decides what a checkpoint request does in a phase.
pub fn plan_checkpoint(phase: Phase, request: CheckpointRequest) -> CheckpointAction {
    use CheckpointAction::*;
    match (phase, request) {
        (Phase::NoCheckpointer, _) => Refuse(JavaCheckpointError::InvalidState),
        (_, CheckpointRequest::Invalid(_)) => Refuse(JavaCheckpointError::IllegalArgument),
        (Phase::ShardEnded, CheckpointRequest::ShardEnd) => AcceptShardEnd,
        // SHARD_END before the shard is fully read: Java's range check rejects it.
        (Phase::Processing, CheckpointRequest::ShardEnd) => {
            Refuse(JavaCheckpointError::IllegalArgument)
        }
        (_, CheckpointRequest::LastDelivered) => Delivered,
        (_, CheckpointRequest::At(position)) => At(position),
    }
}

/// Why a conversation failed: the shard's consumer must give the shard up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Starting, writing to or reading from the child failed.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// The child wrote nothing (or took no input) for `timeoutInSeconds`.
    #[error("no answer to {action} within {timeout:?}")]
    Timeout {
        /// The message waiting for its status.
        action: &'static str,
        /// The configured timeout.
        timeout: Duration,
    },
    /// A `status` for another message.
    #[error("status for {got:?} while waiting for {expected}")]
    WrongStatus {
        /// The message waiting for its status.
        expected: &'static str,
        /// What the child answered.
        got: Option<String>,
    },
}

/// A child and the conversation state with it.
pub struct Session {
    child: ChildProcess,
    shard_id: String,
    timeout: Option<Duration>,
}

impl Session {
    /// Starts the child for a shard. `timeout` bounds each write to the child and each
    /// wait for its next line (`timeoutInSeconds`; `None` waits as long as the child
    /// takes, as Java does).
    pub fn start(
        spec: &ChildSpec,
        shard_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Session, SessionError> {
        Ok(Session {
            child: ChildProcess::spawn(spec, shard_id)?,
            shard_id: shard_id.to_string(),
            timeout,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// `initialize`; checkpoint requests are refused with `InvalidStateException`.
    pub async fn initialize(
        &mut self,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<(), SessionError> {
        let message = ToChild::initialize(&self.shard_id, checkpoint);
        self.exchange::<NoCheckpointer>(message, Phase::NoCheckpointer, None)
            .await
    }

    /// `processRecords`.
    pub async fn process_records<C: Checkpointing>(
        &mut self,
        input: &ProcessRecordsInput,
        checkpointer: &mut C,
    ) -> Result<(), SessionError> {
        let message = ToChild::ProcessRecords {
            records: input.records.iter().map(JsonRecord::from).collect(),
            millis_behind_latest: input.millis_behind_latest,
        };
        self.exchange(message, Phase::Processing, Some(checkpointer))
            .await
    }

    /// `leaseLost`; checkpoint requests are refused with `InvalidStateException`.
    pub async fn lease_lost(&mut self) -> Result<(), SessionError> {
        self.exchange::<NoCheckpointer>(ToChild::LeaseLost, Phase::NoCheckpointer, None)
            .await
    }

    /// `shardEnded`.
    pub async fn shard_ended<C: Checkpointing>(
        &mut self,
        checkpointer: &mut C,
    ) -> Result<(), SessionError> {
        self.exchange(ToChild::ShardEnded, Phase::ShardEnded, Some(checkpointer))
            .await
    }

    /// `shutdownRequested`, bounded by `grace` as well as the message timeout.
    pub async fn shutdown_requested<C: Checkpointing>(
        &mut self,
        checkpointer: &mut C,
        grace: Duration,
    ) -> Result<(), SessionError> {
        let exchange = self.exchange(
            ToChild::ShutdownRequested,
            Phase::Processing,
            Some(checkpointer),
        );
        match tokio::time::timeout(grace, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Timeout {
                action: "shutdownRequested",
                timeout: grace,
            }),
        }
    }

    /// Closes the child's stdin and waits up to `grace` for it to exit, then kills it.
    pub async fn finish(self, grace: Duration) {
        self.child.finish(grace).await;
    }

    async fn exchange<C: Checkpointing>(
        &mut self,
        message: ToChild,
        phase: Phase,
        mut checkpointer: Option<&mut C>,
    ) -> Result<(), SessionError> {
        let action = message.action();
        let timeout = self.timeout;
        bounded(timeout, action, self.child.send_line(&message.to_line())).await?;
        loop {
            match bounded(timeout, action, self.child.next_message()).await? {
                FromChild::Status { response_for } => {
                    return if response_for.as_deref() == Some(action) {
                        Ok(())
                    } else {
                        Err(SessionError::WrongStatus {
                            expected: action,
                            got: response_for,
                        })
                    };
                }
                FromChild::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                } => {
                    let request =
                        CheckpointRequest::decode(sequence_number.as_deref(), sub_sequence_number);
                    let phase = if checkpointer.is_some() {
                        phase
                    } else {
                        Phase::NoCheckpointer
                    };
                    let outcome = match (plan_checkpoint(phase, request), checkpointer.as_mut()) {
                        (CheckpointAction::Refuse(e), _) => Err(e),
                        (CheckpointAction::AcceptShardEnd, _) => Ok(()),
                        (CheckpointAction::Delivered, Some(c)) => c.checkpoint_delivered().await,
                        (CheckpointAction::At(position), Some(c)) => {
                            c.checkpoint_at(position).await
                        }
                        (_, None) => Err(JavaCheckpointError::InvalidState),
                    };
                    let answer = ToChild::Checkpoint {
                        sequence_number,
                        sub_sequence_number,
                        error: outcome.err().map(|e| e.java_name().to_string()),
                    };
                    bounded(timeout, action, self.child.send_line(&answer.to_line())).await?;
                }
            }
        }
    }
}

/// Bounds one read or write with the child by `timeoutInSeconds`, as the Java daemon
/// bounds each wait for the child's next message (checkpoint writes to the lease table
/// in between do not count against it).
async fn bounded<T>(
    timeout: Option<Duration>,
    action: &'static str,
    io: impl Future<Output = Result<T, ChildError>>,
) -> Result<T, SessionError> {
    match timeout {
        None => Ok(io.await?),
        Some(timeout) => match tokio::time::timeout(timeout, io).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SessionError::Timeout { action, timeout }),
        },
    }
}

/// The checkpointer type of phases that have none.
enum NoCheckpointer {}

impl Checkpointing for NoCheckpointer {
    async fn checkpoint_delivered(&mut self) -> Result<(), JavaCheckpointError> {
        match *self {}
    }
    async fn checkpoint_at(
        &mut self,
        _: ExtendedSequenceNumber,
    ) -> Result<(), JavaCheckpointError> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcl::leases::LostReason;

    #[test]
    fn checkpoint_requests_by_phase() {
        use CheckpointAction::*;
        use JavaCheckpointError::*;
        let at = ExtendedSequenceNumber::at("42", 1);
        let table: Vec<(Phase, CheckpointRequest, CheckpointAction)> = vec![
            (
                Phase::NoCheckpointer,
                CheckpointRequest::LastDelivered,
                Refuse(InvalidState),
            ),
            (
                Phase::NoCheckpointer,
                CheckpointRequest::At(at.clone()),
                Refuse(InvalidState),
            ),
            (
                Phase::NoCheckpointer,
                CheckpointRequest::Invalid("x".into()),
                Refuse(InvalidState),
            ),
            (
                Phase::Processing,
                CheckpointRequest::LastDelivered,
                Delivered,
            ),
            (
                Phase::Processing,
                CheckpointRequest::At(at.clone()),
                At(at.clone()),
            ),
            (
                Phase::Processing,
                CheckpointRequest::ShardEnd,
                Refuse(IllegalArgument),
            ),
            (
                Phase::Processing,
                CheckpointRequest::Invalid("x".into()),
                Refuse(IllegalArgument),
            ),
            (
                Phase::ShardEnded,
                CheckpointRequest::LastDelivered,
                Delivered,
            ),
            (
                Phase::ShardEnded,
                CheckpointRequest::ShardEnd,
                AcceptShardEnd,
            ),
            (Phase::ShardEnded, CheckpointRequest::At(at.clone()), At(at)),
            (
                Phase::ShardEnded,
                CheckpointRequest::Invalid("x".into()),
                Refuse(IllegalArgument),
            ),
        ];
        for (phase, request, expected) in table {
            assert_eq!(
                plan_checkpoint(phase, request.clone()),
                expected,
                "{phase:?} {request:?}"
            );
        }
    }

    #[test]
    fn kcl_checkpoint_errors_map_to_java_exception_names() {
        let shard_id = "s".to_string();
        let store = |source| CheckpointError::Store {
            shard_id: shard_id.clone(),
            source,
        };
        let table: Vec<(CheckpointError, &str)> = vec![
            (
                CheckpointError::LeaseLost {
                    shard_id: shard_id.clone(),
                    reason: LostReason::TakenOver,
                },
                "ShutdownException",
            ),
            (
                CheckpointError::BeyondDelivered {
                    shard_id: shard_id.clone(),
                    requested: "9".into(),
                    delivered: "8".into(),
                },
                "IllegalArgumentException",
            ),
            (
                CheckpointError::BehindLast {
                    shard_id: shard_id.clone(),
                    requested: "1".into(),
                    last: "8".into(),
                },
                "IllegalArgumentException",
            ),
            (
                store(LeaseError::Transient {
                    message: "ProvisionedThroughputExceededException: slow down".into(),
                }),
                "ThrottlingException",
            ),
            (
                store(LeaseError::Transient {
                    message: "ThrottlingException".into(),
                }),
                "ThrottlingException",
            ),
            (
                store(LeaseError::Transient {
                    message: "connection reset".into(),
                }),
                "KinesisClientLibDependencyException",
            ),
            (
                store(LeaseError::Fatal {
                    message: "AccessDeniedException".into(),
                }),
                "KinesisClientLibDependencyException",
            ),
            (
                store(LeaseError::ConditionFailed { key: "s".into() }),
                "ShutdownException",
            ),
        ];
        for (error, name) in table {
            assert_eq!(
                JavaCheckpointError::from_checkpoint_error(&error).java_name(),
                name,
                "{error}"
            );
        }
    }
}
