"""The eval stage's human-facing output: markdown tables (a fragment the run report merges)
and PNG plots. Reads only the results dict the stage also writes as results.json. When the
judge failed its gate (results["judge_gate"]), the fragment opens with "judge unreliable" and
the figures, and the judged tables come last, under that warning."""

from __future__ import annotations

import math
from pathlib import Path

from xwin.core.plots import new_figure, save_figure


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _ci_header(results: dict) -> str:
    return f"{results.get('confidence', 0.95):.0%} CI"


def _ci(row: dict) -> str:
    return f"[{_pct(row['ci_low'])}, {_pct(row['ci_high'])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def gate_failed(results: dict) -> bool:
    """The judge was checked and failed: its numbers are not results."""
    gate = results.get("judge_gate") or {}
    return bool(gate.get("checked")) and gate.get("passed") is False


def _gate_lines(gate: dict) -> list[str]:
    if not gate.get("checked"):
        return ["Judge not checked (eval.judge_gate.enabled is off): the judged numbers below "
                "rest on a judge nobody measured.", ""]
    t, cal = gate["thresholds"], gate["calibration"]
    foils = {"other_question": "another question's reference answer",
             "truncated": "a truncated copy of itself"}
    setup = (f"calibration: {cal['requests']} requests on MT-bench questions "
             f"{', '.join(map(str, cal['questions']))}, each GPT-4 reference answer against "
             f"{' and '.join(foils[k] for k in cal['by_foil'])}, both orders "
             f"({cal['seconds']:.1f} s, {cal['requests_sent']} sent to the judge"
             + (f"; starting the judge server took {cal['server_start_s']:.0f} s more"
                if cal.get("server_start_s") else "") + ")")
    if gate["passed"]:
        comparisons = gate["comparisons_swap_agreement"]
        return [(f"Judge checked: calibration accuracy {_pct(gate['calibration_accuracy'])} "
                 f"(>= {_pct(t['min_calibration_accuracy'])}), swap agreement "
                 f"{_pct(gate['swap_agreement'])} on the calibration set"
                 + (f" and {_pct(comparisons)} on the model comparisons" if comparisons is not None
                    else "")
                 + f" (>= {_pct(t['min_swap_agreement'])}), unparseable replies "
                 f"{_pct(gate['unparseable_share'])} (<= {_pct(t['max_unparseable_share'])}); "
                 f"{setup}."), ""]

    def row(name, value, op, limit, ok):
        return [name, _pct(value), f"{op} {_pct(limit)}", "ok" if ok else "**failed**"]

    swap_ok = gate["swap_agreement"] is not None and gate["swap_agreement"] >= t["min_swap_agreement"]
    acc = gate["calibration_accuracy"]
    share = gate["unparseable_share"]
    rows = [row("accuracy on the calibration set", acc, ">=", t["min_calibration_accuracy"],
                acc is not None and acc >= t["min_calibration_accuracy"]),
            row("swap agreement, calibration set", gate["swap_agreement"], ">=",
                t["min_swap_agreement"], swap_ok)]
    if gate["comparisons_swap_agreement"] is not None:
        rows.append(row("swap agreement, model comparisons", gate["comparisons_swap_agreement"],
                        ">=", t["min_swap_agreement"],
                        gate["comparisons_swap_agreement"] >= t["min_swap_agreement"]))
    rows.append(row("unparseable replies", share, "<=", t["max_unparseable_share"],
                    share is not None and share <= t["max_unparseable_share"]))
    return ["**Judge unreliable**: the judge failed its check, so the judged numbers of this "
            "section (MT-bench grades, pairwise and AlpacaEval-style win rates) are not results; "
            "they are shown below, under this warning, only to diagnose the judge.", "",
            *_table(["check", "measured", "threshold", "result"], rows),
            *[f"- {reason}" for reason in gate["reasons"]], f"- {setup}", ""]


