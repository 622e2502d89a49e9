"""Write summary.json for the CPU study from its run records and the held-out run's report.

    python docs/results/cpu-study/summarize.py --workdir .xwin --out docs/results/cpu-study \
        --heldout RUN [--validation RUN] [--other RUN ...]

The study runs in more than one `xwin run` (the validation run first, then the held-out one,
which reuses every artifact before eval), so its wall time is summed per stage over the runs
that actually ran each stage (a cached stage costs nothing). `wall_time_s` is the time of every
stage the held-out figure depends on, as one uninterrupted run would take; the validation
eval's time is reported beside it."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from datetime import datetime
from pathlib import Path


def cpu_name() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    flags = Path("/proc/cpuinfo").read_text()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores" + (f" ({', '.join(bf16)})" if bf16 else " (no native bf16)")


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def stage_times(record: dict) -> dict[str, float]:
    """Seconds of each stage this run ran itself (its succeeded attempts; cached ones are 0)."""
    return {name: sum(seconds(a["started_at"], a["ended_at"]) for a in stage["attempts"]
                      if a.get("ended_at") and a.get("status") == "succeeded")
            for name, stage in record["stages"].items() if stage["status"] == "succeeded"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".xwin"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heldout", required=True, help="run id of the held-out run")
    parser.add_argument("--validation", help="run id of the validation run")
    parser.add_argument("--other", nargs="*", default=[], help="runs that ran stages the held-out run reused")
    parser.add_argument("--command", required=True, help="the command that gives the held-out figure")
    args = parser.parse_args()

    records = {run: json.loads((args.workdir / "runs" / run / "state.json").read_text())
               for run in [args.heldout, *([args.validation] if args.validation else []), *args.other]}
    heldout = records[args.heldout]
    per_stage: dict[str, float] = {}
    for run, record in records.items():
        for name, secs in stage_times(record).items():
            if name == "eval" and run != args.heldout:
                continue  # the validation eval is reported on its own
            per_stage[name] = per_stage.get(name, 0.0) + secs
    missing = [s for s in heldout["stages"] if s not in per_stage]
    if missing:
        raise SystemExit(f"no run given ran {', '.join(missing)}: pass it with --other")
    report_dir = args.workdir / "runs" / args.heldout / "report"
    gains = json.loads((report_dir / "gains.json").read_text())
    summary = {
        "gold_metric": gains["gold_metric"],
        "models": {label: {"value": m["value"], "ci": m["ci"], "n": m["n"]} for label, m in gains["models"].items()},
        "paired": {name: {"diff": p["diff"], "ci": p["ci"]} for name, p in gains["paired"].items()
                   if name in ("dpo_vs_sft", "rs_vs_sft", "dpo_vs_rs", "sft_vs_base")},
        "command": args.command,
        "wall_time_s": round(sum(per_stage.values()), 1),
        "cpu": cpu_name(),
        "stage_time_s": {name: round(s, 1) for name, s in per_stage.items()},
        "runs": list(records),
    }
    if args.validation:
        summary["validation_eval_s"] = round(stage_times(records[args.validation]).get("eval", 0.0), 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for item in report_dir.iterdir():  # the report and its plots beside the summary
        if item.is_file():
            shutil.copy(item, args.out / item.name)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
