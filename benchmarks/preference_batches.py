"""Padded against padding-free DPO micro-batches, side by side in one run: the same model, the
same pairs of mixed lengths in the same micro-batches and order, the same dtype and attention
kernel; tokens/s, peak memory and the padding-free/padded ratios.

    python benchmarks/preference_batches.py [--model DIR] [--steps 20] [--batch 8] [--repeats 2]

Each measurement runs in its own process. What is timed: DPO training steps as the dpo stage
computes them (`make_dpo_step`: one forward over both replies of every pair, the sigmoid loss
against fixed reference log-probs as a precomputed table supplies them, backward, an AdamW
step; no DeepSpeed, which adds the same to both), from the start of step `--warmup` to the end
of the last. tokens/s counts real tokens only (context + reply of both sides of every pair; never
a pad), so both layouts are credited with the same work. Peak memory is taken over all steps,
warmup included, above what the model, its AdamW state (allocated before) and the batches hold:
on CUDA torch.cuda.max_memory_allocated; on the CPU the growth of the process's peak resident
set (ru_maxrss), coarser (allocator caching, pages) but counting what torch allocates, which
tracemalloc does not see.
Pairs are batched in random order (the stage's `batching: random`); `length_grouped` would leave
the padded layout less padding to waste. On a GPU pass --model with a real model (e.g.
SmolLM2-135M), --bf16 and --attn flash_attention_2 (varlen kernels; sdpa and eager compute a
row-long masked attention, which grows with the square of the row).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

CACHE = Path(os.environ.get("XWIN_TEST_CACHE", Path.home() / ".cache" / "xwin" / "test-models"))
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "garden", "mirror"]
LAYOUTS = ("padded", "padding_free")


def tiny_model() -> Path:
    from xwin.models.tiny import build_tiny_llama

    path = CACHE / "tiny-llama-v1"
    if not (path / "config.json").exists():
        build_tiny_llama(path)
    return path


def pairs(count: int, longest: int, seed: int = 1) -> list[dict]:
    """Replies from 2 to `longest` words, drawn independently for the two sides of a pair: the
    spread of lengths real preference data has, and what padding wastes compute on."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        w, v = rng.sample(WORDS, 2)
        out.append({"context": [{"role": "user", "content": f"Say the word {w} a few times."}],
                    "chosen": " ".join([w] * rng.randint(2, longest)),
                    "rejected": " ".join([v] * rng.randint(2, longest))})
    return out


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_here(layout: str, args) -> dict:
    """One layout's timed steps, in this process."""
    from xwin.data.dataset import pad_token_id
    from xwin.data.schemas import PreferencePair
    from xwin.models.loading import load_causal_lm, load_tokenizer
    from xwin.train.dpo import make_dpo_step
    from xwin.train.dpo_config import DpoConfig
    from xwin.train.pairs import PaddingFreePairCollator, PairCollator, tokenize_pairs

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model_dir = args.model or tiny_model()
    tokenizer = load_tokenizer(model_dir)
    examples, _ = tokenize_pairs([PreferencePair(**p) for p in pairs(args.examples, args.longest)], tokenizer,
                                 args.max_length)
    order = list(range(len(examples)))
    random.Random(7).shuffle(order)
    micro_batches = [[examples[i] for i in order[k:k + args.batch]]
                     for k in range(0, len(order) - args.batch + 1, args.batch)]
    collate = PaddingFreePairCollator() if layout == "padding_free" else PairCollator(pad_token_id(tokenizer))
    batches = [collate(micro_batches[s % len(micro_batches)]) for s in range(args.steps)]
    padded_cells = [PairCollator(0)(micro_batches[s % len(micro_batches)])["input_ids"].numel()
                    for s in range(args.steps)]

    model = load_causal_lm(model_dir, "bfloat16" if args.bf16 else "float32", args.attn).to(device)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    for p in model.parameters():  # AdamW's state allocated now (a zero step moves nothing), so
        p.grad = torch.zeros_like(p)  # the peak below is what the layouts differ in
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # fixed reference log-probs, as a precomputed table supplies them: their values change the
    # loss, not the work, and computing them here would raise the peak before it is measured
    step_fn = make_dpo_step(DpoConfig(beta=0.1), lambda batch: torch.zeros(2 * args.batch, device=device))

    def run(s: int) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batches[s].items()}
        loss, _ = step_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # memory over every step, time over those after the warmup
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss_bytes()
    for s in range(args.warmup):
        run(s)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for s in range(args.warmup, args.steps):
        run(s)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() - base if cuda else peak_rss_bytes() - base
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup:])
    cells = sum(padded_cells[args.warmup:])
    return {"tokens_per_s": tokens / seconds, "peak_bytes": peak, "tokens": tokens,
            "pad_share_of_padded": 1 - tokens / cells}


def measure(layout: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", layout, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch", str(args.batch), "--max-length", str(args.max_length), "--examples", str(args.examples),
               "--longest", str(args.longest), "--attn", args.attn] + (["--bf16"] if args.bf16 else []) + (
               ["--model", str(args.model)] if args.model else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{layout} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def table(results: dict) -> str:
    padded, free = results["padded"], results["padding_free"]
    mib = 1024 * 1024
    memory = "peak memory (MiB, CUDA allocated)" if results["device"] == "cuda" else "peak RSS growth (MiB)"
    rows = [("", "tokens/s", memory),
            ("padded", f"{padded['tokens_per_s']:.0f}", f"{padded['peak_bytes'] / mib:.1f}"),
            ("padding_free", f"{free['tokens_per_s']:.0f}", f"{free['peak_bytes'] / mib:.1f}"),
            ("padding_free / padded", f"{results['ratio_tokens_per_s']:.3f}", f"{results['ratio_peak_memory']:.3f}")]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="HF folder (default: the tiny test Llama)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=8, help="pairs per micro-batch")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--longest", type=int, default=120, help="words in the longest reply")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--repeats", type=int, default=2, help="best of N (shared machines are noisy)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=LAYOUTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")
    if args.worker:
        print("RESULT " + json.dumps(measure_here(args.worker, args)), flush=True)
        return
    results: dict = {"model": str(args.model or tiny_model()), "device": "cuda" if torch.cuda.is_available() else "cpu",
                     "threads": torch.get_num_threads(), "attn": args.attn, "bf16": args.bf16, "batch": args.batch,
                     "steps": args.steps, "max_length": args.max_length}
    runs: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
    for _ in range(args.repeats):  # interleaved, so load changes hit both layouts alike
        for layout in LAYOUTS:
            runs[layout].append(measure(layout, args))
    # the fastest run and the lowest peak (the work is the same each time; noise only adds)
    best = {layout: {**max(r, key=lambda x: x["tokens_per_s"]), "peak_bytes": min(x["peak_bytes"] for x in r)}
            for layout, r in runs.items()}
    results.update(best)
    results["pad_share_of_padded"] = round(best["padded"]["pad_share_of_padded"], 3)
    results["ratio_tokens_per_s"] = best["padding_free"]["tokens_per_s"] / best["padded"]["tokens_per_s"]
    peak_padded = best["padded"]["peak_bytes"]
    results["ratio_peak_memory"] = best["padding_free"]["peak_bytes"] / peak_padded if peak_padded > 0 else math.nan
    print(f"{results['model']} on {results['device']} ({results['threads']} threads), attn {args.attn}, "
          f"{args.batch} pairs a micro-batch, {args.steps - args.warmup} timed steps; "
          f"padding is {results['pad_share_of_padded']:.0%} of the padded batches")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
