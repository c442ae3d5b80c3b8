//! Lease taking decisions (being written).
