//! Embedded local AWS: Kinesis (ferrokinesis) and DynamoDB (dynoxide) served in-process
//! over their real wire protocols on 127.0.0.1, for tests, demos and local development.
//!
//! A development crate: kcl-rs's tests and benchmarks, the producer's tests and the
//! delivery application use it; kcl-rs itself compiles no emulator. [`faults`] puts a
//! fault-injecting proxy in front of either server; [`strict`] (on with
//! [`LocalAwsOptions::strict`]) makes both as strict as real AWS.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kcl_local::{LocalAws, LocalAwsOptions};
//!
//! let aws = LocalAws::start(LocalAwsOptions::default()).await?;
//! let clients = aws.clients().await;
//! clients.verify().await?;
//! let streams = clients.kinesis.list_streams().send().await?;
//! assert!(streams.stream_names().is_empty());
//! aws.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use kcl::aws::{Clients, Endpoints};

pub mod faults;
pub mod meter;
pub mod strict;
mod subscribe;
pub mod testing;

use strict::{StrictAws, StrictOptions};

/// Environment variable naming an external Kinesis endpoint (for example kinesis-mock)
/// that [`LocalAwsOptions::from_env`] uses instead of the embedded emulator.
pub const EXTERNAL_KINESIS_ENV: &str = "KCL_TEST_KINESIS_ENDPOINT";

/// Which Kinesis to serve or point at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KinesisBackend {
    /// ferrokinesis, in-process.
    Embedded,
    /// An already running Kinesis-compatible endpoint, e.g. `http://127.0.0.1:4568`.
    External(String),
}

/// How to start [`LocalAws`]. The defaults suit tests: ephemeral ports, in memory.
#[derive(Clone, Debug)]
pub struct LocalAwsOptions {
    /// Kinesis port on 127.0.0.1; 0 picks a free one. In strict mode the strict proxy
    /// listens there, and the server on a free port behind it.
    pub kinesis_port: u16,
    /// DynamoDB port on 127.0.0.1; 0 picks a free one. In strict mode, as `kinesis_port`.
    pub dynamodb_port: u16,
    /// Folder for durable state (`kinesis/` and `dynamodb.sqlite`); `None` keeps all in memory.
    pub data_dir: Option<PathBuf>,
    /// Maximum open shards across all streams (the emulator's default of 10 is too low).
    pub shard_limit: u32,
    /// AWS-like per-shard write limits (1 MiB/s, 1,000 records/s): PutRecord(s) throttle.
    pub enforce_limits: bool,
    /// How long CreateStream, SplitShard, MergeShards and DeleteStream stay in a
    /// transitional state, in milliseconds.
    pub stream_transition_ms: u64,
    /// The Kinesis to use.
    pub kinesis: KinesisBackend,
    /// Seconds a shard iterator stays valid in the embedded Kinesis (real Kinesis: 300).
    /// Tests of iterator expiry lower it; ignored for an external Kinesis.
    pub iterator_ttl_seconds: u64,
    /// How long one SubscribeToShard session of the embedded Kinesis lasts before the
    /// service ends it (real Kinesis: 5 minutes). Tests of session renewal shorten it;
    /// ignored for an external Kinesis.
    pub subscription_session: Duration,
    /// Strict mode: proxies in front of both services refuse what real AWS refuses
    /// (see [`strict`]), and the embedded Kinesis enforces its write limits whatever
    /// `enforce_limits` says. `None` (the default) serves the gentle emulators as they are.
    pub strict: Option<StrictOptions>,
}

impl Default for LocalAwsOptions {
    fn default() -> Self {
        LocalAwsOptions {
            kinesis_port: 0,
            dynamodb_port: 0,
            data_dir: None,
            shard_limit: 512,
            enforce_limits: false,
            stream_transition_ms: 50,
            kinesis: KinesisBackend::Embedded,
            iterator_ttl_seconds: 300,
            subscription_session: Duration::from_secs(300),
            strict: None,
        }
    }
}

