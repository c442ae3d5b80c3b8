//! Fuzzes KPL deaggregation: `kcl::kpl::deaggregate` on the input as a whole Kinesis
//! record and framed as a valid aggregate (so mutations reach the protobuf parser past
//! the MD5 check), the `Aggregator` re-encoding round trip of whatever decodes, and
//! `kcl::retrieval::deaggregate_records` on SDK records carrying those bytes.
//!
//! The checks live in `checks/deaggregate.rs`, shared with kcl-rs's normal test suite
//! (`kcl-rs/tests/fuzz_regressions.rs`), which replays the kept corpus.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/deaggregate.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
