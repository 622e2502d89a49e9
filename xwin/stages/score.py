"""Stage `score`: the reward model scores every (context, response) of the sampled set; the
result is Xwin-Set (a multiwise set with scores).

Sharding: the input may come in parts (one per sample shard); they are read in shard order as
one list, and shard i of K scores records[i::K] and commits its own part. With K equal to the
sample stage's shard count each score shard gets about one sample shard's worth of work.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from xwin.config_base import StrictModel, UserError
from xwin.data.io import read_records, write_records
from xwin.data.schemas import MultiwiseRecord
from xwin.data.templating import tokenize_prompt_and_reply
from xwin.selection import summary
from xwin.stages.base import StageContext

log = logging.getLogger(__name__)

INPUTS: tuple[str, ...] = ("reward_model", "samples")

SCORED_FILE = "scored.jsonl"


class ScoreConfig(StrictModel):
    batch_size: int = Field(16, ge=1, description="sequences per reward-model forward pass")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "float32",
        description="reward model dtype. float32 by default: in bfloat16 a score moves by up to "
        "~0.1 with the batch it is computed in (measured on SmolLM2-135M, score std ~0.5), "
        "enough to reorder near-tied responses; bfloat16 halves memory and time on a GPU",
    )
    max_length: int = Field(
        2048,
        ge=16,
        description="context + response tokens, at most; longer contexts lose their oldest "
        "turns first (the response is never cut); a response that cannot fit is dropped",
    )
    sort_by_length: bool = Field(
        True, description="batch sequences of similar length together (less padding)"
    )


def read_parts(parts: list[Path]) -> list[MultiwiseRecord]:
    """Records of every part in order (a part is a folder of *.jsonl or one file)."""
    records = [r for part in parts for r in read_records(part, MultiwiseRecord)]
    if not records:
        raise UserError(f"no records in {', '.join(map(str, parts))}")
    return records


def run(config: ScoreConfig, ctx: StageContext) -> dict[str, float]:
    # torch: imported by the stage process, never by the controller that reads ScoreConfig
    from xwin.data.dataset import pad_token_id
    from xwin.models.loading import load_tokenizer
    from xwin.models.reward import load_reward_model
    from xwin.sampling.rewards import score_sequences

    model_dir = ctx.input("reward_model")
    records = read_parts(ctx.input_parts("samples"))
    mine = records[ctx.shard_index :: ctx.shard_count]
    tokenizer = load_tokenizer(model_dir)

    # One sequence per response; responses whose tokens cannot fit are left out of the set.
    sequences: list[list[int]] = []
    owners: list[tuple[int, int]] = []  # (record, response) of each sequence
    dropped = context_truncated = 0
    for r_index, record in enumerate(mine):
        for k, response in enumerate(record.responses):
            sample = tokenize_prompt_and_reply(tokenizer, record.context, response.text,
                                               config.max_length)
            if sample is None:
                dropped += 1
                continue
            context_truncated += sample.context_truncated
            sequences.append(sample.input_ids)
            owners.append((r_index, k))

    log.info("scoring %d responses of %d contexts", len(sequences), len(mine))
    model = load_reward_model(model_dir, config.dtype).eval()
    started = time.monotonic()
    scores = score_sequences(model, sequences, batch_size=config.batch_size,
                             pad_id=pad_token_id(tokenizer),
                             sort_by_length=config.sort_by_length)
    seconds = time.monotonic() - started

    kept: dict[tuple[int, int], float] = dict(zip(owners, scores))
    scored = []
    for r_index, record in enumerate(mine):
        responses = [resp.model_copy(update={"score": kept[(r_index, k)]})
                     for k, resp in enumerate(record.responses) if (r_index, k) in kept]
        scored.append(record.model_copy(update={"responses": responses}))

    out = ctx.workdir / "out"
    write_records(out / SCORED_FILE, scored)
    stats = summary(scores)
    metrics = {
        "contexts": len(scored),
        "responses_scored": len(scores),
        "responses_dropped_too_long": dropped,
        "contexts_truncated": context_truncated,
        "score_mean": stats.get("mean", 0.0),
        "score_std": stats.get("std", 0.0),
        "seconds": round(seconds, 3),
        "sequences_per_s": round(len(scores) / seconds, 2) if seconds > 0 else 0.0,
    }
    (out / "stats.json").write_text(json.dumps({**metrics, "scores": stats}, indent=2))
    ctx.commit(out, metrics)
    return metrics
