#!/usr/bin/env python3
"""Renders docs/benchmarks.md from the output of the benches (Python 3 stdlib only).

Used by .ci/bench-report:
  bench_report.py machine            prints the machine's description as JSON
  bench_report.py executables FILE   bench executables from `cargo --message-format=json`
  bench_report.py render DIR --out F renders the report from a log folder DIR

A log folder holds report.env (key=value), machine.json, runs.jsonl (one JSON object per
bench run) and BENCH-RUN.out, the stdout of each run. Every bench prints, beside its
human lines, one line per figure:

  BENCH {"bench": ..., "figure": ..., "label": ..., "unit": ..., "samples": [...],
         "goal": null | {"op": "<=" | ">=", "value": ..., "text": ...}}

Samples of the same figure from several runs are pooled: the report gives their median
and spread (min–max). A goal is MET when every sample meets it (the worst run counts);
the ratios to the goal are given for the median and for the worst sample.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTES = Path(__file__).resolve().parent / "benchmarks-notes.md"

BENCH_TITLES = {
    "lease_coordination": "Lease coordination",
    "consumer": "Consumer",
    "producer": "Producer",
    "delivery": "Delivery end to end",
}

# Every goal the report must judge, so that a bench that failed before printing a
# figure still shows up as NOT MET rather than silently missing.
EXPECTED_GOALS = {
    ("lease_coordination", "failover"): "SIGKILL → last lease owned again",
    ("lease_coordination", "graceful_release"): "SIGTERM (graceful release) → lease owned by another",
    ("lease_coordination", "converge_1_4_cycles"): "taking cycles to converge 1→4 workers",
    ("lease_coordination", "converge_4_8_cycles"): "taking cycles to converge 4→8 workers",
    ("lease_coordination", "conflict_leases_lost"): "renewals under 50% transaction conflicts: leases lost",
    ("lease_coordination", "read_units_per_worker_minute"): "lease-table read capacity per worker per minute",
    ("consumer", "ratio_to_bare"): "kcl-rs worker / bare GetRecords loop",
    ("consumer", "child_start"): "child start after parent end",
    ("consumer", "latency_fan_out_p50"): "put → process_records p50, enhanced fan-out",
    ("consumer", "latency_fan_out_p99"): "put → process_records p99, enhanced fan-out",
    ("consumer", "metrics_cost"): "with a Prometheus recorder / without",
    ("producer", "one_shard_150_of_bound"): "one shard, rate limit 150%: share of the bound",
    ("producer", "one_shard_100_of_bound"): "one shard, rate limit 100%: share of the bound",
    ("delivery", "end_to_end"): "end to end, unpaced",
    ("delivery", "exact"): "statistics equal the ground truth",
    ("delivery", "balance_load_ratio"): "busiest worker's records/s / mean, load balancing",
    ("delivery", "balance_load_moves"): "lease moves per minute after convergence, load balancing",
}


# ---------------------------------------------------------------------------------------
# Machine description (collected when the benches run, kept in the log folder)


def _run(*cmd):
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine():
    cpuinfo = _read("/proc/cpuinfo")
    model = None
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.M)
        if m:
            model = m.group(1).strip()
            break
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    os_release = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read("/etc/os-release"), re.M)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count()
    dirty = _run("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_available": available,
        "ram_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "os": os_release.group(1) if os_release else platform.system(),
        "kernel": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "rustc": _run("rustc", "--version"),
        "git_commit": _run("git", "rev-parse", "HEAD"),
        "git_dirty": bool(dirty),
        "loadavg": _read("/proc/loadavg").split()[:3],
    }


def executables(build_json):
    """name<TAB>executable<TAB>package folder for every bench `cargo bench --no-run` built."""
    for line in _read(build_json).splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = message.get("target") or {}
        if (message.get("reason") == "compiler-artifact" and "bench" in target.get("kind", [])
                and message.get("executable")):
            package = Path(message["manifest_path"]).parent
            print(f"{target['name']}\t{message['executable']}\t{package}")


# ---------------------------------------------------------------------------------------
# Reading a log folder


def read_env(path):
    env = {}
    for line in _read(path).splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


def parse_output(text, source):
    """Splits a run's stdout into its human lines and its BENCH records."""
    human, records = [], []
    for line in text.splitlines():
        if line.startswith("BENCH "):
            try:
                record = json.loads(line[len("BENCH "):])
            except json.JSONDecodeError as e:
                raise SystemExit(f"{source}: unreadable BENCH line ({e}): {line}")
            for key in ("bench", "figure", "label", "unit", "samples"):
                if key not in record:
                    raise SystemExit(f"{source}: BENCH line without {key!r}: {line}")
            records.append(record)
        else:
            human.append(line)
    return human, records


