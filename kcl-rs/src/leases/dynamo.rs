//! DynamoDB lease store (being written).
