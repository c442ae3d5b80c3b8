//! The proxy's seam: one small trait, [`ProxyLayer`], that sees each whole request and
//! decides what to answer, with a [`Forward`] handle to send it on upstream.
//!
//! Layers are stacked like tower middleware: the first layer given to
//! [`FaultProxy::start_layered`](super::FaultProxy::start_layered) is the outermost, and
//! its `Forward` runs the next layer, and the last one's sends the request to the real
//! service. A layer can thus refuse a request without forwarding it (an AWS error or a
//! closed connection), hold it for a while, rewrite the request, and inspect or rewrite
//! the upstream answer. The [`FaultPlan`](super::FaultPlan) of a proxy runs before all
//! layers, so injected faults stay as they were.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! use kcl::aws::{Clients, Endpoints};
//! use kcl_local::faults::{
//!     Answer, FaultPlan, FaultProxy, Forward, LayerFuture, ProxyLayer, ProxyRequest,
//!     dynamodb_target,
//! };
//! use kcl_local::{LocalAws, LocalAwsOptions};
//!
//! /// Refuses DeleteTable as IAM would, and counts the ListTables answers it saw.
//! #[derive(Default)]
//! struct NoDeletes {
//!     listed: AtomicU64,
//! }
//!
//! impl ProxyLayer for NoDeletes {
//!     fn call<'a>(&'a self, request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a> {
//!         Box::pin(async move {
//!             if request.operation == dynamodb_target("DeleteTable") {
//!                 return Answer::aws_error(
//!                     &request.operation,
//!                     400,
//!                     "AccessDeniedException",
//!                     "not authorized to perform: dynamodb:DeleteTable",
//!                 );
//!             }
//!             let listing = request.operation == dynamodb_target("ListTables");
//!             let answer = forward.send(request).await;
//!             if let (true, Answer::Respond(response)) = (listing, &answer) {
//!                 if response.status.is_success() && response.json().is_some() {
//!                     self.listed.fetch_add(1, Ordering::Relaxed);
//!                 }
//!             }
//!             answer
//!         })
//!     }
//! }
//!
//! let aws = LocalAws::start(LocalAwsOptions::default()).await?;
//! let layer = Arc::new(NoDeletes::default());
//! let dynamodb = FaultProxy::start_layered(
//!     &aws.endpoints().dynamodb.unwrap(),
//!     FaultPlan::default(),
//!     vec![layer.clone()],
//! )
//! .await?;
//! let endpoints = Endpoints::local(aws.endpoints().kinesis.unwrap(), dynamodb.url());
//! let clients = Clients::connect(&endpoints).await;
//!
//! clients.dynamodb.list_tables().send().await?;
//! assert_eq!(layer.listed.load(Ordering::Relaxed), 1);
//! let denied = clients.dynamodb.delete_table().table_name("t").send().await.unwrap_err();
//! assert_eq!(
//!     aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&denied),
//!     Some("AccessDeniedException")
//! );
//! dynamodb.shutdown().await;
//! aws.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::plan::DYNAMODB_TARGET_PREFIX;

/// What a [`ProxyLayer`] returns: a boxed future of the answer, so layers of different
/// types can be stacked behind `dyn ProxyLayer`.
pub type LayerFuture<'a> = Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;

/// One stage of the proxy: gets each whole request, decides what to answer.
///
/// Implement [`ProxyLayer::call`] with `Box::pin(async move { ... })`. Call
/// [`Forward::send`] at most once (it consumes the handle) to pass the request on, or
/// not at all to answer in its place. A layer holding a request simply awaits before
/// sending; when the proxy stops, the connection and with it the held future are
/// dropped, so a hold never delays a shutdown.
pub trait ProxyLayer: Send + Sync + 'static {
    /// The answer to `request`; `forward` sends it on to the next layer or upstream.
    fn call<'a>(&'a self, request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a>;
}