def _judged_tables(results: dict, h: str) -> list[str]:
    """MT-bench grades, pairwise and AlpacaEval-style win rates; h: the heading level."""
    lines: list[str] = []
    single = results.get("mtbench", {}).get("single")
    if single:
        categories = sorted({c for s in single.values() for c in s["categories"]})
        turns = sorted({t for s in single.values() for t in s["turns"]})
        lines += [f"{h} MT-bench, single-answer grading (1-10)", ""]
        lines += _table(
            ["model", "score", *[f"turn {t}" for t in turns], *categories, "rated / judged"],
            [[m, _num(s["score"]), *[_num(s["turns"].get(t)) for t in turns],
              *[_num(s["categories"].get(c)) for c in categories], f"{s['rated']} / {s['judged']}"]
             for m, s in single.items()])
    pairwise = results.get("mtbench", {}).get("pairwise")
    if pairwise:
        lines += [(f"{h} MT-bench, pairwise (both orders; ties and order-dependent verdicts count "
                  "half)"), ""]
        lines += _table(
            ["model X", "model Y", "X win rate", _ci_header(results), "wins", "losses", "ties",
             "inconsistent", "unparseable", "swap agreement"],
            [[p["model_x"], p["model_y"], _pct(p["win_rate"]), _ci(p), str(p["win"]),
              str(p["loss"]), str(p["tie"]), str(p["inconsistent"]), str(p["error"]),
              _pct(p["swap_agreement"])] for p in pairwise])
    alpaca = results.get("alpaca")
    if alpaca:
        lines += [f"{h} AlpacaEval-style, against the reference outputs", ""]
        lines += _table(
            ["model", "win rate", _ci_header(results), "LC win rate", "avg length", "reference length",
             "judged", "unparseable", "swap agreement"],
            [[m, _pct(a["win_rate"]), _ci(a), _pct(a["lc_win_rate"]), _num(a["avg_length"], 0),
              _num(a["reference_avg_length"], 0), str(a["n"]), str(a["error"]),
              _pct(a["swap_agreement"])] for m, a in alpaca.items()])
    single_paired = results.get("mtbench", {}).get("single_paired", [])
    rows = [_paired_row("MT-bench grade", p, 2) for p in single_paired]
    rows += [_paired_row("AlpacaEval score", p, 2) for p in results.get("alpaca_paired", [])]
    if rows:
        lines += [f"{h} Paired comparisons on the same prompts (X - Y, paired bootstrap; "
                  "McNemar's exact test on wins against the reference)", ""]
        lines += _paired_table(results, rows)
    return lines


def _paired_row(what: str, p: dict, digits: int) -> list[str]:
    mc = p.get("mcnemar")
    return [what, p["model_x"], p["model_y"], str(p["n"]), _num(p["mean_x"], digits),
            _num(p["mean_y"], digits), _num(p["difference"], digits),
            f"[{_num(p['ci_low'], digits)}, {_num(p['ci_high'], digits)}]",
            f"{mc['b']} / {mc['c']}" if mc else "", _num(mc["p_value"], 3) if mc else ""]


def _paired_table(results: dict, rows: list[list[str]]) -> list[str]:
    return _table(["measure", "model X", "model Y", "pairs", "mean X", "mean Y", "X - Y",
                   _ci_header(results), "McNemar b / c", "p"], rows)


def _plots(results: dict) -> list[str]:
    lines = []
    for name, title in (("mtbench_scores.png", "MT-bench scores"), ("win_rates.png", "Win rates")):
        if name in results.get("plots", []):
            lines += [f"![{title}]({name})", ""]
    return lines