class Figure:
    def __init__(self, record):
        self.bench = record["bench"]
        self.figure = record["figure"]
        self.label = record["label"]
        self.unit = record["unit"]
        self.goal = record.get("goal")
        self.samples = []
        self.unmeasured = 0
        self.runs = set()

    def add(self, record, run):
        if record.get("goal") != self.goal or record["unit"] != self.unit:
            raise SystemExit(
                f"{self.bench}/{self.figure}: runs disagree on its unit or goal")
        # A sample the bench could not compute (NaN, infinity) arrives as null.
        self.samples.extend(s for s in record["samples"] if s is not None)
        self.unmeasured += sum(1 for s in record["samples"] if s is None)
        self.runs.add(run)


def collect(logs):
    runs = [json.loads(line) for line in _read(logs / "runs.jsonl").splitlines() if line.strip()]
    figures = {}  # (bench, figure) -> Figure, in the order they were printed
    outputs = {}  # bench -> [(run, human lines)]
    for run in runs:
        path = logs / f"{run['bench']}-{run['run']}.out"
        human, records = parse_output(_read(path), path)
        outputs.setdefault(run["bench"], []).append((run, human))
        for record in records:
            key = (record["bench"], record["figure"])
            if key not in figures:
                figures[key] = Figure(record)
            figures[key].add(record, run["run"])
    return runs, figures, outputs


# ---------------------------------------------------------------------------------------
# Rendering


def fmt(value, integral=False, unit=""):
    if value is None:
        return "—"
    if unit.startswith("%") and not integral:
        return f"{value:,.1f}"
    if integral or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_goal_value(value):
    text = f"{value:,.2f}".rstrip("0").rstrip(".")
    return text


def meets(value, goal):
    return value <= goal["value"] if goal["op"] == "<=" else value >= goal["value"]


def fmt_ratio(ratio):
    return "—" if ratio is None else f"{ratio:.2f}"


def judge(fig):
    """(median/goal, worst/goal, met) for a figure with a goal and samples."""
    goal = fig.goal
    worst = max(fig.samples) if goal["op"] == "<=" else min(fig.samples)
    median = statistics.median(fig.samples)
    met = all(meets(s, goal) for s in fig.samples)
    ratio = (lambda v: v / goal["value"]) if goal["value"] else (lambda v: None)
    return ratio(median), ratio(worst), met


def cells(fig):
    """Median, spread and runs/samples cells."""
    s = fig.samples
    count = f"{len(fig.runs)} / {len(s)}"
    if fig.unmeasured:
        count += f" (+{fig.unmeasured} not measurable)"
    if fig.unit == "exact":
        good = sum(1 for v in s if v >= 1)
        return f"{good} of {len(s)} exact", "—", count
    integral = all(float(v).is_integer() for v in s)
    median = statistics.median(s)
    u = fig.unit
    spread = f"{fmt(min(s), integral, u)} – {fmt(max(s), integral, u)}" if len(s) > 1 else "(one sample)"
    median = fmt(median, integral and float(median).is_integer(), u)
    return median, spread, count


def esc(text):
    return text.replace("|", "\\|")


