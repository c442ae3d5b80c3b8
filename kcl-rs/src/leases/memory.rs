//! In-memory lease store (being written).
