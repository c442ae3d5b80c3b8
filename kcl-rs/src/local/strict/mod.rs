//! Strict mode of the local AWS: layers in front of the embedded emulators that refuse
//! what the real services refuse.
//!
//! - [`iam`]: requests checked against IAM policies, per principal (access key id).
//! - [`conflicts`]: DynamoDB transaction conflicts.

pub mod conflicts;
pub mod iam;
