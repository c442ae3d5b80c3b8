//! IAM for the strict local AWS: which principal signed a request, which permissions
//! the request needs, and whether that principal's policy grants them, answered with
//! AWS's own `AccessDeniedException` when it does not.
//!
//! Principals are told apart by the access key id of the SigV4 `Authorization` header.
//! A [`Principals`] table binds access key ids to a name and a [`Policy`]; a request
//! signed with any other key is unrestricted (the test harness's administrator), so a
//! test restricts exactly the clients it builds for a principal.
//!
//! ```
//! use kcl_local::strict::iam::{ArnScope, Placeholders, Policy, Principals, required_permissions};
//!
//! // A Markdown section holding the policy in a json fence, as docs/iam-policy.md does.
//! let fence = "`".repeat(3);
//! let markdown = format!(
//!     "## Orders writer\n{fence}json\n{}\n{fence}\n",
//!     r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
//!        "Action": ["dynamodb:UpdateItem"],
//!        "Resource": "arn:aws:dynamodb:REGION:ACCOUNT:table/APP"}]}"#
//! );
//! let names = Placeholders {
//!     region: "us-east-1".into(),
//!     account: "000000000000".into(),
//!     stream: "orders".into(),
//!     app: "orders".into(),
//!     key_id: String::new(),
//! };
//! let policy = Policy::from_markdown(&markdown, "Orders writer", &names).unwrap();
//! let principals = Principals::new().with("AKIDWRITER", "writer", policy);
//!
//! // A transaction is authorised per item: Update needs UpdateItem, ConditionCheck
//! // needs ConditionCheckItem, which this policy lacks.
//! let body = br#"{"TransactItems": [
//!     {"Update": {"TableName": "orders", "Key": {"id": {"S": "1"}}, "UpdateExpression": "SET n = :n"}},
//!     {"ConditionCheck": {"TableName": "orders", "Key": {"id": {"S": "2"}}, "ConditionExpression": "attribute_exists(id)"}}]}"#;
//! let scope = ArnScope { region: "us-east-1".into(), account: "000000000000".into() };
//! let needed =
//!     required_permissions("DynamoDB_20120810.TransactWriteItems", body, &scope, None).unwrap();
//! let denied = principals.authorize(Some("AKIDWRITER"), &needed, "000000000000").unwrap_err();
//! assert_eq!(denied.permission.action, "dynamodb:ConditionCheckItem");
//! // Keys not in the table (the test harness's administrator) are not restricted.
//! assert!(principals.authorize(Some("AKIDADMIN"), &needed, "000000000000").is_ok());
//! ```

mod policy;
mod request;

use std::collections::HashMap;

pub use policy::{Decision, Effect, Placeholders, Policy, PolicyError, Statement, wildcard_match};
pub use request::{ArnScope, Permission, RequestError, required_permissions};

/// The credential scope of a SigV4 `Authorization` header:
/// `Credential=AKID/DATE/REGION/SERVICE/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The access key id that signed the request.
    pub access_key_id: String,
    /// The signing date, `YYYYMMDD`.
    pub date: String,
    /// The region signed for.
    pub region: String,
    /// The service signed for (`kinesis`, `dynamodb`).
    pub service: String,
}

/// The credential of a SigV4 `Authorization` header value, e.g.
/// `AWS4-HMAC-SHA256 Credential=AKID/20261202/us-east-1/dynamodb/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=...`; `None` when it is not SigV4.
pub fn parse_authorization(header: &str) -> Option<Credential> {
    let rest = header.trim().strip_prefix("AWS4-HMAC-SHA256")?;
    let credential = rest
        .split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("Credential="))?;
    let mut parts = credential.split('/');
    let (access_key_id, date, region, service, terminator) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if access_key_id.is_empty() || terminator != "aws4_request" || parts.next().is_some() {
        return None;
    }
    Some(Credential {
        access_key_id: access_key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
    })
}

/// An IAM user of the local AWS: its name (for the ARN in error messages) and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name: the principal is `arn:aws:iam::ACCOUNT:user/NAME`.
    pub name: String,
    /// Its identity-based policy.
    pub policy: Policy,
}

/// Access key id → principal. Keys not in the table are unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principals {
    by_access_key: HashMap<String, Principal>,
}

/// A refused request: the permission missing and AWS's message for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDenied {
    /// The permission that was not granted (the first, in the request's order).
    pub permission: Permission,
    /// AWS's message, e.g. `User: arn:aws:iam::000000000000:user/worker is not
    /// authorized to perform: dynamodb:ConditionCheckItem on resource: arn:... because
    /// no identity-based policy allows the dynamodb:ConditionCheckItem action`.
    pub message: String,
}

impl AccessDenied {
    /// The AWS error code of the answer.
    pub const CODE: &'static str = "AccessDeniedException";
    /// The HTTP status of the answer.
    pub const STATUS: u16 = 400;
}

impl Principals {
    /// An empty table: every request is unrestricted.
    pub fn new() -> Principals {
        Principals::default()
    }

