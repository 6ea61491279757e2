"""Runs every benchmark and writes ``docs/BENCHMARKS.md`` plus a PNG chart.

    .venv/bin/python benchmarks/run_all.py                 # full: about 15-25 min on 2 cores
    .venv/bin/python benchmarks/run_all.py --quick         # smaller sizes, a few minutes

Benchmarks run one after the other (never in parallel: they would measure each other):

- ``submit.py`` at 1, 2 and 4 worker processes: submit rate, end-to-end jobs/s and
  submit-to-start latency percentiles against bare FastAPI + Celery and raw Celery tasks;
- ``imports.py`` at 10k, 100k and 1M rows: Conveyor's import against PostgreSQL ``COPY``;
- ``webhooks.py``: three interleaved rounds of 8k deliveries against a raw async httpx loop
  (the median round counts).

Imports too long for the run (10M rows) are measured on their own and rendered in a section of
their own, next to a run's figures::

    .venv/bin/python benchmarks/imports.py --rows 10000000 --json docs/imports-10m.json
    .venv/bin/python benchmarks/run_all.py --from-json RUN/all.json \
        --separate-imports docs/imports-10m.json

Every figure comes with the baseline measured in the same run; only the ratios carry over to
another machine, which is why the report records this one (cores, memory, CPU model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def machine() -> dict[str, str]:
    """Cores, memory, CPU model, OS and Python of this machine."""
    info = {
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        meminfo = pathlib.Path("/proc/meminfo").read_text()
        kb = int(
            next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal"))
        )
        info["memory"] = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        info["memory"] = "unknown"
    try:
        cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    return info


def run(script: str, args: list[str], out: pathlib.Path, limit: float) -> dict[str, Any] | None:
    """Runs one benchmark script with ``--json out``; returns its figures or ``None``."""
    argv = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)]
    print(f"$ {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    try:
        result = subprocess.run(argv, cwd=ROOT, timeout=limit, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {limit:.0f} s", flush=True)
        return None
    print(result.stdout[-2500:], flush=True)
    if result.returncode != 0 or not out.exists():
        print(f"  failed ({result.returncode}):\n{result.stderr[-2500:]}", flush=True)
        return None
    figures: dict[str, Any] = json.loads(out.read_text())
    figures["_seconds"] = round(time.monotonic() - started, 1)
    return figures


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def submit_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    return list(figures.get("rows", []))


def find(rows: list[dict[str, Any]], needle: str) -> dict[str, Any] | None:
    return next((r for r in rows if needle in r["metric"]), None)


def flat_table(figures: dict[str, Any]) -> list[str]:
    lines = ["| figure | value |", "|---|---|"]
    for key, value in figures.items():
        if key.startswith("_") or isinstance(value, dict | list):
            continue
        lines.append(f"| {key} | {fmt(value)} |")
    return lines


def chart(results: dict[str, Any], path: pathlib.Path) -> bool:
    """Draws throughput ratios, latency percentiles and the scaling curves into one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", flush=True)
        return False
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.8))
    # 1. Throughput vs baseline.
    ratios: dict[str, float] = {}
    base = results.get("submit", {}).get(2)
    if base:
        for needle, label in (("submit rate", "submit"), ("e2e throughput", "end-to-end")):
            row = find(submit_rows(base), needle)
            if row and row["baseline"]:
                ratios[label] = row["conveyor"] / row["baseline"]
    for key, label in (("imports", "import vs COPY"), ("webhooks", "webhooks vs httpx")):
        data = results.get(key)
        if isinstance(data, dict) and key == "imports":
            data = data.get(max(data)) if data else None
        if data and data.get("ratio"):
            ratios[label] = float(data["ratio"])
    axes[0].bar(list(ratios), list(ratios.values()), color="#4c72b0")
    axes[0].axhline(1.0, color="grey", linestyle="--", linewidth=1)
    axes[0].set_title("Throughput / same-run baseline")
    axes[0].tick_params(axis="x", rotation=20)
    # 2. Latency percentiles (submit -> start) at 2 workers.
    if base:
        labels, conveyor, baseline = [], [], []
        for row in submit_rows(base):
            if "latency" in row["metric"] or "p50" in row["metric"] or "p99" in row["metric"]:
                labels.append(row["metric"].replace(" (ms)", "").replace("submit→start ", ""))
                conveyor.append(row["conveyor"])
                baseline.append(row["baseline"])
        xs = range(len(labels))
        axes[1].bar([x - 0.2 for x in xs], conveyor, width=0.4, label="Conveyor")
        axes[1].bar([x + 0.2 for x in xs], baseline, width=0.4, label="baseline")
        axes[1].set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=7)
        axes[1].set_yscale("log")
        axes[1].set_title("Latency percentiles (ms, log)")
        axes[1].legend()
    # 3. Scaling with worker processes.
    scaling = results.get("submit", {})
    workers = sorted(scaling)
    jobs = []
    for count in workers:
        row = find(submit_rows(scaling[count]), "e2e throughput")
        jobs.append(row["conveyor"] if row else 0)
    axes[2].plot(workers, jobs, marker="o")
    axes[2].set_xticks(workers)
    axes[2].set_xlabel("worker processes")
    axes[2].set_ylabel("end-to-end jobs/s")
    axes[2].set_title("Throughput by worker processes")
    # 4. Import time by rows (linear growth is a straight line of slope 1 on log-log).
    imports = results.get("imports") or {}
    if imports:
        sizes = sorted(imports)
        axes[3].loglog(
            sizes,
            [imports[n].get("conveyor_seconds", 0) for n in sizes],
            marker="s",
            label="Conveyor import",
        )
        axes[3].loglog(
            sizes,
            [imports[n].get("copy_seconds", 0) for n in sizes],
            marker="^",
            label="COPY",
        )
        axes[3].set_xlabel("rows")
        axes[3].set_ylabel("seconds")
        axes[3].legend()
    axes[3].set_title("Import time by rows (log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


Target = tuple[str, float | None, str, float]
"""``(figure, value, ">=" or "<=", bound)``; values ending in "ms" are absolute, others ratios."""


def target_values(results: dict[str, Any]) -> list[Target]:
    """The issues' targets (#14 for the hot path) with this run's values, 2 worker processes."""
    rows: list[Target] = []
    submit = results.get("submit", {}).get(2)
    if submit:
        sr = submit_rows(submit)
        rows += [
            (
                "worker CPU per ping vs raw Celery (same effect, -E)",
                _ratio(find(sr, "worker CPU per job (ms)")),
                "<=",
                1.5,
            ),
            (
                "end-to-end jobs/s vs raw Celery submitted over HTTP",
                _ratio(find(sr, "e2e throughput (jobs/s)")),
                ">=",
                0.8,
            ),
            (
                "API submit rate vs bare FastAPI + send_task",
                _ratio(find(sr, "submit rate")),
                ">=",
                1.5,
            ),
            ("API CPU per submit vs bare endpoint", _ratio(find(sr, "API process CPU")), "<=", 1.0),
            (
                "burst submit->start p99 vs raw Celery",
                _ratio(find(sr, "p99 (ms), burst")),
                "<=",
                2.0,
            ),
        ]
        paced = find(sr, "p99 (ms), paced")
        rows.append(
            ("paced submit->start p99 (ms)", paced["conveyor"] if paced else None, "<=", 10.0)
        )
    imports = results.get("imports") or {}
    if imports:
        rows.append(
            ("import of the largest file vs COPY", imports[max(imports)].get("ratio"), ">=", 0.5)
        )
    webhooks = results.get("webhooks")
    if webhooks:
        rows.append(("webhook deliveries vs raw httpx loop", webhooks.get("ratio"), ">=", 0.8))
    return rows


def _shown(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if name.endswith("(ms)") else f"{value:.2f}x"


def _met(value: float | None, op: str, bound: float) -> str:
    if value is None:
        return "-"
    return "yes" if (value >= bound if op == ">=" else value <= bound) else "**no**"


def targets(results: dict[str, Any]) -> list[str]:
    """The issues' targets next to this run's values, met or not."""
    lines = ["## Targets", "", "| figure | value | target | met |", "|---|---|---|---|"]
    for name, value, op, bound in target_values(results):
        unit = " ms" if name.endswith("(ms)") else "x"
        lines.append(
            f"| {name} | {_shown(name, value)} | {op} {bound:g}{unit} | {_met(value, op, bound)} |"
        )
    return [*lines, ""]


def before_after(before: dict[str, Any], after: dict[str, Any], label: str) -> list[str]:
    """Targets before and after a change, each measured against its own same-run baseline."""
    old = {name: value for name, value, _, _ in target_values(before)}
    lines = [
        f"## Before and after ({label})",
        "",
        "Both columns are ratios against the baseline measured in the same run (absolute only"
        " where the target is in ms); each run shares the 2 cores with whatever else ran then.",
        "",
        "| figure | before | after | change | target | met after |",
        "|---|---|---|---|---|---|",
    ]
    for name, value, op, bound in target_values(after):
        was = old.get(name)
        change = "-"
        if was and value:
            gain = was / value if op == "<=" else value / was
            change = f"{gain:.1f}x better" if gain >= 1 else f"{1 / gain:.1f}x worse"
        unit = " ms" if name.endswith("(ms)") else "x"
        lines.append(
            f"| {name} | {_shown(name, was)} | {_shown(name, value)} | {change} |"
            f" {op} {bound:g}{unit} | {_met(value, op, bound)} |"
        )
    return [*lines, ""]


def _ratio(row: dict[str, Any] | None) -> float | None:
    if not row or not row["baseline"]:
        return None
    return float(row["conveyor"]) / float(row["baseline"])


def report(
    results: dict[str, Any],
    info: dict[str, str],
    chart_ok: bool,
    quick: bool,
    before: tuple[dict[str, Any], str] | None = None,
    measured: dt.datetime | None = None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `benchmarks/run_all.py{' --quick' if quick else ''}` on "
        f"{measured or dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Every Conveyor figure sits"
        " next to a "
        "baseline measured in the same run on the same machine; compare ratios, not absolute "
        "numbers.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
    ]
    if chart_ok:
        lines += ["![throughput, latency and scaling](benchmarks.png)", ""]
    lines += targets(results)
    if before is not None:
        lines += before_after(before[0], results, before[1])
    submit = results.get("submit", {})
    if submit:
        lines += ["## API and end-to-end (`submit.py`)", ""]
        for count in sorted(submit):
            lines += [
                f"### {count} worker process{'es' if count > 1 else ''}",
                "",
                "| metric | Conveyor | baseline | ratio | better |",
                "|---|---|---|---|---|",
            ]
            for row in submit_rows(submit[count]):
                ratio = row["conveyor"] / row["baseline"] if row["baseline"] else float("nan")
                lines.append(
                    f"| {row['metric']} | {fmt(row['conveyor'])} | {fmt(row['baseline'])} |"
                    f" {ratio:.2f}x | {row['better']} |"
                )
            lines.append("")
            lines += [f"- {note}" for note in submit[count].get("notes", [])]
            lines.append("")
        lines += [
            "### How cost grows with workers",
            "",
            "| worker processes | end-to-end jobs/s | p99 submit→start, paced (ms) |"
            " p99 submit→start, burst (ms) |",
            "|---|---|---|---|",
        ]
        for count in sorted(submit):
            rows = submit_rows(submit[count])
            e2e = find(rows, "e2e throughput")
            paced = find(rows, "p99 (ms), paced")
            burst = find(rows, "p99 (ms), burst")
            lines.append(
                f"| {count} | {fmt(e2e['conveyor']) if e2e else '-'} |"
                f" {fmt(paced['conveyor']) if paced else '-'} |"
                f" {fmt(burst['conveyor']) if burst else '-'} |"
            )
        lines.append("")
    imports = results.get("imports") or {}
    if imports:
        lines += ["## Imports vs PostgreSQL COPY (`imports.py`)", ""]
        # Every size's keys, in first-seen order (a one-chunk import has no chunk phase).
        keys = [
            k
            for k in dict.fromkeys(k for figures in imports.values() for k in figures)
            if not k.startswith("_") and k != "rows"
        ]
        lines += ["| rows | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for size in sorted(imports):
            lines.append(
                f"| {size:,} | " + " | ".join(fmt(imports[size].get(k, "-")) for k in keys) + " |"
            )
        lines += ["", "Import time should grow linearly with rows (same rows/s at each size).", ""]
    webhooks = results.get("webhooks")
    if webhooks:
        lines += ["## Webhooks vs raw httpx (`webhooks.py`)", "", *flat_table(webhooks), ""]
    missing = [k for k in ("submit", "imports", "webhooks") if not results.get(k)]
    if missing:
        lines += [f"Not measured in this run (failed or skipped): {', '.join(missing)}.", ""]
    return "\n".join(lines)


def separate_imports(runs: list[dict[str, Any]]) -> str:
    """A section for imports measured outside the run (``--separate-imports``), or ``""``."""
    if not runs:
        return ""
    keys = [k for k in dict.fromkeys(k for run in runs for k in run) if k != "rows"]
    lines = [
        "",
        "## Imports measured separately (`imports.py --rows N --json F`, same machine)",
        "",
        "Not part of this run: too long for it (the 10M-row file is about 0.9 GB). Each row is",
        "one `imports.py` run, Conveyor and its COPY baseline measured in that run.",
        "",
        "| rows | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for run in sorted(runs, key=lambda r: int(r["rows"])):
        lines.append(
            f"| {int(run['rows']):,} | " + " | ".join(fmt(run.get(k, "-")) for k in keys) + " |"
        )
    return "\n".join(lines)


def load(path: pathlib.Path) -> dict[str, Any]:
    """Reads a run's ``all.json`` (keys back to ints)."""
    raw = json.loads(path.read_text())
    return {
        "submit": {int(k): v for k, v in (raw.get("submit") or {}).items()},
        "imports": {int(k): v for k, v in (raw.get("imports") or {}).items()},
        "webhooks": raw.get("webhooks"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes)")
    parser.add_argument("--out", type=pathlib.Path, default=DOCS / "BENCHMARKS.md")
    parser.add_argument(
        "--from-json", type=pathlib.Path, help="re-render the report from a run's all.json"
    )
    parser.add_argument(
        "--before", type=pathlib.Path, help="an earlier run's all.json: adds a before/after table"
    )
    parser.add_argument("--before-label", default="before vs after", help="its heading")
    parser.add_argument(
        "--separate-imports",
        type=pathlib.Path,
        nargs="*",
        default=[],
        help="imports.py --json files of runs made outside this one (say, 10M rows): listed"
        " in a table of their own, not in the targets",
    )
    args = parser.parse_args()
    separate = [json.loads(path.read_text()) for path in args.separate_imports]
    before = (load(args.before), args.before_label) if args.before else None
    args.out.parent.mkdir(parents=True, exist_ok=True)  # the report's folder, and its chart's
    if args.from_json:
        results = load(args.from_json)
        chart_ok = chart(results, args.out.parent / "benchmarks.png")
        # Dated when the run wrote its figures, not when they are rendered again.
        measured = dt.datetime.fromtimestamp(args.from_json.stat().st_mtime, dt.UTC)
        text = report(results, machine(), chart_ok, args.quick, before=before, measured=measured)
        args.out.write_text(text + separate_imports(separate) + "\n")
        print(f"wrote {args.out}")
        return 0
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="conveyor-bench-all-"))
    results: dict[str, Any] = {"submit": {}, "imports": {}}
    for workers in (1, 2, 4):
        figures = run(
            "submit.py",
            # 1,500 per system in 4 alternating submit rounds: at 400 in 2 rounds a round
            # lasted under half a second, and one hiccup of the machine moved a ratio by 20%.
            # 200 paced jobs: the p99 of 40 was their slowest one.
            [
                *(
                    ["--n", "150", "--rounds", "2"]
                    if args.quick
                    else ["--n", "1500", "--rounds", "4", "--paced-n", "200"]
                ),
                "--worker-concurrency",
                str(workers),
            ],
            tmp / f"submit-{workers}.json",
            limit=900,
        )
        if figures:
            results["submit"][workers] = figures
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    for rows in sizes:
        figures = run("imports.py", ["--rows", str(rows)], tmp / f"imports-{rows}.json", 1800)
        if figures:
            results["imports"][rows] = figures
    results["webhooks"] = run(
        "webhooks.py",
        ["--count", "2000" if args.quick else "8000", "--rounds", "3"],
        tmp / "webhooks.json",
        limit=1800,
    )
    # The raw figures first: a report that cannot be written costs no rerun (--from-json).
    (tmp / "all.json").write_text(json.dumps(results, indent=2, default=str))
    info = machine()
    chart_ok = chart(results, args.out.parent / "benchmarks.png")
    text = report(results, info, chart_ok, args.quick, before=before)
    args.out.write_text(text + separate_imports(separate) + "\n")
    print(f"wrote {args.out} (raw figures: {tmp / 'all.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