/// A request as the proxy received it, body read whole.
#[derive(Clone, Debug)]
pub struct ProxyRequest {
    /// The `X-Amz-Target` header, e.g. `Kinesis_20131202.GetRecords`; empty if absent.
    pub operation: String,
    /// The HTTP method (the AWS JSON protocols use `POST`).
    pub method: Method,
    /// Path and query, e.g. `/`.
    pub path: String,
    /// The end-to-end headers, `Authorization` (with the SigV4 credential and so the
    /// caller's access key) included.
    pub headers: HeaderMap,
    /// The body (AWS JSON).
    pub body: Bytes,
}

impl ProxyRequest {
    /// The body parsed as JSON, or `None` if it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The operation without its service prefix: `"GetRecords"` for
    /// `Kinesis_20131202.GetRecords`.
    pub fn action(&self) -> &str {
        action_of(&self.operation)
    }
}

/// The operation name without its service prefix (`Kinesis_20131202.GetRecords` →
/// `GetRecords`); an operation without a prefix is returned as it is.
pub fn action_of(operation: &str) -> &str {
    operation
        .rsplit_once('.')
        .map_or(operation, |(_, action)| action)
}

/// An HTTP answer, body read whole (or, for an event stream, passed through).
#[derive(Clone, Debug)]
pub struct ProxyResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The end-to-end headers (the length is set anew when the answer is written).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// A streamed answer (an event stream, as SubscribeToShard's): passed to the client
    /// as it arrives instead of read whole first; `body` is then empty.
    pub stream: Option<StreamedBody>,
}

/// The content type of an AWS event stream, the one kind of answer the proxy streams.
pub const EVENT_STREAM_CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// An answer body passed through as it arrives. Clones share it; the proxy takes it
/// once, when it answers.
#[derive(Clone)]
pub struct StreamedBody(Arc<std::sync::Mutex<Option<Incoming>>>);

impl StreamedBody {
    fn new(body: Incoming) -> StreamedBody {
        StreamedBody(Arc::new(std::sync::Mutex::new(Some(body))))
    }

    /// The body, unless taken already.
    pub(super) fn take(&self) -> Option<Incoming> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

impl std::fmt::Debug for StreamedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamedBody")
    }
}

impl ProxyResponse {
    /// The body parsed as JSON, or `None` if it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Replaces the body with `value` serialised, keeping status and headers: for a
    /// layer rewriting an answer (filtering records, removing shards).
    pub fn set_json(&mut self, value: &serde_json::Value) {
        self.body = Bytes::from(value.to_string());
    }

    /// An AWS JSON error answer, `{"__type": code, "message": message}`, with the
    /// content type of the service `operation` (an `X-Amz-Target`) belongs to: what
    /// Kinesis and DynamoDB send, and what the SDK parses into an error `code`.
    pub fn aws_error(operation: &str, status: u16, code: &str, message: &str) -> ProxyResponse {
        let body = serde_json::json!({ "__type": code, "message": message });
        ProxyResponse::aws_error_body(operation, status, &body)
    }

    /// An AWS JSON error answer with a body of your own, for errors that carry more
    /// than a code and a message (DynamoDB's `TransactionCanceledException` has
    /// `CancellationReasons`). `body` needs at least `__type` and `message`.
    pub fn aws_error_body(operation: &str, status: u16, body: &serde_json::Value) -> ProxyResponse {
        let content_type = if operation.starts_with(DYNAMODB_TARGET_PREFIX) {
            "application/x-amz-json-1.0"
        } else {
            "application/x-amz-json-1.1"
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            HeaderName::from_static("x-amzn-requestid"),
            HeaderValue::from_static("fault-proxy"),
        );
        ProxyResponse {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            headers,
            body: Bytes::from(body.to_string()),
            stream: None,
        }
    }
}

/// What the proxy does with a request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Write this answer.
    Respond(ProxyResponse),
    /// Close the connection without answering (the client sees a dropped connection).
    Close,
}

impl Answer {
    /// [`ProxyResponse::aws_error`] as an answer.
    pub fn aws_error(operation: &str, status: u16, code: &str, message: &str) -> Answer {
        Answer::Respond(ProxyResponse::aws_error(operation, status, code, message))
    }

    /// The response, if there is one.
    pub fn response(&self) -> Option<&ProxyResponse> {
        match self {
            Answer::Respond(response) => Some(response),
            Answer::Close => None,
        }
    }

