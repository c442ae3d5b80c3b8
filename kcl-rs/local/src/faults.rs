//! Fault injection for tests: a loopback HTTP proxy in front of a Kinesis or DynamoDB
//! endpoint (usually the embedded ones) that forwards AWS JSON requests and, as a
//! [`FaultPlan`] says, answers some with throttling or 5xx errors, holds them past the
//! client's timeout, delays them, or drops the connection.
//!
//! Point SDK clients at [`FaultProxy::url`] instead of the endpoint. The plan is shared
//! and can be changed while requests flow, so a test can start a worker healthy, break
//! its DynamoDB for a while and heal it again. Faults are chosen by operation (the
//! `X-Amz-Target` header, e.g. `Kinesis_20131202.GetRecords`), optionally by a fragment
//! of the body, with a seeded probability or for "the next N calls"; the proxy counts
//! calls and injected faults per operation.
//!
//! The proxy is hyper on both sides, HTTP/1.1 only (what the SDK speaks to a plain-HTTP
//! endpoint), and binds 127.0.0.1 only.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kcl::aws::{Clients, Endpoints};
//! use kcl_local::faults::{dynamodb_target, Fault, FaultKind, FaultPlan, FaultProxy, Rule};
//! use kcl_local::{LocalAws, LocalAwsOptions};
//!
//! let aws = LocalAws::start(LocalAwsOptions::default()).await?;
//! let plan = FaultPlan::new(1).with(Rule::dynamodb("ListTables", Fault::throttling_exception()).for_next(1));
//! let dynamodb = FaultProxy::start(&aws.endpoints().dynamodb.unwrap(), plan).await?;
//! let endpoints = Endpoints::local(aws.endpoints().kinesis.unwrap(), dynamodb.url());
//! let clients = Clients::connect(&endpoints).await;
//!
//! // The SDK retries the throttled call; the second attempt is forwarded.
//! clients.dynamodb.list_tables().send().await?;
//! let counts = dynamodb.counts();
//! let list_tables = dynamodb_target("ListTables");
//! assert_eq!(counts.calls(&list_tables), 2);
//! assert_eq!(counts.injected(&list_tables, FaultKind::Throttling), 1);
//! dynamodb.shutdown().await;
//! aws.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod layer;
mod plan;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use layer::{
    Answer, EVENT_STREAM_CONTENT_TYPE, Forward, LayerFuture, ProxyLayer, ProxyRequest,
    ProxyResponse, StreamedBody, action_of,
};
use layer::{Upstream, end_to_end};
pub use plan::{
    Call, DYNAMODB_TARGET_PREFIX, Fault, FaultCounts, FaultInjector, FaultKind, FaultPlan,
    KINESIS_TARGET_PREFIX, Rule, RuleId, dynamodb_target, kinesis_target,
};

/// A running fault-injecting proxy on 127.0.0.1. Stop it with [`FaultProxy::shutdown`];
/// dropping it also stops it (without waiting). Stopping closes open connections.
pub struct FaultProxy<I: FaultInjector = FaultPlan> {
    addr: SocketAddr,
    shared: Arc<Shared<I>>,
    task: Option<JoinHandle<()>>,
}

struct Shared<I> {
    upstream: Upstream,
    injector: I,
    /// Run in order after the injector let a request through; see [`ProxyLayer`].
    layers: Vec<Arc<dyn ProxyLayer>>,
    counts: Mutex<FaultCounts>,
    cancel: CancellationToken,
}

impl<I: FaultInjector> FaultProxy<I> {
    /// Binds 127.0.0.1 on an ephemeral port and forwards every request to
    /// `upstream_url` (`http://host:port`), asking `injector` (usually a [`FaultPlan`])
    /// about each one first. Fails if the URL is not plain `http` with a host, or if
    /// no port can be bound.
    pub async fn start(upstream_url: &str, injector: I) -> std::io::Result<FaultProxy<I>> {
        FaultProxy::start_layered(upstream_url, injector, Vec::new()).await
    }

    /// Like [`FaultProxy::start`], with `layers` stacked behind the injector: a request
    /// the injector lets through (no fault, or latency) goes to `layers[0]`, whose
    /// [`Forward`] leads to `layers[1]`, and so on to the service. See [`ProxyLayer`].
    pub async fn start_layered(
        upstream_url: &str,
        injector: I,
        layers: Vec<Arc<dyn ProxyLayer>>,
    ) -> std::io::Result<FaultProxy<I>> {
        FaultProxy::start_layered_on(0, upstream_url, injector, layers).await
    }

