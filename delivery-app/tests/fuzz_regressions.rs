//! The corpus kept from fuzzing the event parser (`delivery-app/fuzz`, target `events`;
//! see docs/fuzzing.md), replayed through the fuzz target's own checks so that every
//! input the fuzzer found interesting stays a test in the normal suite.

use std::path::PathBuf;

// The checks reach the parser as `super::events`, as in the fuzz target.
use delivery_app::events;

#[path = "../fuzz/checks/events.rs"]
mod checks;

#[test]
fn every_kept_events_input_passes_the_fuzz_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/events");
    kcl_local::testing::replay_corpus(&dir, 20, checks::check);
}
