//! Creating a DynamoDB table keyed by one string hash key unless it exists, and
//! waiting until it is ACTIVE: the lease and worker tables, and applications' own
//! tables beside them (written in transactions fenced by the lease).
//!
//! Describe first, create only when absent: a worker restarting against existing
//! tables needs no `dynamodb:CreateTable`, and workers starting together that all find
//! the table absent race harmlessly (the losers get `ResourceInUseException` and wait
//! for ACTIVE like everyone else). An existing table with another key schema belongs to
//! something else and is refused rather than written into.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TableDescription, TableStatus,
};
use tokio::time::Instant;

/// Why [`ensure_hash_key_table`] failed. The SDK errors are kept whole so that each
/// caller classifies them as it classifies its other calls (retry or give up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// `DescribeTable` failed (other than "not found").
    #[error("DescribeTable {table} failed")]
    Describe {
        /// The table.
        table: String,
        /// The SDK's error.
        source: Box<SdkError<DescribeTableError>>,
    },
    /// `CreateTable` failed (other than "already exists").
    #[error("CreateTable {table} failed")]
    Create {
        /// The table.
        table: String,
        /// The SDK's error.
        source: Box<SdkError<CreateTableError>>,
    },
    /// The table exists with another key schema.
    #[error("table {table} has key schema [{found}]; expected [{expected}]")]
    KeySchema {
        /// The table.
        table: String,
        /// Its key schema, e.g. `leaseKey HASH (N)`.
        found: String,
        /// The key schema asked for, e.g. `leaseKey HASH (S)`.
        expected: String,
    },
    /// The table did not become ACTIVE within the timeout.
    #[error("table {table} is not ACTIVE after {waited:?} (status {status})")]
    NotActive {
        /// The table.
        table: String,
        /// How long was waited.
        waited: Duration,
        /// Its last status, or `absent`.
        status: String,
    },
}

/// Creates `table` (on-demand capacity) with string hash key `key` unless it exists,
/// and waits until it is ACTIVE with exactly that key schema, for at most `timeout`
/// (polling with backoff from 50 ms to 1 s).
pub async fn ensure_hash_key_table(
    client: &Client,
    table: &str,
    key: &str,
    timeout: Duration,
) -> Result<(), TableError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let status = match describe(client, table).await? {
            Some(description) => {
                check_key_schema(table, key, &description)?;
                description.table_status
            }
            None => {
                create(client, table, key).await?;
                None
            }
        };
        if status == Some(TableStatus::Active) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TableError::NotActive {
                table: table.to_string(),
                waited: timeout,
                status: status.map_or("absent".to_string(), |s| s.as_str().to_string()),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

async fn describe(client: &Client, table: &str) -> Result<Option<TableDescription>, TableError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => Ok(out.table),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(source) => Err(TableError::Describe {
            table: table.to_string(),
            source: Box::new(source),
        }),
    }
}

async fn create(client: &Client, table: &str, key: &str) -> Result<(), TableError> {
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("name and type are set"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .expect("name and key type are set"),
        )
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        // Another worker starting at the same time created it first; the caller goes
        // on to wait for ACTIVE and check its schema like any existing table.
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(source) => Err(TableError::Create {
            table: table.to_string(),
            source: Box::new(source),
        }),
    }
}

/// A table whose key is not exactly `key` (S, hash) belongs to something else; writing
/// into it would corrupt it or fail on every call.
fn check_key_schema(
    table: &str,
    key: &str,
    description: &TableDescription,
) -> Result<(), TableError> {
    let type_of = |name: &str| {
        description
            .attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == name)
            .map(|d| d.attribute_type().as_str().to_string())
            .unwrap_or_else(|| "?".to_string())
    };
    let found: Vec<String> = description
        .key_schema()
        .iter()
        .map(|k| {
            format!(
                "{} {} ({})",
                k.attribute_name(),
                k.key_type().as_str(),
                type_of(k.attribute_name())
            )
        })
        .collect();
    let expected = format!("{key} HASH (S)");
    if found == [expected.as_str()] {
        Ok(())
    } else {
        Err(TableError::KeySchema {
            table: table.to_string(),
            found: found.join(", "),
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::LeaseError;

    #[test]
    fn key_schema_must_be_the_lease_key() {
        let description = |name: &str, ty: ScalarAttributeType| {
            TableDescription::builder()
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(name)
                        .key_type(KeyType::Hash)
                        .build()
                        .unwrap(),
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ty)
                        .build()
                        .unwrap(),
                )
                .build()
        };
        check_key_schema(
            "t",
            "leaseKey",
            &description("leaseKey", ScalarAttributeType::S),
        )
        .unwrap();
        let err = check_key_schema(
            "t",
            "leaseKey",
            &description("leaseKey", ScalarAttributeType::N),
        )
        .unwrap_err();
        assert_eq!(
            LeaseError::from(err).to_string(),
            "lease table error: table t has key schema [leaseKey HASH (N)]; expected [leaseKey HASH (S)]"
        );
        assert!(
            check_key_schema(
                "t",
                "leaseKey",
                &description("shardId", ScalarAttributeType::S)
            )
            .is_err()
        );
    }
}
