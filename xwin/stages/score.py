"""Stage `score`: the reward model scores every (context, response) of the sampled set; the
result is Xwin-Set (a multiwise set with scores).

Sharding: the input may come in parts (one per sample shard); they are read in shard order as
one list, and shard i of K scores records[i::K] and commits its own part. With K equal to the
sample stage's shard count each score shard gets about one sample shard's worth of work.

Resume: scored contexts are flushed to a partial file every `chunk_contexts`; an attempt killed
midway (preempted pod, kill -9) restarts after the last flushed chunk, as sampling does.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm.auto import tqdm

from xwin.artifacts.stage_io import StageContext
from xwin.core.config import ATTN_DESCRIPTION, AttnImplementation, StrictModel
from xwin.core.errors import UserError
from xwin.data.io import ChunkedJsonlWriter, read_records, resume_partial, write_records
from xwin.data.schemas import MultiwiseRecord
from xwin.data.selection import summary
from xwin.data.templating import tokenize_prompt_and_reply

log = logging.getLogger(__name__)

SCORED_FILE = "scored.jsonl"
PARTIAL_FILE = "scored.partial.jsonl"


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
    attn_implementation: AttnImplementation = Field("sdpa", description=ATTN_DESCRIPTION)
    chunk_contexts: int = Field(
        256, ge=1, description="contexts scored between flushes to the resumable partial file: "
        "a killed attempt resumes after the last flushed chunk")


def read_parts(parts: list[Path]) -> list[MultiwiseRecord]:
    """Records of every part in order (a part is a folder of *.jsonl or one file)."""
    records = [r for part in parts for r in read_records(part, MultiwiseRecord)]
    if not records:
        raise UserError(f"no records in {', '.join(map(str, parts))}")
    return records


def score_records(records: list[MultiwiseRecord], model, tokenizer, config: ScoreConfig) -> list[MultiwiseRecord]:
    """The records with every response scored; a response whose tokens cannot fit is left out,
    and each record's meta["scoring"] counts what was dropped or cut."""
    from xwin.data.dataset import pad_token_id
    from xwin.models.scoring import NonFiniteRewards, score_sequences

    sequences: list[list[int]] = []
    owners: list[tuple[int, int]] = []  # (record, response) of each sequence
    counts = [{"dropped_too_long": 0, "context_truncated": 0} for _ in records]
    for r_index, record in enumerate(records):
        for k, response in enumerate(record.responses):
            sample = tokenize_prompt_and_reply(tokenizer, record.context, response.text, config.max_length)
            if sample is None:
                counts[r_index]["dropped_too_long"] += 1
                continue
            counts[r_index]["context_truncated"] += int(sample.context_truncated)
            sequences.append(sample.input_ids)
            owners.append((r_index, k))
    try:
        scores = score_sequences(model, sequences, batch_size=config.batch_size,
                                 pad_id=pad_token_id(tokenizer), sort_by_length=config.sort_by_length,
                                 progress=False)
    except NonFiniteRewards as e:
        record, k = owners[e.indices[0]]
        raise UserError(
            f"reward model: {len(e.indices)} of {e.total} scores in this chunk of {len(records)} "
            f"contexts are not finite (NaN/Inf); first: record {records[record].id!r}, response "
            f"{k} scored {e.values[0]}. The reward model has diverged (or overflows in dtype "
            f"{config.dtype}): retrain it (lower learning rate, float32) or score in float32; "
            "nothing was written"
        ) from None
    kept: dict[tuple[int, int], float] = dict(zip(owners, scores))
    return [
        record.model_copy(update={
            "responses": [resp.model_copy(update={"score": kept[(r_index, k)]})
                          for k, resp in enumerate(record.responses) if (r_index, k) in kept],
            "meta": {**record.meta, "scoring": counts[r_index]},
        })
        for r_index, record in enumerate(records)
    ]


def run(config: ScoreConfig, ctx: StageContext) -> dict[str, float]:
    # torch: imported by the stage process, never by the controller that reads ScoreConfig
    from xwin.models.loading import load_tokenizer
    from xwin.models.reward import load_reward_model

    model_dir = ctx.input("reward_model")
    mine = read_parts(ctx.input_parts("samples"))[ctx.shard_index :: ctx.shard_count]
    if repeated := sorted(i for i, n in Counter(r.id for r in mine).items() if n > 1):
        raise UserError(f"input 'samples': record ids must be unique; repeated: {', '.join(repeated[:10])}")
    done = resume_partial(ctx.workdir / PARTIAL_FILE, ctx.work_fingerprint(config), MultiwiseRecord)
    todo = [r for r in mine if r.id not in done]
    log.info("scoring %d contexts (%d already scored by an earlier attempt)", len(todo), len(mine) - len(todo))

    started = time.monotonic()
    scored_now = 0
    if todo:
        tokenizer = load_tokenizer(model_dir)
        # eval mode, on the device policy's device
        model = load_reward_model(model_dir, config.dtype, attn_implementation=config.attn_implementation)
        with ChunkedJsonlWriter(ctx.workdir / PARTIAL_FILE) as writer, \
                tqdm(total=len(mine), initial=len(mine) - len(todo), desc="contexts scored", unit="context") as bar:
            for begin in range(0, len(todo), config.chunk_contexts):
                chunk = score_records(todo[begin : begin + config.chunk_contexts], model, tokenizer, config)
                writer.append(chunk)
                done.update((r.id, r) for r in chunk)
                scored_now += sum(len(r.responses) for r in chunk)
                bar.update(len(chunk))
    seconds = time.monotonic() - started

    scored = [done[r.id] for r in mine]
    scores = [resp.score for r in scored for resp in r.responses]
    out = ctx.workdir / "out"
    write_records(out / SCORED_FILE, scored)
    stats = summary(scores)
    metrics = {
        "contexts": len(scored),
        "contexts_resumed": len(mine) - len(todo),
        "responses_scored": len(scores),
        "responses_dropped_too_long": sum(r.meta["scoring"]["dropped_too_long"] for r in scored),
        "contexts_truncated": sum(r.meta["scoring"]["context_truncated"] for r in scored),
        "score_mean": stats.get("mean", 0.0),
        "score_std": stats.get("std", 0.0),
        "seconds": round(seconds, 3),
        "sequences_per_s": round(scored_now / seconds, 2) if scored_now and seconds > 0 else 0.0,
    }
    (out / "stats.json").write_text(json.dumps({**metrics, "scores": stats}, indent=2))
    ctx.commit(out, metrics)
    return metrics