impl LocalAwsOptions {
    /// The defaults, except that Kinesis is the external endpoint named by
    /// [`EXTERNAL_KINESIS_ENV`] when that variable is set and not empty. Tests use this so
    /// the same suite runs against the embedded emulator and a second, external one.
    pub fn from_env() -> Self {
        let mut options = LocalAwsOptions::default();
        if let Ok(url) = std::env::var(EXTERNAL_KINESIS_ENV)
            && !url.trim().is_empty()
        {
            options.kinesis = KinesisBackend::External(url.trim().to_string());
        }
        options
    }

    /// [`LocalAwsOptions::from_env`] in strict mode with AWS's limits
    /// ([`StrictOptions::default`]); change them with [`LocalAwsOptions::with_strict`] or
    /// at run time through [`LocalAws::strict`].
    pub fn strict() -> Self {
        LocalAwsOptions::from_env().with_strict(StrictOptions::default())
    }

    /// These options in strict mode with `strict`.
    pub fn with_strict(mut self, strict: StrictOptions) -> Self {
        self.strict = Some(strict);
        self
    }
}

/// Errors starting the local servers.
#[derive(Debug, thiserror::Error)]
pub enum LocalAwsError {
    /// A port could not be bound.
    #[error("cannot bind {service} on 127.0.0.1:{port}: {source}")]
    Bind {
        /// Which server.
        service: &'static str,
        /// The port asked for.
        port: u16,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data folder or database file could not be opened.
    #[error("cannot open local {service} state in {path}: {message}")]
    State {
        /// Which server.
        service: &'static str,
        /// The path.
        path: String,
        /// What failed.
        message: String,
    },
}

/// How long [`LocalAws::shutdown`] waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Running local AWS servers. Stop them with [`LocalAws::shutdown`]; dropping the value
/// also stops them (without waiting).
pub struct LocalAws {
    kinesis_url: String,
    dynamodb_addr: SocketAddr,
    kinesis_addr: Option<SocketAddr>,
    strict: Option<StrictAws>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalAws {
    /// Binds both servers on 127.0.0.1 and starts serving. Returns once both listen.
    pub async fn start(options: LocalAwsOptions) -> Result<LocalAws, LocalAwsError> {
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        // In strict mode the asked ports are the proxies': clients connect there.
        let (kinesis_port, dynamodb_port) = match options.strict {
            Some(_) => (0, 0),
            None => (options.kinesis_port, options.dynamodb_port),
        };

        let dynamo_listener = bind("DynamoDB", dynamodb_port).await?;
        let dynamodb_addr = local_addr("DynamoDB", &dynamo_listener, dynamodb_port)?;
        let db = match &options.data_dir {
            Some(dir) => {
                create_dir(dir, "DynamoDB")?;
                let path = dir.join("dynamodb.sqlite");
                dynoxide::Database::new(&path.to_string_lossy()).map_err(|e| {
                    LocalAwsError::State {
                        service: "DynamoDB",
                        path: path.display().to_string(),
                        message: e.to_string(),
                    }
                })?
            }
            None => dynoxide::Database::memory().map_err(|e| LocalAwsError::State {
                service: "DynamoDB",
                path: ":memory:".into(),
                message: e.to_string(),
            })?,
        };
        tasks.push(serve_dynamodb(dynamo_listener, db, cancel.clone())?);

        let (kinesis_url, kinesis_addr) = match &options.kinesis {
            KinesisBackend::External(url) => (url.clone(), None),
            KinesisBackend::Embedded => {
                let listener = bind("Kinesis", kinesis_port).await?;
                let addr = local_addr("Kinesis", &listener, kinesis_port)?;
                let (app, subscriptions) = kinesis_app(&options)?;
                subscriptions.connect(&format!("http://{addr}")).await;
                let stop = cancel.clone();
                tasks.push(tokio::spawn(async move {
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "local Kinesis server failed");
                    }
                }));
                (format!("http://{addr}"), Some(addr))
            }
        };