def goal_table(figures, selected):
    rows = [
        "| Bench | Figure | Unit | Median | Spread (min – max) | Runs / samples | Goal "
        "| Median / goal | Worst / goal | Verdict |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    met_count = total = 0
    keys = [k for k, f in figures.items() if f.goal]
    keys += [k for k in EXPECTED_GOALS if k not in figures]
    for key in keys:
        total += 1
        fig = figures.get(key)
        if fig is None or not fig.samples:
            bench = key[0]
            why = ("not run: left out with --only" if bench not in selected
                   else "no data: the bench did not print it; see Runs")
            label = fig.label if fig else EXPECTED_GOALS[key]
            rows.append(f"| {bench} | {esc(label)} | | | | | | | | **NOT MET** ({why}) |")
            continue
        median, spread, count = cells(fig)
        r_median, r_worst, met = judge(fig)
        met_count += met
        op = "≤" if fig.goal["op"] == "<=" else "≥"
        goal = f"{op} {fmt_goal_value(fig.goal['value'])}"
        text = fig.goal.get("text") or goal
        if text != goal and not text.startswith(goal + " "):
            goal += f" ({esc(text)})"
        verdict = "**MET**" if met else "**NOT MET**"
        if not met and meets(statistics.median(fig.samples), fig.goal):
            missed = sum(1 for s in fig.samples if not meets(s, fig.goal))
            verdict += f" (met at the median; {missed} of {len(fig.samples)} samples miss it)"
        rows.append(
            f"| {fig.bench} | {esc(fig.label)} | {esc(fig.unit)} | {median} | {spread} | {count} "
            f"| {goal} | {fmt_ratio(r_median)} | {fmt_ratio(r_worst)} | {verdict} |")
    return rows, met_count, total


def plain_table(figures):
    rows = [
        "| Bench | Figure | Unit | Median | Spread (min – max) | Runs / samples |",
        "|---|---|---|---:|---:|---:|",
    ]
    for fig in figures.values():
        if fig.goal or not fig.samples:
            continue
        median, spread, count = cells(fig)
        rows.append(
            f"| {fig.bench} | {esc(fig.label)} | {esc(fig.unit)} | {median} | {spread} | {count} |")
    return rows


def duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def summary(env, mach, runs, figures, selected):
    quick = env.get("quick") == "1"
    out = []
    if quick:
        out += [
            "> **QUICK SMOKE RUN — NOT A BENCHMARK REPORT.** Made with `--quick`: tiny",
            "> settings that only check the plumbing. The figures mean nothing; do not",
            "> commit this file as docs/benchmarks.md.",
            "",
        ]
    commit = mach.get("git_commit") or "unknown"
    if mach.get("git_dirty"):
        commit += " plus uncommitted changes"
    cores = f"{mach.get('cores')} cores"
    if mach.get("cores_available") not in (None, mach.get("cores")):
        cores += f" ({mach['cores_available']} available to the benches)"
    total = env.get("total_seconds")
    build = env.get("build_seconds")
    out += [
        f"- Date: {env.get('started', '?').replace('T', ' ').replace('Z', ' UTC')}"
        + (f"; took {duration(total)} (release build {duration(build)})" if total and build else ""),
        f"- Command: `{env.get('command', '.ci/bench-report')}`",
        f"- Machine: {mach.get('cpu_model')}, {cores}, {mach.get('ram_gib')} GiB RAM; "
        f"{mach.get('os')}, {mach.get('kernel')} ({mach.get('arch')}); load average at the start "
        f"{' / '.join(mach.get('loadavg') or ['?'])} (1 / 5 / 15 min)",
        f"- Toolchain: {mach.get('rustc') or 'rustc unknown'}; release build (`cargo bench`)",
        f"- Commit: {commit}",
        "",
        "Every figure ran on this machine in this one invocation. Median and spread (min – max)",
        "are over every sample of every run: a bench that repeats trials or rounds inside one",
        "run contributes them all; the benches that measure a figure once per run were run",
        "several times (Runs / samples). A goal is **MET** when every sample meets it, the",
        "worst one included; the ratios divide the median and the worst sample by the goal",
        "(≤ goals: below 1 is better; ≥ goals: above 1 is better).",
        "",
        "## Goals",
        "",
    ]
    failed = [f"{r['bench']} run {r['run']}" for r in runs if r["status"] != 0]
    if failed:
        out += [f"**Some runs FAILED** ({', '.join(failed)}): see Runs and their output below.", ""]
    rows, met, total_goals = goal_table(figures, selected)
    out += rows + ["", f"{met} of {total_goals} goals met.", "", "## Figures without a goal", ""]
    out += plain_table(figures)
    out += [
        "",
        "## Runs",
        "",
        "| Bench | Settings | Run | Time | Load average before (1 / 5 / 15 min) | Exit |",
        "|---|---|---:|---:|---|---|",
    ]
    for run in runs:
        status = "ok" if run["status"] == 0 else f"**FAILED ({run['status']})**"
        out.append(
            f"| {run['bench']} | `{run['settings']}` | {run['run']} | {duration(run['seconds'])} "
            f"| {run['load_before'].replace(' ', ' / ')} | {status} |")
    not_run = [b for b in BENCH_TITLES if b not in selected]
    if not_run:
        out += ["", f"Not run (`--only`): {', '.join(not_run)}."]
    return out


def outputs_block(bench, runs, outputs, quick):
    items = outputs.get(bench, [])
    if not items:
        return ["*Not run in this report.*"]
    first = items[0][0]
    n = len(items)
    exe = f" (the executable built once at the start, `{first['executable']}`)" if first.get("executable") else ""
    out = [
        f"This report ran `{first['command']}` {'once' if n == 1 else f'{n} times'}"
        + (" with QUICK settings" if quick else "") + exe + ".",
        "",
        f"<details><summary>Output of the run{'s' if n > 1 else ''}, as printed</summary>",
        "",
        "```",
    ]
    for i, (run, human) in enumerate(items):
        if n > 1:
            if i:
                out.append("")
            out.append(f"# run {run['run']} of {n} ({duration(run['seconds'])}, exit {run['status']})")
        out += [line for line in human if line.strip()]
    out += ["```", "", "</details>"]
    return out


def render(logs, out_path):
    logs = Path(logs)
    env = read_env(logs / "report.env")
    if not env:
        raise SystemExit(f"{logs}: no report.env; not a bench-report log folder")
    mach = json.loads(_read(logs / "machine.json") or "{}")
    runs, figures, outputs = collect(logs)
    selected = env.get("benches", " ".join(BENCH_TITLES)).split()
    quick = env.get("quick") == "1"
    if out_path is None:
        out_path = str(logs / "benchmarks.md") if quick else str(ROOT / "docs" / "benchmarks.md")
    if quick and out_path != "-" and Path(out_path).resolve() == ROOT / "docs" / "benchmarks.md":
        raise SystemExit("a --quick run is a smoke test, not a report: "
                         "it is never written to docs/benchmarks.md (use --out elsewhere)")

    template = NOTES.read_text()
    lines = []
    for line in template.splitlines():
        m = re.fullmatch(r"<!-- report:(\w+)(?: (\w+))? -->", line.strip())
        if not m:
            lines.append(line)
        elif m.group(1) == "summary":
            lines += summary(env, mach, runs, figures, selected)
        elif m.group(1) == "output":
            lines += outputs_block(m.group(2), runs, outputs, quick)
        elif m.group(1) == "title":
            lines.append("# Benchmarks" + (" — QUICK SMOKE RUN, NOT A REPORT" if quick else ""))
        else:
            raise SystemExit(f"{NOTES}: unknown marker {line}")
    text = "\n".join(lines).rstrip() + "\n"
    if out_path == "-":
        sys.stdout.write(text)
    else:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("machine", help="print the machine's description as JSON")
    e = sub.add_parser("executables", help="list the bench executables a build made")
    e.add_argument("build_json", help="the output of cargo bench --no-run --message-format=json")
    r = sub.add_parser("render", help="render the report from a log folder")
    r.add_argument("logs", help="the log folder .ci/bench-report wrote")
    r.add_argument("--out", help="where to write the report ('-' for stdout; default "
                   "docs/benchmarks.md, or the log folder for a --quick run)")
    args = parser.parse_args()
    if args.command == "machine":
        json.dump(machine(), sys.stdout, indent=2)
        print()
    elif args.command == "executables":
        executables(args.build_json)
    else:
        render(args.logs, args.out)


if __name__ == "__main__":
    main()