def markdown(results: dict) -> str:
    judge = results["judge"]
    gate = results.get("judge_gate") or {}
    failed = gate_failed(results)
    title = f"## Evaluation (judge: `{judge['model']}`)" + (": judge unreliable" if failed else "")
    lines = [title, ""]
    if results.get("verifiable"):  # the gold metric first: no judge decides it
        from xwin.judge.ifeval import markdown as verifiable_markdown

        lines += verifiable_markdown(results["verifiable"], results.get("confidence", 0.95))
    if gate:
        lines += _gate_lines(gate)
    if not failed:
        lines += _judged_tables(results, "###")
    reward = results.get("reward")
    if reward:
        lines += ["### Reward-model scores of the answers", ""]
        lines += _table(["model", "mean RM score", "answers"],
                        [[m, _num(r["mean"], 3), str(r["n"])] for m, r in reward.items()])
        paired = results.get("reward_paired")
        if paired:
            lines += ["Paired on the same answers' contexts (X - Y, paired bootstrap):", ""]
            lines += _paired_table(results, [_paired_row("RM score", p, 3) for p in paired])
    stats = judge["stats"]
    lines += ["### Judge", "",
              (f"- requests sent: {stats['requests']} (retries {stats['retries']}, refused "
              f"{stats['errors']}); answered from cache: {stats['cache_hits']}"),
              (f"- unparseable verdicts: {judge['unparseable']} of {judge['verdicts']} (the "
               "models' judgments; calibration replies not counted)"),
              f"- agreement with itself under position swap: {_pct(judge['swap_agreement'])}",
              ""]
    if failed:
        lines += ["### Judged tables (judge unreliable: not results)", "",
                  "> The judge failed its check (see the top of this section); these tables and "
                  "plots show what it said, not how the models compare.", ""]
        lines += _judged_tables(results, "####")
    lines += _plots(results)
    return "\n".join(lines)


def plot_mtbench(single: dict[str, dict], path: Path, note: str | None = None) -> None:
    """Grouped bars: per category (and overall) the mean rating of each model; note: a warning
    added to the title (a judge that failed its check)."""
    import numpy as np

    models = list(single)
    groups = ["overall", *sorted({c for s in single.values() for c in s["categories"]})]
    width = 0.8 / max(1, len(models))
    fig, ax = new_figure(max(6, 1.1 * len(groups) + 2), 4)
    for i, m in enumerate(models):
        values = [single[m]["score"], *[single[m]["categories"].get(g, math.nan) for g in groups[1:]]]
        ax.bar(np.arange(len(groups)) + i * width, np.nan_to_num(values, nan=0.0), width, label=m)
    ax.set_xticks(np.arange(len(groups)) + width * (len(models) - 1) / 2, groups, rotation=30)
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean judge rating (1-10)")
    ax.set_title("MT-bench, single-answer grading" + (f"\n{note}" if note else ""),
                 **({"color": "tab:red"} if note else {}))
    ax.legend()
    save_figure(fig, path, dpi=120)


def plot_win_rates(rows: list[tuple[str, dict]], path: Path, confidence: float = 0.95,
                   note: str | None = None) -> None:
    """Horizontal bars of win rates with their confidence intervals (and LC where known);
    note: a warning shown as the title (a judge that failed its check)."""

    labels = [label for label, _ in rows]
    rates = [100 * (r["win_rate"] if not math.isnan(r["win_rate"]) else 0.0) for _, r in rows]
    low = [max(0.0, rate - 100 * r["ci_low"]) if not math.isnan(r["ci_low"]) else 0.0
           for rate, (_, r) in zip(rates, rows)]
    high = [max(0.0, 100 * r["ci_high"] - rate) if not math.isnan(r["ci_high"]) else 0.0
            for rate, (_, r) in zip(rates, rows)]
    fig, ax = new_figure(7, 0.6 * len(rows) + 1.5)
    y = list(range(len(rows)))
    ax.barh(y, rates, xerr=[low, high], capsize=4, color="tab:blue", label="win rate")
    lc = [(i, 100 * r["lc_win_rate"]) for i, (_, r) in enumerate(rows)
          if r.get("lc_win_rate") is not None and not math.isnan(r["lc_win_rate"])]
    if lc:
        ax.scatter([v for _, v in lc], [i for i, _ in lc], color="tab:orange", zorder=3,
                   label="length-controlled")
    ax.axvline(50, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"win rate, % ({confidence:.0%} CI)")
    if note:
        ax.set_title(note, color="tab:red")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, frameon=False)
    save_figure(fig, path, dpi=120)
