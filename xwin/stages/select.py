"""Stage `select`: from the scored Xwin-Set, the RS dataset (best response per context) and DPO
pairs (a named strategy), with counts, score statistics and two plots.

Output folder:
    rs.jsonl          Conversation: context + best response (meta: score, median, index)
    dpo.jsonl         PreferencePair with chosen/rejected scores (meta: strategy, indices, gap)
    stats.json        counts, drop reasons, score and score-gap statistics
    reward_hist.png   reward distribution: all responses and the best per context
    best_of_n.png     expected best score vs N (exact, no resampling bias), best_of_n.json

The rules are pure functions in `xwin.data.selection` (ties: lower response index ranks higher).
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from pathlib import Path

from pydantic import Field, model_validator

from xwin.artifacts.stage_io import StageContext
from xwin.core.config import StrictModel
from xwin.core.errors import UserError
from xwin.core.plots import new_figure, save_figure
from xwin.data.io import read_records, write_records
from xwin.data.schemas import Conversation, Message, MultiwiseRecord, PreferencePair
from xwin.data.selection import (
    Strategy,
    best_of_n_curve,
    choose_best,
    preference_pairs,
    summary,
)


class SelectConfig(StrictModel):
    rs_min_score: float | None = Field(
        None, description="RS: drop contexts whose best response scores below this"
    )
    rs_min_margin_over_median: float | None = Field(
        None, description="RS: drop contexts whose best beats the median score by less than this"
    )
    dpo_strategy: Strategy = Field(
        "best-worst",
        description="best-worst | best-vs-rank (rejected at dpo_rank or dpo_quantile) | "
        "best-vs-random (seeded by dpo_seed) | all-pairs-above-margin",
    )
    dpo_rank: int | None = Field(
        None, description="best-vs-rank: rejected rank, 1-based from the best (2 = second best), "
        "negative from the worst (-1 = worst)",
    )
    dpo_quantile: float | None = Field(
        None, ge=0.0, le=1.0, description="best-vs-rank: rejected position as a quantile "
        "of the ranking (0 = best, 1 = worst)",
    )
    dpo_min_margin: float = Field(
        0.0, ge=0.0, description="pairs need chosen - rejected > this (0: ties never pair)"
    )
    dpo_max_pairs_per_prompt: int | None = Field(
        None, ge=1, description="all-pairs-above-margin: keep the largest gaps, at most this many"
    )
    dpo_seed: int = Field(0, description="best-vs-random: seed (each context draws from seed + id)")
    best_of_n_max: int | None = Field(
        None, ge=1, description="largest N of the best-of-N curve; None = most responses per context"
    )

    @model_validator(mode="after")
    def _rank_settings(self) -> SelectConfig:
        ranked = self.dpo_rank is not None or self.dpo_quantile is not None
        if self.dpo_strategy == "best-vs-rank":
            if (self.dpo_rank is None) == (self.dpo_quantile is None):
                raise ValueError("best-vs-rank needs exactly one of dpo_rank or dpo_quantile")
            if self.dpo_rank in (0, 1):
                raise ValueError("dpo_rank must rank below the best: 2, 3, ... or -1, -2, ...")
        elif ranked:
            raise ValueError(f"dpo_rank/dpo_quantile apply to best-vs-rank, not {self.dpo_strategy}")
        return self


def read_scored(parts: list[Path]) -> list[MultiwiseRecord]:
    records = []
    for part in parts:
        for record in read_records(part, MultiwiseRecord):
            for k, response in enumerate(record.responses):
                if response.score is None:
                    raise UserError(f"{part}: record {record.id!r}: response {k} has no score "
                                    "(run the score stage on it first)")
            records.append(record)
    if not records:
        raise UserError(f"no records in {', '.join(map(str, parts))}")
    return records


def select(records: list[MultiwiseRecord], config: SelectConfig) -> tuple[list, list, dict]:
    """(RS conversations, DPO pairs, stats) for the given scored records."""
    rs, pairs = [], []
    rs_dropped: Counter[str] = Counter()
    best_scores, margins, gaps = [], [], []
    contexts_without_pairs = 0
    for record in records:
        scores = [r.score for r in record.responses]
        best, reason = choose_best(scores, config.rs_min_score, config.rs_min_margin_over_median)
        if best is None:
            rs_dropped[reason] += 1
        else:
            median = statistics.median(scores)
            best_scores.append(scores[best])
            margins.append(scores[best] - median)
            rs.append(Conversation(
                id=record.id,
                messages=[*record.context, Message(role="assistant", content=record.responses[best].text)],
                meta={"score": scores[best], "median_score": median, "response_index": best,
                      "responses": len(scores)},
            ))
        chosen_rejected = preference_pairs(
            scores, config.dpo_strategy, rank=config.dpo_rank, quantile=config.dpo_quantile,
            min_margin=config.dpo_min_margin, max_pairs=config.dpo_max_pairs_per_prompt,
            # Seeded per context: the draw does not depend on record order or sharding.
            rng=random.Random(f"{config.dpo_seed}:{record.id}"),
        )
        contexts_without_pairs += not chosen_rejected
        for c, r in chosen_rejected:
            gaps.append(scores[c] - scores[r])
            pairs.append(PreferencePair(
                id=f"{record.id}:{c}>{r}", context=record.context,
                chosen=record.responses[c].text, rejected=record.responses[r].text,
                chosen_score=scores[c], rejected_score=scores[r], source="rm",
                meta={"strategy": config.dpo_strategy, "chosen_index": c, "rejected_index": r},
            ))
    stats = {
        "contexts": len(records),
        "responses": sum(len(r.responses) for r in records),
        "scores": summary([r.score for rec in records for r in rec.responses]),
        "rs": {"examples": len(rs), "dropped": dict(sorted(rs_dropped.items())),
               "best_score": summary(best_scores), "margin_over_median": summary(margins)},
        "dpo": {"strategy": config.dpo_strategy, "pairs": len(pairs),
                "contexts_without_pairs": contexts_without_pairs, "score_gap": summary(gaps),
                "chosen_score": summary([p.chosen_score for p in pairs]),
                "rejected_score": summary([p.rejected_score for p in pairs])},
    }
    return rs, pairs, stats


def plot_rewards(records: list[MultiwiseRecord], path: Path) -> None:
    all_scores = [r.score for rec in records for r in rec.responses]
    best = [max(r.score for r in rec.responses) for rec in records if rec.responses]
    fig, ax = new_figure(7, 4)
    bins = min(60, max(10, len(all_scores) // 10))
    ax.hist(all_scores, bins=bins, alpha=0.6, label=f"all responses ({len(all_scores)})")
    ax.hist(best, bins=bins, alpha=0.6, label=f"best per context ({len(best)})")
    ax.set_xlabel("reward")
    ax.set_ylabel("responses")
    ax.set_title("Reward distribution")
    ax.legend()
    save_figure(fig, path, dpi=100)


def plot_best_of_n(curve: list[dict], path: Path) -> None:
    fig, ax = new_figure(6, 4)
    ns = [p["n"] for p in curve]
    ax.plot(ns, [p["expected_max"] for p in curve], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (responses per context)")
    ax.set_ylabel("expected best reward")
    ax.set_title("Best-of-N (exact expectation over N-subsets)")
    ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=100)


def select_metrics(stats: dict, curve: list[dict]) -> dict[str, float]:
    """The manifest's metrics: counts, drops, the score gap of the pairs, the best-of-N curve."""
    metrics = {
        "contexts": stats["contexts"],
        "responses": stats["responses"],
        "rs_examples": stats["rs"]["examples"],
        **{f"rs_dropped_{k}": v for k, v in stats["rs"]["dropped"].items()},
        "dpo_pairs": stats["dpo"]["pairs"],
        "dpo_contexts_without_pairs": stats["dpo"]["contexts_without_pairs"],
        "score_mean": stats["scores"].get("mean", 0.0),
    }
    for key in ("mean", "median", "min"):
        if key in stats["dpo"]["score_gap"]:
            metrics[f"dpo_gap_{key}"] = stats["dpo"]["score_gap"][key]
    for point in curve:
        metrics[f"best_of_{point['n']}"] = point["expected_max"]
    return metrics


def run(config: SelectConfig, ctx: StageContext) -> dict[str, float]:
    records = read_scored(ctx.input_parts("scored"))[ctx.shard_index :: ctx.shard_count]
    rs, pairs, stats = select(records, config)
    curve = best_of_n_curve([[r.score for r in rec.responses] for rec in records if rec.responses],
                            config.best_of_n_max)
    out = ctx.workdir / "out"
    write_records(out / "rs.jsonl", rs)
    write_records(out / "dpo.jsonl", pairs)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    (out / "best_of_n.json").write_text(json.dumps(curve, indent=2))
    plot_rewards(records, out / "reward_hist.png")
    plot_best_of_n(curve, out / "best_of_n.png")
    metrics = select_metrics(stats, curve)
    ctx.commit(out, metrics)
    return metrics
