"""Peak memory of the dpo stage, side by side in one run: full DPO against LoRA DPO, and a
precomputed reference against an online one (a frozen copy run at every step; with LoRA the
policy with its adapters off, no copy). Each run is the real stage (`xwin stage dpo`) in its own
process on the same pairs and settings (stage_runs.py).

    python benchmarks/memory.py [--model DIR] [--steps 6] [--batch 4] [--max-length 256] [--json out.json]

What is measured (stage_runs.py): on a GPU, torch.cuda.max_memory_allocated; on the CPU, the
process's peak RSS less its RSS after the imports, which is coarser. The comparisons use the
training peak (when the loop returns); the stage's peak, export included, is printed beside it.
The goal for the precomputed reference is at most 0.6x the online reference's peak (full DPO).
Default model: the tiny test Llama; on a GPU pass --model with SmolLM2-135M (or larger).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import stage_runs
from train_throughput import tiny_model

PRECOMPUTE_GOAL = 0.6  # precomputed / online reference, peak memory
RUNS = {  # name: (lora, reference)
    "full, precomputed reference": (False, "precompute"),
    "full, online reference": (False, "online"),
    "LoRA, precomputed reference": (True, "precompute"),
    "LoRA, online reference": (True, "online"),
}


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def ratio_line(name: str, numerator: dict, denominator: dict, goal: float | None = None) -> tuple[str, float]:
    ratio = numerator["train_peak_bytes"] / denominator["train_peak_bytes"]
    verdict = "" if goal is None else f" (goal <= {goal}x: {'PASS' if ratio <= goal else 'MISS'})"
    return f"{name}: {ratio:.2f}x{verdict}", ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="HF folder (default: the tiny test Llama)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--reply-words", type=int, nargs=2, default=(20, 120), metavar=("MIN", "MAX"))
    parser.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3))
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="as the stage's default")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or tiny_model()

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = stage_runs.write_pairs(Path(tmp) / "pairs.jsonl", args.pairs, tuple(args.reply_words))
        for i, (name, (lora, reference)) in enumerate(RUNS.items()):
            config = stage_runs.train_config(args.steps, args.batch, args.max_length, log_every=1,
                                             zero_stage=args.zero_stage, reference=reference,
                                             gradient_checkpointing=args.gradient_checkpointing,
                                             lora={"enabled": lora, "r": args.lora_r, "alpha": 2 * args.lora_r})
            spec = stage_runs.write_spec(Path(tmp) / f"run{i}", "dpo", {"model": model, "train": pairs}, config)
            results[name] = stage_runs.measure_stage("dpo", spec)
            r = results[name]
            print(f"{name}: training peak {mib(r['train_peak_bytes'])} MiB, stage peak "
                  f"{mib(r['stage_peak_bytes'])} MiB, {r['tokens_per_s']:.0f} tokens/s ({r['elapsed_s']} s)",
                  flush=True)

    first = next(iter(results.values()))
    print(f"\ndpo stage, {model.name}, {args.batch} pairs x {args.max_length} tokens, {args.steps} steps, "
          f"ZeRO-{args.zero_stage}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
          f"{first['device']}; memory: {first['memory']}\n")
    print("| run | training peak MiB | stage peak MiB | tokens/s | elapsed s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {mib(r['train_peak_bytes'])} | {mib(r['stage_peak_bytes'])} | "
              f"{r['tokens_per_s']:.0f} | {r['elapsed_s']} |")
    lines = [
        ratio_line("LoRA / full (precomputed reference)", results["LoRA, precomputed reference"],
                   results["full, precomputed reference"]),
        ratio_line("precomputed / online reference (full)", results["full, precomputed reference"],
                   results["full, online reference"], PRECOMPUTE_GOAL),
        ratio_line("precomputed / online reference (LoRA)", results["LoRA, precomputed reference"],
                   results["LoRA, online reference"]),
    ]
    print()
    for line, _ in lines:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "model": str(model), "steps": args.steps, "batch": args.batch, "max_length": args.max_length,
            "zero_stage": args.zero_stage, "gradient_checkpointing": args.gradient_checkpointing,
            "runs": results, "ratios": {line.split(":")[0]: round(r, 3) for line, r in lines},
            "precompute_goal": PRECOMPUTE_GOAL}, indent=2))


if __name__ == "__main__":
    main()