        let strict = match &options.strict {
            Some(strict) => {
                let dynamodb_url = format!("http://{dynamodb_addr}");
                let ports = (options.kinesis_port, options.dynamodb_port);
                let proxies = StrictAws::start_on(strict, ports, &kinesis_url, &dynamodb_url);
                Some(proxies.await.map_err(|source| LocalAwsError::Bind {
                    service: "strict proxies",
                    port: options.kinesis_port,
                    source,
                })?)
            }
            None => None,
        };

        Ok(LocalAws {
            kinesis_url,
            dynamodb_addr,
            kinesis_addr,
            strict,
            cancel,
            tasks,
        })
    }

    /// Endpoint URLs for [`Clients::connect`] or for other processes: in strict mode
    /// those of the strict proxies.
    pub fn endpoints(&self) -> Endpoints {
        match &self.strict {
            Some(strict) => strict.endpoints(),
            None => self.direct_endpoints(),
        }
    }

    /// The servers' own endpoints, around the strict proxies if any: for setting up
    /// and looking without meeting strict limits.
    pub fn direct_endpoints(&self) -> Endpoints {
        Endpoints::local(
            self.kinesis_url.clone(),
            format!("http://{}", self.dynamodb_addr),
        )
    }

    /// The strict proxies (refusal counts, retention and limits to change at run
    /// time), or `None` when strict mode is off.
    pub fn strict(&self) -> Option<&StrictAws> {
        self.strict.as_ref()
    }

    /// The embedded Kinesis address (not the strict proxy's), or `None` when Kinesis is
    /// external.
    pub fn kinesis_addr(&self) -> Option<SocketAddr> {
        self.kinesis_addr
    }

    /// The DynamoDB address (not the strict proxy's).
    pub fn dynamodb_addr(&self) -> SocketAddr {
        self.dynamodb_addr
    }

    /// SDK clients pointed at these servers.
    pub async fn clients(&self) -> Clients {
        Clients::connect(&self.endpoints()).await
    }

    /// SDK clients like [`LocalAws::clients`], signed with `access_key_id`: in strict
    /// mode, the IAM principal bound to that key in
    /// [`StrictOptions::principals`](strict::StrictOptions::principals) (or set with
    /// [`StrictIam::set_principals`](strict::StrictIam::set_principals)) is who calls.
    pub async fn clients_as(&self, access_key_id: &str) -> Clients {
        Clients::connect_as(&self.endpoints(), access_key_id).await
    }

