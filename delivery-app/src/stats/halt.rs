//! How a record processor stops its whole worker: an error no record explains (access
//! denied, a missing table, a refused dead letter) must not be retried for ever by one
//! shard's processor while the others go on; it is recorded here, the worker's token is
//! cancelled, and the worker exits with that error.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The worker's stop token and the first fatal error of its processors.
#[derive(Clone, Debug, Default)]
pub struct Halt {
    token: CancellationToken,
    error: Arc<Mutex<Option<String>>>,
}

impl Halt {
    /// A halt that cancels `token` (the one the worker runs with).
    pub fn new(token: CancellationToken) -> Halt {
        Halt {
            token,
            error: Arc::default(),
        }
    }

    /// The token: cancelled when the worker is asked to stop, for whatever reason.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Records `error` (the first one wins) and stops the worker.
    pub fn fail(&self, shard_id: &str, error: impl std::fmt::Display) {
        let mut slot = self.error.lock().expect("not poisoned");
        if slot.is_none() {
            tracing::error!(shard = shard_id, %error, "stopping the worker");
            *slot = Some(format!("shard {shard_id}: {error}"));
        }
        self.token.cancel();
    }

    /// The error that stopped the worker, if one did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("not poisoned").clone()
    }
}
