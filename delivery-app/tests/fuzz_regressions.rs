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
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    // A missing or emptied folder must fail, not pass by checking nothing.
    assert!(
        files.len() >= 20,
        "only {} inputs in {}",
        files.len(),
        dir.display()
    );
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if std::panic::catch_unwind(|| checks::check(&data)).is_err() {
            failed.push(file.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(
        failed.is_empty(),
        "inputs failing the fuzz checks: {failed:?}"
    );
}
