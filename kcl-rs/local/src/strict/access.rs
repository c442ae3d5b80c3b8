//! The IAM layer of strict mode: every request to either service is authorised against
//! the policy of the principal that signed it (see [`super::iam`]), before any other
//! strict rule, as AWS authorises before it throttles.
//!
//! A Kinesis `GetRecords` names only its iterator, and a `ListShards` continued with a
//! `NextToken` only the token: the stream is the one the Kinesis layer remembers for
//! them. When it does not know (an iterator made around the proxy, or older than the
//! iterator lifetime), the request is forwarded unchecked and the service answers it
//! as it would any unknown iterator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Value, json};

use super::iam::{self, ArnScope, Principals, RequestError};
use super::kinesis::StrictKinesis;
use super::{RefusalKind, Refusals};
use crate::faults::{
    Answer, DYNAMODB_TARGET_PREFIX, Forward, LayerFuture, ProxyLayer, ProxyRequest, ProxyResponse,
    action_of,
};
use kcl::aws::LOCAL_REGION;

/// The strict IAM [`ProxyLayer`], one for both proxies. Principals can change at run
/// time.
#[derive(Debug)]
pub struct StrictIam {
    principals: RwLock<Principals>,
    account_id: String,
    kinesis: Option<Arc<StrictKinesis>>,
    refusals: Arc<Refusals>,
    /// Requests of restricted principals checked (allowed or denied), per
    /// `X-Amz-Target`: a test that sees no refusal can tell "allowed" from "unchecked".
    checked: Mutex<BTreeMap<String, u64>>,
}

impl StrictIam {
    /// A layer restricting `principals`, in account `account_id`, asking `kinesis` for
    /// the streams of iterators and tokens, counting refusals in `refusals`.
    pub fn new(
        principals: Principals,
        account_id: String,
        kinesis: Option<Arc<StrictKinesis>>,
        refusals: Arc<Refusals>,
    ) -> StrictIam {
        StrictIam {
            principals: RwLock::new(principals),
            account_id,
            kinesis,
            refusals,
            checked: Mutex::new(BTreeMap::new()),
        }
    }

    /// Requests of restricted principals checked so far for `operation` (an
    /// `X-Amz-Target`, or the bare action such as `"GetRecords"`), allowed or denied.
    /// Requests whose resource could not be told (an unknown iterator) are not counted.
    pub fn checked(&self, operation: &str) -> u64 {
        self.checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .filter(|(target, _)| {
                target.as_str() == operation
                    || (!operation.contains('.') && action_of(target) == operation)
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// The principals in force.
    pub fn principals(&self) -> Principals {
        self.principals
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the principals, from the next request on.
    pub fn set_principals(&self, principals: Principals) {
        *self
            .principals
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = principals;
    }

    /// The answer to send in place of `request` when it is denied; `None` lets it pass.
    fn denial(&self, request: &ProxyRequest) -> Option<Answer> {
        let credential = request
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(iam::parse_authorization);
        let principals = self
            .principals
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let credential = credential.filter(|c| principals.get(&c.access_key_id).is_some())?;
        let region = if credential.region.is_empty() {
            LOCAL_REGION.to_string()
        } else {
            credential.region.clone()
        };
        let scope = ArnScope {
            region,
            account: self.account_id.clone(),
        };
        let known_stream = self.implicit_stream(request);
        let permissions = match iam::required_permissions(
            &request.operation,
            &request.body,
            &scope,
            known_stream.as_deref(),
        ) {
            Ok(permissions) => permissions,
            Err(RequestError::UnknownStream(_)) => return None,
            // Malformed: the service refuses it with its own validation error.
            Err(why) => {
                tracing::debug!(operation = %request.operation, %why, "strict IAM: not checked");
                return None;
            }
        };
        *self
            .checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(request.operation.clone())
            .or_default() += 1;
        match principals.authorize(
            Some(&credential.access_key_id),
            &permissions,
            &self.account_id,
        ) {
            Ok(()) => None,
            Err(denied) => {
                tracing::debug!(operation = %request.operation, message = %denied.message, "strict IAM: denied");
                self.refusals
                    .record(&request.operation, RefusalKind::AccessDenied);
                Some(Answer::Respond(access_denied(
                    &request.operation,
                    &denied.message,
                )))
            }
        }
    }

    /// The stream a Kinesis request names only through an iterator or a token.
    fn implicit_stream(&self, request: &ProxyRequest) -> Option<String> {
        let kinesis = self.kinesis.as_ref()?;
        let body = request.json()?;
        match request.action() {
            "GetRecords" => kinesis.stream_of_iterator(body.get("ShardIterator")?.as_str()?),
            "ListShards" => kinesis.stream_of_list_token(body.get("NextToken")?.as_str()?),
            _ => None,
        }
    }
}

/// The 400 `AccessDeniedException` each service sends: DynamoDB's with its Coral type
/// name and `Message`, Kinesis's plain.
fn access_denied(operation: &str, message: &str) -> ProxyResponse {
    let body: Value = if operation.starts_with(DYNAMODB_TARGET_PREFIX) {
        json!({
            "__type": format!("com.amazon.coral.service#{}", iam::AccessDenied::CODE),
            "Message": message,
        })
    } else {
        json!({ "__type": iam::AccessDenied::CODE, "message": message })
    };
    ProxyResponse::aws_error_body(operation, iam::AccessDenied::STATUS, &body)
}

impl ProxyLayer for StrictIam {
    fn call<'a>(&'a self, request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            match self.denial(&request) {
                None => forward.send(request).await,
                Some(denied) => denied,
            }
        })
    }
}
