//! The corpus kept from fuzzing `kcl::kpl` (`kcl-rs/fuzz`, target `deaggregate`; see
//! docs/fuzzing.md), replayed through the fuzz target's own checks so that every input
//! the fuzzer found interesting stays a test in the normal suite.

use std::path::PathBuf;

#[path = "../fuzz/checks/deaggregate.rs"]
mod checks;

#[test]
fn every_kept_deaggregate_input_passes_the_fuzz_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/deaggregate");
    kcl_local::testing::replay_corpus(&dir, 20, checks::check);
}

#[test]
fn the_checks_reach_the_protobuf_parser_through_the_frame() {
    // A framed empty message is magic and digest alone, too short to be an aggregate;
    // a framed key table entry and one record decode to that record.
    assert_eq!(
        kcl::kpl::deaggregate(&checks::frame(b"")),
        Err(kcl::kpl::DeaggregationError::TooShort { len: 20 })
    );
    let message = [
        &[0x0A, 0x01, b'k'][..],
        &[0x1A, 0x05, 0x08, 0x00, 0x1A, 0x01, b'x'],
    ]
    .concat();
    let records = kcl::kpl::deaggregate(&checks::frame(&message)).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (
            records[0].partition_key.as_str(),
            records[0].data.as_slice()
        ),
        ("k", &b"x"[..])
    );
    checks::check(&message);
}
