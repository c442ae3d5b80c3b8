//! Fuzzes the delivery event parser, `delivery_app::events::parse`: on the input as it
//! is, and on a valid event mutated as the input's first byte says (so that mutations
//! reach the validation rules, not only the JSON tokenizer).
//!
//! The parser's source is included as it is (it needs only serde and serde_json), so
//! that this build does not compile delivery-app and the AWS SDK. The checks live in
//! `checks/events.rs`, shared with delivery-app's normal test suite
//! (`delivery-app/tests/fuzz_regressions.rs`), which replays the kept corpus.

#![no_main]

use libfuzzer_sys::fuzz_target;

// Only `parse` and what it returns are used here.
#[allow(dead_code)]
#[path = "../../src/events.rs"]
mod events;

#[path = "../checks/events.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
