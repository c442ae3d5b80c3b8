//! The machine-readable result line the benches print, one per figure, beside their
//! human output: `.ci/bench-report` collects these lines from `cargo bench` and renders
//! `docs/benchmarks.md` from them (median, min–max, ratio to the goal, met or not).

/// Prints `BENCH {json}`: every sample this run measured for one figure, its unit and
/// its goal, if any: `(op, value, text)` with `op` `"<="` or `">="`, `value` in the
/// figure's unit and `text` the goal as the docs word it.
pub fn result_line(
    bench: &str,
    figure: &str,
    label: &str,
    unit: &str,
    samples: &[f64],
    goal: Option<(&str, f64, &str)>,
) {
    let goal =
        goal.map(|(op, value, text)| serde_json::json!({"op": op, "value": value, "text": text}));
    println!(
        "BENCH {}",
        serde_json::json!({
            "bench": bench,
            "figure": figure,
            "label": label,
            "unit": unit,
            "samples": samples,
            "goal": goal,
        })
    );
}