    /// Stops accepting connections, lets requests in flight finish, and waits for both
    /// servers to stop: at most [`SHUTDOWN_GRACE`], after which connections still open
    /// (clients keep idle connections for reuse) are dropped. Every accepted write is
    /// already stored by then, so a `data_dir` loses nothing.
    pub async fn shutdown(mut self) {
        if let Some(strict) = self.strict.take() {
            strict.shutdown().await;
        }
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for mut task in self.tasks.drain(..) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for LocalAws {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn kinesis_app(
    options: &LocalAwsOptions,
) -> Result<(axum::Router, subscribe::Subscriptions), LocalAwsError> {
    let durable = match &options.data_dir {
        Some(dir) => {
            let state_dir = dir.join("kinesis");
            create_dir(&state_dir, "Kinesis")?;
            // ferrokinesis appends the whole state to its write-ahead log at every
            // change and empties the log at each snapshot: snapshots every second keep
            // the log, and so a restart's replay, short.
            Some(ferrokinesis::store::DurableStateOptions {
                state_dir,
                snapshot_interval_secs: 1,
                max_retained_bytes: None,
            })
        }
        None => None,
    };
    let store_options = ferrokinesis::store::StoreOptions {
        create_stream_ms: options.stream_transition_ms,
        delete_stream_ms: options.stream_transition_ms,
        update_stream_ms: options.stream_transition_ms,
        shard_limit: options.shard_limit,
        enforce_limits: options.enforce_limits || options.strict.is_some(),
        iterator_ttl_seconds: options.iterator_ttl_seconds,
        durable,
        ..Default::default()
    };
    let (app, store) = ferrokinesis::create_app(store_options);
    if let Err(e) = store.check_ready() {
        return Err(LocalAwsError::State {
            service: "Kinesis",
            path: options
                .data_dir
                .as_ref()
                .map(|d| d.join("kinesis").display().to_string())
                .unwrap_or_default(),
            message: format!("{e:?}"),
        });
    }
    // A full PutRecords (500 records, 5 MiB of data) is about 7 MB of JSON once base64
    // encoded; real Kinesis takes it, axum's default 2 MB body limit would not.
    let order = Arc::new(tokio::sync::RwLock::new(()));
    // SubscribeToShard is served on GetRecords, in order with the writes: see `subscribe`.
    let subscriptions = subscribe::Subscriptions::new(options.subscription_session);
    let intercepting = subscriptions.clone();
    let app = app
        .layer(axum::middleware::from_fn(move |request, next| {
            reads_after_writes(Arc::clone(&order), request, next)
        }))
        .layer(axum::middleware::from_fn(move |request, next| {
            subscribe::intercept(intercepting.clone(), request, next)
        }))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024));
    Ok((app, subscriptions))
}

/// ferrokinesis gives a PutRecord(s) call its sequence numbers before it stores the
/// records, and a GetRecords that runs in between returns nothing and an iterator past
/// them: a caught-up reader would skip those records for good (with `data_dir` the gap
/// is a whole state write long). Real Kinesis never skips. So here a GetRecords waits
/// until the writes in flight are stored; writes still run concurrently.
async fn reads_after_writes(
    order: Arc<tokio::sync::RwLock<()>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if target.ends_with(".GetRecords") {
        let _exclusive = order.write().await;
        next.run(request).await
    } else if target.ends_with(".PutRecords") || target.ends_with(".PutRecord") {
        let _shared = order.read().await;
        next.run(request).await
    } else {
        next.run(request).await
    }
}

/// Threads of the embedded DynamoDB's own runtime.
const DYNAMODB_THREADS: usize = 2;

/// Serves the embedded DynamoDB on a runtime of its own, until `stop`. It runs each
/// request synchronously, under one lock on its database: on the caller's runtime, a
/// burst of DynamoDB requests would hold every worker thread of it (one running, the
/// others blocked on the lock), and the embedded Kinesis, a producer or a test's own
/// tasks on that runtime would wait for them. The returned task ends when the server
/// has stopped.
fn serve_dynamodb(
    listener: TcpListener,
    db: dynoxide::Database,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, LocalAwsError> {
    let failed = |source| LocalAwsError::Bind {
        service: "DynamoDB",
        port: 0,
        source,
    };
    let listener = listener.into_std().map_err(failed)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(DYNAMODB_THREADS)
        .thread_name("local-dynamodb")
        .enable_all()
        .build()
        .map_err(failed)?;
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("local-dynamodb".into())
        .spawn(move || {
            runtime.block_on(async move {
                let served = match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let shutdown = async move { stop.cancelled().await };
                        dynoxide::server::serve_with_shutdown(listener, db, shutdown)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "local DynamoDB server failed");
                }
            });
            // Connections still open are cut, as a stopped server's would be.
            runtime.shutdown_timeout(SHUTDOWN_GRACE);
            let _ = done.send(());
        })
        .map_err(failed)?;
    Ok(tokio::spawn(async move {
        let _ = stopped.await;
    }))
}

async fn bind(service: &'static str, port: u16) -> Result<TcpListener, LocalAwsError> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| LocalAwsError::Bind {
            service,
            port,
            source,
        })
}

fn local_addr(
    service: &'static str,
    listener: &TcpListener,
    port: u16,
) -> Result<SocketAddr, LocalAwsError> {
    listener.local_addr().map_err(|source| LocalAwsError::Bind {
        service,
        port,
        source,
    })
}

fn create_dir(dir: &std::path::Path, service: &'static str) -> Result<(), LocalAwsError> {
    std::fs::create_dir_all(dir).map_err(|e| LocalAwsError::State {
        service,
        path: dir.display().to_string(),
        message: e.to_string(),
    })
}