    /// Like [`FaultProxy::start_layered`], listening on 127.0.0.1:`port` (0 picks a
    /// free one): for a proxy that stands where clients expect the service.
    pub async fn start_layered_on(
        port: u16,
        upstream_url: &str,
        injector: I,
        layers: Vec<Arc<dyn ProxyLayer>>,
    ) -> std::io::Result<FaultProxy<I>> {
        let upstream = Upstream::new(parse_upstream(upstream_url)?);
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            injector,
            layers,
            counts: Mutex::new(FaultCounts::default()),
            cancel: CancellationToken::new(),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Ok(FaultProxy {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The URL to give SDK clients, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The injector deciding the faults.
    pub fn injector(&self) -> &I {
        &self.shared.injector
    }

    /// Calls and injected faults so far.
    pub fn counts(&self) -> FaultCounts {
        lock(&self.shared.counts).clone()
    }

    /// Requests received so far for `operation` (an `X-Amz-Target`), faulted or not.
    pub fn calls(&self, operation: &str) -> u64 {
        lock(&self.shared.counts).calls(operation)
    }

    /// Faults of `kind` injected so far into `operation`.
    pub fn injected(&self, operation: &str, kind: FaultKind) -> u64 {
        lock(&self.shared.counts).injected(operation, kind)
    }

    /// Stops accepting, closes open connections and waits for the proxy to stop.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl FaultProxy<FaultPlan> {
    /// The plan; change it at any time (it is shared with every clone).
    pub fn plan(&self) -> &FaultPlan {
        &self.shared.injector
    }
}

impl<I: FaultInjector> Drop for FaultProxy<I> {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl<I: FaultInjector> std::fmt::Debug for FaultProxy<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream.url)
            .field("layers", &self.shared.layers.len())
            .finish()
    }
}

fn lock(counts: &Mutex<FaultCounts>) -> std::sync::MutexGuard<'_, FaultCounts> {
    counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse_upstream(url: &str) -> std::io::Result<String> {
    let invalid = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("fault proxy upstream {url:?}: {why}"),
        )
    };
    let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid("only plain http is supported"));
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
    Ok(format!("http://{authority}"))
}