    /// The response if there is one and it is a success (2xx), mutable: where a layer
    /// rewrites answers.
    pub fn success_mut(&mut self) -> Option<&mut ProxyResponse> {
        match self {
            Answer::Respond(response) if response.status.is_success() => Some(response),
            _ => None,
        }
    }
}

/// The rest of the stack below a layer: the next layers and the upstream service.
pub struct Forward<'a> {
    rest: &'a [Arc<dyn ProxyLayer>],
    upstream: &'a Upstream,
}

impl<'a> Forward<'a> {
    pub(super) fn new(rest: &'a [Arc<dyn ProxyLayer>], upstream: &'a Upstream) -> Forward<'a> {
        Forward { rest, upstream }
    }

    /// Sends `request` on: through the next layer, or to the service when this is the
    /// last one. An unreachable service or a cut answer comes back as a 502 AWS error.
    pub async fn send(self, request: ProxyRequest) -> Answer {
        match self.rest.split_first() {
            Some((next, rest)) => next.call(request, Forward::new(rest, self.upstream)).await,
            None => Answer::Respond(self.upstream.send(request).await),
        }
    }
}

impl std::fmt::Debug for Forward<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("layers_below", &self.rest.len())
            .field("upstream", &self.upstream.url)
            .finish()
    }
}

/// The service behind the proxy.
pub(super) struct Upstream {
    /// `http://host:port`, without a trailing slash.
    pub(super) url: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Upstream {
    pub(super) fn new(url: String) -> Upstream {
        Upstream {
            url,
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, request: ProxyRequest) -> ProxyResponse {
        let mut upstream = Request::new(Full::new(request.body));
        *upstream.method_mut() = request.method;
        *upstream.headers_mut() = request.headers;
        match format!("{}{}", self.url, request.path).parse() {
            Ok(uri) => *upstream.uri_mut() = uri,
            Err(_) => return bad_gateway(&format!("cannot forward to path {:?}", request.path)),
        }
        let response = match self.client.request(upstream).await {
            Ok(response) => response,
            Err(e) => return bad_gateway(&format!("upstream {}: {e}", self.url)),
        };
        let (parts, body) = response.into_parts();
        let streamed = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes() == EVENT_STREAM_CONTENT_TYPE.as_bytes());
        if streamed {
            return ProxyResponse {
                status: parts.status,
                headers: end_to_end(parts.headers),
                body: Bytes::new(),
                stream: Some(StreamedBody::new(body)),
            };
        }
        match body.collect().await {
            Ok(collected) => ProxyResponse {
                status: parts.status,
                headers: end_to_end(parts.headers),
                body: collected.to_bytes(),
                stream: None,
            },
            Err(e) => bad_gateway(&format!("upstream {} answer cut: {e}", self.url)),
        }
    }
}

/// The headers without the hop-by-hop ones, which concern one connection only. The
/// body is forwarded whole, so its length is set anew by hyper.
pub(super) fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    let hop_by_hop: [HeaderName; 8] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];
    for name in hop_by_hop {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers
}

fn bad_gateway(message: &str) -> ProxyResponse {
    tracing::debug!(%message, "fault proxy: bad gateway");
    ProxyResponse::aws_error("", 502, "BadGateway", &format!("fault proxy: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_lose_their_service_prefix() {
        assert_eq!(action_of("Kinesis_20131202.GetRecords"), "GetRecords");
        assert_eq!(action_of("DynamoDB_20120810.UpdateItem"), "UpdateItem");
        assert_eq!(action_of("GetRecords"), "GetRecords");
        assert_eq!(action_of(""), "");
    }

    #[test]
    fn error_bodies_keep_extra_fields() {
        let body = serde_json::json!({
            "__type": "TransactionCanceledException",
            "message": "Transaction cancelled",
            "CancellationReasons": [{ "Code": "TransactionConflict" }],
        });
        let response =
            ProxyResponse::aws_error_body("DynamoDB_20120810.TransactWriteItems", 400, &body);
        assert_eq!(response.status, 400);
        assert_eq!(response.json().unwrap(), body);
        assert_eq!(
            response.headers[header::CONTENT_TYPE],
            "application/x-amz-json-1.0"
        );
    }
}
