//! The IAM principals of the delivery application on the strict local AWS: one fixed
//! access key id per command, bound to that command's policy in docs/iam-policy.md, so
//! that a strict run exercises exactly the documented policies.
//!
//! The policy document is compiled into the binary ([`POLICY_DOC`]), so `delivery-app
//! local --strict` enforces it from any folder; `--iam-policy FILE` reads another.
//!
//! | access key id | policy (section of docs/iam-policy.md) |
//! | --- | --- |
//! | `delivery-worker` | `## delivery-app worker` |
//! | `delivery-produce` | `## delivery-app produce` |
//! | `delivery-stats` | `## delivery-app stats` |
//! | `delivery-reshard` | `## delivery-app reshard` |
//! | `delivery-create-stream` | `## delivery-app create-stream` |
//!
//! Any other key is unrestricted (the administrator that sets up and looks).
//!
//! ```
//! use delivery_app::principals::{Role, principals};
//! use kcl_local::strict::iam::{ArnScope, required_permissions};
//!
//! let bound = principals(delivery_app::principals::POLICY_DOC, "orders", "stats").unwrap();
//! let scope = ArnScope { region: "us-east-1".into(), account: "000000000000".into() };
//! let put = required_permissions(
//!     "Kinesis_20131202.PutRecords",
//!     br#"{"StreamName": "orders", "Records": []}"#,
//!     &scope,
//!     None,
//! )
//! .unwrap();
//! assert!(bound.authorize(Some(Role::Produce.access_key_id()), &put, "000000000000").is_ok());
//! assert!(bound.authorize(Some(Role::Worker.access_key_id()), &put, "000000000000").is_err());
//! ```

use kcl::aws::LOCAL_REGION;
use kcl_local::strict::DEFAULT_ACCOUNT_ID;
use kcl_local::strict::iam::{Placeholders, Policy, PolicyError, Principals};

/// docs/iam-policy.md, as compiled into the binary.
pub const POLICY_DOC: &str = include_str!("../../docs/iam-policy.md");

/// A command of the application that runs against AWS with a policy of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// `delivery-app worker`.
    Worker,
    /// `delivery-app produce` (and the producer of a scenario).
    Produce,
    /// `delivery-app stats`.
    Stats,
    /// `delivery-app reshard` (and the splits, merges and auto-scaler of a scenario).
    Reshard,
    /// `delivery-app create-stream`.
    CreateStream,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Worker,
        Role::Produce,
        Role::Stats,
        Role::Reshard,
        Role::CreateStream,
    ];

    /// The fixed access key id a process of this role signs with on the local AWS.
    pub fn access_key_id(self) -> &'static str {
        match self {
            Role::Worker => "delivery-worker",
            Role::Produce => "delivery-produce",
            Role::Stats => "delivery-stats",
            Role::Reshard => "delivery-reshard",
            Role::CreateStream => "delivery-create-stream",
        }
    }

    /// The role of the `delivery-app` subcommand `command` (`"worker"`, ...), if it
    /// has one.
    pub fn of_command(command: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|role| role.heading().strip_prefix("delivery-app ") == Some(command))
    }

    /// The heading of its policy's section in docs/iam-policy.md (without `## `).
    pub fn heading(self) -> &'static str {
        match self {
            Role::Worker => "delivery-app worker",
            Role::Produce => "delivery-app produce",
            Role::Stats => "delivery-app stats",
            Role::Reshard => "delivery-app reshard",
            Role::CreateStream => "delivery-app create-stream",
        }
    }

    /// Its policy in `doc` (a Markdown document shaped like docs/iam-policy.md) for
    /// `stream` and `app` on the local AWS (its region and account).
    pub fn policy(self, doc: &str, stream: &str, app: &str) -> Result<Policy, PolicyError> {
        Policy::from_markdown(doc, self.heading(), &placeholders(stream, app))
    }
}

/// The values of the documented placeholders on the local AWS.
pub fn placeholders(stream: &str, app: &str) -> Placeholders {
    Placeholders {
        region: LOCAL_REGION.to_string(),
        account: DEFAULT_ACCOUNT_ID.to_string(),
        stream: stream.to_string(),
        app: app.to_string(),
        // No customer-managed key on the local AWS.
        key_id: String::new(),
    }
}

/// Every role's access key id bound to its policy from `doc`, for `stream` and `app`.
/// The IAM user of a role is named after its key.
pub fn principals(doc: &str, stream: &str, app: &str) -> Result<Principals, PolicyError> {
    Role::ALL
        .into_iter()
        .try_fold(Principals::new(), |bound, role| {
            let policy = role.policy(doc, stream, app)?;
            Ok(bound.with(role.access_key_id(), role.access_key_id(), policy))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_section_and_a_distinct_key() {
        let bound = principals(POLICY_DOC, "s", "a").unwrap();
        let mut keys = std::collections::HashSet::new();
        for role in Role::ALL {
            assert!(keys.insert(role.access_key_id()), "{role:?}");
            let principal = bound.get(role.access_key_id()).expect("bound");
            assert!(!principal.policy.statements().is_empty(), "{role:?}");
        }
        assert!(bound.get("local").is_none(), "other keys stay unrestricted");
        for (command, role) in [
            ("worker", Some(Role::Worker)),
            ("produce", Some(Role::Produce)),
            ("stats", Some(Role::Stats)),
            ("reshard", Some(Role::Reshard)),
            ("create-stream", Some(Role::CreateStream)),
            ("demo", None),
            ("local", None),
        ] {
            assert_eq!(Role::of_command(command), role, "{command}");
        }
    }
}