async fn accept<I: FaultInjector>(listener: TcpListener, shared: Arc<Shared<I>>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::debug!(error = %e, "fault proxy: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one client connection. A fault that closes the connection cancels `close`:
/// the connection (and with it the socket) is then dropped with nothing written.
async fn serve_connection<I: FaultInjector>(stream: TcpStream, shared: Arc<Shared<I>>) {
    let close = CancellationToken::new();
    let service = {
        let shared = Arc::clone(&shared);
        let close = close.clone();
        service_fn(move |request| handle(Arc::clone(&shared), close.clone(), request))
    };
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = close.cancelled() => {}
        _ = shared.cancel.cancelled() => {}
    }
}

type HttpResponse = Response<BoxBody<Bytes, hyper::Error>>;

async fn handle<I: FaultInjector>(
    shared: Arc<Shared<I>>,
    close: CancellationToken,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let operation = request
        .headers()
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (parts, body) = request.into_parts();
    // The whole request is read first, as a service would before acting on it.
    let Ok(body) = body.collect().await.map(|collected| collected.to_bytes()) else {
        return close_unanswered(&close).await;
    };
    let fault = shared.injector.fault_for(&Call {
        operation: &operation,
        body: &body,
    });
    lock(&shared.counts).record(&operation, fault.as_ref().map(Fault::kind));
    if let Some(fault) = &fault {
        tracing::debug!(%operation, ?fault, "fault proxy: injecting");
    }
    let request = ProxyRequest {
        operation,
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers: end_to_end(parts.headers),
        body,
    };
    let forward = |request| Forward::new(&shared.layers, &shared.upstream).send(request);
    match fault {
        None => answer(forward(request).await, &close, None).await,
        Some(Fault::Latency { delay }) => {
            tokio::time::sleep(delay).await;
            answer(forward(request).await, &close, None).await
        }
        Some(Fault::Stall { after }) => answer(forward(request).await, &close, Some(after)).await,
        Some(Fault::Error {
            status,
            code,
            message,
        }) => Ok(into_response(ProxyResponse::aws_error(
            &request.operation,
            status,
            &code,
            &message,
        ))),
        Some(Fault::Timeout { hold }) => {
            tokio::time::sleep(hold).await;
            close_unanswered(&close).await
        }
        Some(Fault::DropConnection) => close_unanswered(&close).await,
        Some(Fault::DropResponse) => {
            let _ = forward(request).await;
            close_unanswered(&close).await
        }
    }
}

/// Writes `answer`, or closes the connection when it says so. A streamed answer
/// stalls after `stall`, if given.
async fn answer(
    answer: Answer,
    close: &CancellationToken,
    stall: Option<Duration>,
) -> Result<HttpResponse, Infallible> {
    match answer {
        Answer::Respond(response) => Ok(into_response_stalling(response, stall)),
        Answer::Close => close_unanswered(close).await,
    }
}

fn into_response(answer: ProxyResponse) -> HttpResponse {
    into_response_stalling(answer, None)
}

fn into_response_stalling(answer: ProxyResponse, stall: Option<Duration>) -> HttpResponse {
    let body = match answer.stream.as_ref().and_then(|s| s.take()) {
        Some(stream) => match stall {
            Some(after) => Stalling::new(stream, after).boxed(),
            None => stream.boxed(),
        },
        None => Full::new(answer.body)
            .map_err(|never| match never {})
            .boxed(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response
}

/// A streamed body that passes frames until a deadline, then none: the connection to
/// the client stays open and silent (until the proxy stops), while the one to the
/// service is closed, so the service sees its subscriber gone — as a network that
/// black-holes one direction of a connection eventually does.
struct Stalling {
    inner: Option<Incoming>,
    /// When the stall starts: compared with the clock on every poll, so that a stall
    /// after zero passes not even a frame that is ready at once (a timer's first poll
    /// may not have fired yet).
    deadline: tokio::time::Instant,
    wake: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Stalling {
    fn new(inner: Incoming, after: Duration) -> Stalling {
        let deadline = tokio::time::Instant::now() + after;
        Stalling {
            inner: Some(inner),
            deadline,
            wake: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl hyper::body::Body for Stalling {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if self.inner.is_some()
            && (tokio::time::Instant::now() >= self.deadline
                || self.wake.as_mut().poll(cx).is_ready())
        {
            tracing::debug!("fault proxy: stream stalled");
            self.inner = None;
        }
        match self.inner.as_mut() {
            Some(inner) => std::pin::Pin::new(inner).poll_frame(cx),
            None => std::task::Poll::Pending,
        }
    }
}

/// Closes the connection without an answer: the connection task drops it.
async fn close_unanswered(close: &CancellationToken) -> Result<HttpResponse, Infallible> {
    close.cancel();
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::layer::end_to_end;
    use super::*;
    use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

    fn error_response(operation: &str, status: u16, code: &str, message: &str) -> HttpResponse {
        into_response(ProxyResponse::aws_error(operation, status, code, message))
    }

    #[test]
    fn upstream_must_be_plain_http_with_a_host() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:4567").unwrap(),
            "http://127.0.0.1:4567"
        );
        assert_eq!(
            parse_upstream("http://127.0.0.1:4567/").unwrap(),
            "http://127.0.0.1:4567"
        );
        for bad in ["https://127.0.0.1:1", "127.0.0.1:4567", "", "http://"] {
            assert!(parse_upstream(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("x-amz-target", "Kinesis_20131202.GetRecords"),
            ("host", "127.0.0.1:1"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let kept = end_to_end(headers);
        let names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(kept.contains_key("x-amz-target") && kept.contains_key("host"));
    }

    #[test]
    fn error_answers_have_the_aws_json_shape() {
        let response = error_response(
            "DynamoDB_20120810.UpdateItem",
            400,
            "ThrottlingException",
            "slow \"down\"",
        );
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/x-amz-json-1.0"
        );
        let kinesis = error_response("Kinesis_20131202.GetRecords", 500, "InternalFailure", "m");
        assert_eq!(kinesis.status(), 500);
        assert_eq!(
            kinesis.headers()[header::CONTENT_TYPE],
            "application/x-amz-json-1.1"
        );
    }
}