    /// This table with `access_key_id` bound to the user `name` with `policy`.
    pub fn with(
        mut self,
        access_key_id: impl Into<String>,
        name: impl Into<String>,
        policy: Policy,
    ) -> Principals {
        self.by_access_key.insert(
            access_key_id.into(),
            Principal {
                name: name.into(),
                policy,
            },
        );
        self
    }

    /// The principal of `access_key_id`, if it is restricted.
    pub fn get(&self, access_key_id: &str) -> Option<&Principal> {
        self.by_access_key.get(access_key_id)
    }

    /// Whether no principal is restricted (then IAM need not look at requests at all).
    pub fn is_empty(&self) -> bool {
        self.by_access_key.is_empty()
    }

    /// Checks `permissions`, in order, for the request signed by `access_key_id`
    /// (`None`: unsigned, treated as unrestricted like any unknown key).
    pub fn authorize(
        &self,
        access_key_id: Option<&str>,
        permissions: &[Permission],
        account: &str,
    ) -> Result<(), AccessDenied> {
        let Some(principal) = access_key_id.and_then(|key| self.get(key)) else {
            return Ok(());
        };
        for permission in permissions {
            let reason = match principal
                .policy
                .decide(&permission.action, &permission.resource)
            {
                Decision::Allowed => continue,
                Decision::ExplicitlyDenied => {
                    "with an explicit deny in an identity-based policy".to_string()
                }
                Decision::ImplicitlyDenied => format!(
                    "because no identity-based policy allows the {} action",
                    permission.action
                ),
            };
            return Err(AccessDenied {
                message: format!(
                    "User: arn:aws:iam::{account}:user/{} is not authorized to perform: {} on resource: {} {reason}",
                    principal.name, permission.action, permission.resource
                ),
                permission: permission.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigv4_credentials_are_parsed() {
        let table = [
            (
                "AWS4-HMAC-SHA256 Credential=AKIDWORKER/20261202/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
                Some(("AKIDWORKER", "20261202", "us-east-1", "dynamodb")),
            ),
            (
                "AWS4-HMAC-SHA256 SignedHeaders=host,Credential=K/d/r/kinesis/aws4_request,Signature=x",
                Some(("K", "d", "r", "kinesis")),
            ),
            ("AWS4-HMAC-SHA256 Credential=/d/r/s/aws4_request", None),
            ("AWS4-HMAC-SHA256 Credential=K/d/r/s/other", None),
            ("AWS4-HMAC-SHA256 Credential=K/d/r/aws4_request", None),
            ("Basic dXNlcjpwYXNz", None),
            ("", None),
        ];
        for (header, expected) in table {
            let got = parse_authorization(header);
            let expected = expected.map(|(k, d, r, s)| Credential {
                access_key_id: k.into(),
                date: d.into(),
                region: r.into(),
                service: s.into(),
            });
            assert_eq!(got, expected, "{header}");
        }
    }

    #[test]
    fn only_restricted_keys_are_checked_and_denials_read_like_aws() {
        let policy = Policy::parse(
            r#"{"Statement":[
                {"Effect":"Allow","Action":["dynamodb:UpdateItem","dynamodb:PutItem"],"Resource":"arn:aws:dynamodb:r:000000000000:table/T"},
                {"Effect":"Deny","Action":"dynamodb:PutItem","Resource":"*"}]}"#,
        )
        .unwrap();
        let principals = Principals::new().with("AKIDWORKER", "worker", policy);
        let table_arn = "arn:aws:dynamodb:r:000000000000:table/T";
        let update = Permission {
            action: "dynamodb:UpdateItem".into(),
            resource: table_arn.into(),
        };
        let check = Permission {
            action: "dynamodb:ConditionCheckItem".into(),
            resource: table_arn.into(),
        };
        let put = Permission {
            action: "dynamodb:PutItem".into(),
            resource: table_arn.into(),
        };
        let account = "000000000000";
        assert_eq!(
            principals.authorize(Some("AKIDWORKER"), std::slice::from_ref(&update), account),
            Ok(())
        );
        assert_eq!(
            principals.authorize(Some("ADMIN"), std::slice::from_ref(&check), account),
            Ok(())
        );
        assert_eq!(
            principals.authorize(None, std::slice::from_ref(&check), account),
            Ok(())
        );

        let denied = principals
            .authorize(
                Some("AKIDWORKER"),
                &[update.clone(), check.clone()],
                account,
            )
            .unwrap_err();
        assert_eq!(denied.permission, check);
        assert_eq!(
            denied.message,
            "User: arn:aws:iam::000000000000:user/worker is not authorized to perform: \
             dynamodb:ConditionCheckItem on resource: arn:aws:dynamodb:r:000000000000:table/T \
             because no identity-based policy allows the dynamodb:ConditionCheckItem action"
        );
        let explicit = principals
            .authorize(Some("AKIDWORKER"), &[put], account)
            .unwrap_err();
        assert!(
            explicit
                .message
                .ends_with("with an explicit deny in an identity-based policy"),
            "{}",
            explicit.message
        );
    }
}
