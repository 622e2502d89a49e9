"""A run's report: `report.md` and PNG plots, built only from committed artifacts and the run
record, committed as the artifact `reports/<run_id>` and copied to `<workdir>/runs/<run>/report/`.

What it reads (each part is left out, with a note, when its artifact is missing):
- training stages (sft, rm, rs, dpo): `metrics.jsonl` in their output (lines with step, loss,
  lr, tokens_per_s, eval_*) -> loss curves; the RM's held-out accuracy;
- select: `best_of_n.json` -> the best-of-N curve (mean best reward against N);
- eval: `results.json` (win rates, RM scores of each model's answers) and its `report.md`
  fragment -> win rates and reward distributions of SFT / RS / DPO answers on held-out prompts.
  When eval's judge failed its gate (metric `judge/gate_passed` = 0) the headline says "judge
  unreliable" and no judged number (mtbench/*, alpaca/*) appears in the stage table;
- eval's `results.json` also gives the "Stage gains" table the report opens with
  (`controller/gains.py`): per model the held-out verifiable accuracy, RM score and answer
  length, judged numbers only where the judge passed its gate, the paired differences;
- the run record and the `timings/<key>` records -> time per stage (a reused artifact shows
  the time it took when it was made).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xwin.controller.gains import POLICIES, gains_summary, stage_gains
from xwin.controller.progress import format_seconds, key_metrics
from xwin.controller.state import RunRecord, RunStore
from xwin.core.plots import new_figure, save_figure
from xwin.stages.registry import STAGES

log = logging.getLogger(__name__)

TRAINING_STAGES = tuple(stage.name for stage in STAGES if stage.trains)
MODEL_STAGES = POLICIES  # the stages whose output is a policy to evaluate


def _fetch(store, key: str) -> Path | None:
    """The committed folder of key, or None (a sharded output is not one folder)."""
    if not key or not store.exists(key):
        return None
    return store.fetch(key)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a log must not break a report
    return rows


def find_file(folder: Path, name: str) -> Path | None:
    if (folder / name).is_file():
        return folder / name
    found = sorted(folder.rglob(name))
    return found[0] if found else None


def _numbers(rows: list[dict], field: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(field)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(row.get("step", i))
            ys.append(value)
    return xs, ys


def plot_training(stage: str, rows: list[dict], out: Path) -> Path | None:
    """Train and eval loss against step; held-out accuracy (RM, DPO) on a second axis."""
    xs, ys = _numbers(rows, "loss")
    ex, ey = _numbers(rows, "eval_loss")
    accuracy = next((f for f in ("eval_accuracy", "eval_reward_accuracy") if _numbers(rows, f)[0]), None)
    if not xs and not ex:
        return None
    fig, ax = new_figure(6, 3.5)
    if xs:
        ax.plot(xs, ys, lw=1, label="train loss")
    if ex:
        ax.plot(ex, ey, "o-", ms=3, label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(stage)
    handles, labels = ax.get_legend_handles_labels()
    if accuracy:
        right = ax.twinx()
        right.plot(*_numbers(rows, accuracy), "s--", ms=3, color="tab:green", label=accuracy)
        right.set_ylabel("held-out accuracy")
        right.set_ylim(-0.05, 1.05)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=8, loc="best")
    return save_figure(fig, out / f"loss_{stage}.png")


def plot_best_of_n(data: Any, out: Path) -> Path | None:
    """Mean best reward among N samples, against N (select's best_of_n.json)."""
    points = best_of_n_points(data)
    if not points:
        return None
    fig, ax = new_figure(5, 3.5)
    ns = [n for n, _ in points]
    ax.plot(ns, [v for _, v in points], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (samples per prompt)")
    ax.set_ylabel("mean RM score of the best")
    ax.set_title("best-of-N")
    return save_figure(fig, out / "best_of_n.png")


def best_of_n_points(data: Any) -> list[tuple[int, float]]:
    """select's curve: [{"n": 1, "expected_max": .., "contexts": ..}, ...] (also accepts a
    {"curve": [...]} wrapper or a plain {"1": .., "2": ..} mapping)."""
    if isinstance(data, dict) and "curve" in data:
        data = data["curve"]
    points = []
    if isinstance(data, dict):
        for n, v in data.items():
            if str(n).isdigit() and isinstance(v, (int, float)):
                points.append((int(n), float(v)))
    elif isinstance(data, list):
        for row in data:
            if isinstance(row, dict) and "n" in row:
                value = next((row[k] for k in ("expected_max", "mean_best", "mean", "value")
                              if isinstance(row.get(k), (int, float))), None)
                if value is not None:
                    points.append((int(row["n"]), float(value)))
    return sorted(points)


def reward_scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model, the RM-score summary of its answers on held-out prompts (eval's results.json
    `reward`: {label: {mean, n, [std], [scores]}})."""
    section = results.get("reward") or {}
    out = {}
    for model, value in section.items() if isinstance(section, dict) else []:
        if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
            out[model] = value
    return out


def ordered_models(names) -> list[str]:
    return [m for m in MODEL_STAGES if m in names] + sorted(m for m in names if m not in MODEL_STAGES)


def held_out_scores(reward: dict[str, Any]) -> list[float]:
    """The RM scores of a model's answers to the held-out prompts (eval scores them last), or
    of all its answers when eval did not say which were which."""
    scores = reward.get("scores")
    if not isinstance(scores, list):
        return []
    n = reward.get("prompts_n")
    return scores[len(scores) - n:] if isinstance(n, int) and n > 0 else scores


def plot_rewards(rewards: dict[str, dict[str, Any]], out: Path) -> Path | None:
    """Distributions where eval kept every answer's score, else the means."""
    if not rewards:
        return None
    names = ordered_models(rewards)
    fig, ax = new_figure(6, 3.5)
    if all(held_out_scores(rewards[m]) for m in names):
        ax.boxplot([held_out_scores(rewards[m]) for m in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names)
    else:
        ax.bar(names, [rewards[m]["mean"] for m in names])
        ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("RM score")
    ax.set_title("reward of each model's answers to held-out prompts")
    return save_figure(fig, out / "rewards.png")


def plot_timings(timings: dict[str, float], out: Path) -> Path | None:
    if not timings:
        return None
    fig, ax = new_figure(6, 3)
    names = list(timings)
    ax.barh(names[::-1], [timings[n] / 60 for n in names[::-1]])
    ax.set_xlabel("minutes")
    ax.set_title("time per stage")
    return save_figure(fig, out / "timings.png")


def stage_timings(record: RunRecord, store) -> dict[str, tuple[float, str]]:
    """stage -> (seconds, where the number comes from)."""
    out = {}
    for stage in record.stages.values():
        if stage.status == "succeeded" and stage.elapsed_s is not None:
            out[stage.name] = (stage.elapsed_s, "this run")
        elif stage.status == "cached":
            data = store.get_record(f"timings/{stage.key}")
            if data:
                timing = json.loads(data)
                out[stage.name] = (float(timing["elapsed_s"]), f"cached, from {timing['run_id']}")
    return out


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _metric_table(metrics: dict[str, Any], limit: int = 8) -> str:
    return key_metrics(metrics, limit=limit).replace(" ", ", ")


JUDGED_METRICS = ("mtbench/", "alpaca/")  # eval's metrics that are a judge's verdicts


def judge_unreliable(metrics: dict[str, Any]) -> bool:
    """The stage's judge was checked and failed (eval's judge gate)."""
    return metrics.get("judge/gate_passed") == 0


def headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A stage's metrics for the stage table: no judged number when the judge failed its gate."""
    if not judge_unreliable(metrics):
        return metrics
    return {k: v for k, v in metrics.items() if not k.startswith(JUDGED_METRICS)}


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def judge_warning(stage) -> str:
    m = stage.metrics
    return (f"- **judge unreliable** ({stage.name}): calibration accuracy "
            f"{_pct(m.get('judge/calibration_accuracy'))}, swap agreement "
            f"{_pct(m.get('judge/calibration_swap_agreement'))} on the calibration set, "
            f"unparseable replies {_pct(m.get('judge/unparseable_share'))}; the judged numbers "
            "(MT-bench grades, win rates) are not results")


def build_report(record: RunRecord, store, out: Path) -> Path:
    """Write report.md, its plots and gains.json (the Stage gains, machine-readable) into out."""
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# xwin run `{record.run_id}`", "",
          (f"- status: **{record.status}**; started {record.created_at}; "
           f"wall time {format_seconds(record.elapsed_s)}"),
          f"- stages: {', '.join(record.stages)}"]
    md += [judge_warning(s) for s in record.stages.values() if judge_unreliable(s.metrics)]
    md.append("")
    evaluation = record.stages.get("eval")
    eval_folder = _fetch(store, evaluation.key) if evaluation else None
    results_file = find_file(eval_folder, "results.json") if eval_folder else None
    results = json.loads(results_file.read_text()) if results_file else {}
    md += stage_gains(results)
    if (gains := gains_summary(results)) is not None:
        (out / "gains.json").write_text(json.dumps(gains, indent=2) + "\n")
    timings = stage_timings(record, store)
    md += ["## Stages", "", "| stage | status | attempts | time | artifact | metrics |",
           "|---|---|---|---|---|---|"]
    for stage in record.stages.values():
        seconds, source = timings.get(stage.name, (None, ""))
        time_text = format_seconds(seconds) + (f" ({source})" if source and source != "this run" else "")
        md.append(f"| {stage.name} | {stage.status} | {len(stage.attempts)} | {time_text} | "
                  f"`{stage.key}` | {_metric_table(headline_metrics(stage.metrics), limit=4)} |")
    md.append("")
    if plot := plot_timings({n: s for n, (s, _) in timings.items()}, out):
        md += [f"![time per stage]({plot.name})", ""]

    trained = [n for n in TRAINING_STAGES if n in record.stages]
    md += ["## Training", ""] if trained else []
    for name in trained:
        stage = record.stages[name]
        folder = _fetch(store, stage.key)
        if folder is None:
            md += [f"- {name}: no committed output", ""]
            continue
        metrics_file = find_file(folder, "metrics.jsonl")
        rows = read_jsonl(metrics_file) if metrics_file else []
        plot = plot_training(name, rows, out) if rows else None
        last = {k: v for r in rows for k, v in r.items()}  # each field's last value
        summary = {k: v for k, v in {**stage.metrics, **{f"last_{k}": v for k, v in last.items()
                   if k in ("loss", "eval_loss", "eval_accuracy")}}.items()}
        md.append(f"### {name}")
        md.append("")
        md.append(_metric_table(summary) or "(no metrics)")
        if name == "rm":
            accuracy = rm_accuracy(stage.metrics, rows)
            md.append("")
            md.append(f"**RM held-out pairwise accuracy: {accuracy:.3f}**" if accuracy is not None
                      else "RM held-out accuracy: not reported")
        md.append("")
        if plot:
            md += [f"![{name} loss]({plot.name})", ""]

    select = record.stages.get("select")
    folder = _fetch(store, select.key) if select else None
    bon_file = find_file(folder, "best_of_n.json") if folder else None
    if select:
        md += ["## Best-of-N (Xwin-Set)", ""]
    if bon_file:
        data = json.loads(bon_file.read_text())
        points = best_of_n_points(data)
        if plot := plot_best_of_n(data, out):
            md += ["| N | mean best RM score |", "|---|---|"]
            md += [f"| {n} | {v:.3f} |" for n, v in points]
            md += ["", f"![best-of-N]({plot.name})", ""]
    elif select:
        md += ["(no best_of_n.json in the select output)", ""]

    folder = eval_folder
    if evaluation and folder is None:
        md += ["## Evaluation", "", "(no eval output)", ""]
    elif folder is not None:
        fragment = find_file(folder, "report.md")
        rewards = reward_scores(results)
        if rewards:
            md += ["## Reward of each model's answers", "",
                   "RM scores (this run's reward model) of each model's answers:", "",
                   "| model | held-out prompts: mean | std | n | all answers (+ MT-bench): mean | n |",
                   "|---|---|---|---|---|---|"]
            for m in ordered_models(rewards):
                held = held_out_scores(rewards[m])
                mean = rewards[m].get("prompts_mean", sum(held) / len(held) if held else None)
                std = (sum((x - mean) ** 2 for x in held) / len(held)) ** 0.5 if held else None
                md.append(f"| {m} | {_num(mean)} | {_num(std)} | {len(held) or ''} | "
                          f"{_num(rewards[m]['mean'])} | {rewards[m].get('n', '')} |")
            md.append("")
            if plot := plot_rewards(rewards, out):
                md += [f"![rewards]({plot.name})", ""]
        if fragment:  # eval's own section: win rates, MT-bench grades, the RM-score table
            md += [fragment.read_text().strip(), ""]
            for image in folder.rglob("*.png"):
                shutil.copy(image, out / image.name)
        elif results:
            md += ["## Evaluation", "", "```json", json.dumps(results, indent=2)[:4000], "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def rm_accuracy(metrics: dict[str, Any], rows: list[dict]) -> float | None:
    for key in ("eval_accuracy", "accuracy", "held_out_accuracy", "heldout_accuracy"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    _, values = _numbers(rows, "eval_accuracy")
    return values[-1] if values else None


def write_report(record: RunRecord, store, runs: RunStore) -> Path:
    """Build, commit as `reports/<run_id>`, copy to `<workdir>/runs/<run>/report/`."""
    staging = Path(tempfile.mkdtemp(prefix="xwin-report-"))
    try:
        build_report(record, store, staging)
        store.commit(f"reports/{record.run_id}", staging, producer="report",
                     metadata={"run_id": record.run_id})
        dest = runs.run_dir(record.run_id) / "report"
        tmp = dest.with_name(".report.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(staging, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest / "report.md"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
