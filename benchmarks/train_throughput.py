"""Training throughput of our SFT and DPO steps against TRL's SFTTrainer and DPOTrainer, side by
side in one run: the same model, the same examples, the same batch size and length limit, one
process, the same dtype; tokens/s and the ours/TRL ratio.

    python benchmarks/train_throughput.py [--model DIR] [--steps 30] [--batch 8] [--repeats 2]

Each measurement runs in its own process. What is timed: optimizer steps only (model loading,
tokenization and the DPO reference pass are left out), from the start of step `--warmup` to the
start of the last step, as examples/s; tokens/s is examples/s x the mean non-pad tokens per example
(our tokenization of the same examples, which is what both sides train on up to template details).
Ours runs DeepSpeed ZeRO-0 with random batches (as TRL's default sampler; length grouping or
packing would pad less and run faster).
TRL is a benchmark-only dependency (`pip install trl`). On a GPU pass --model with a real model
(e.g. SmolLM2-135M) and --bf16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

CACHE = Path(os.environ.get("XWIN_TEST_CACHE", Path.home() / ".cache" / "xwin" / "test-models"))
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "garden", "mirror"]


def tiny_model() -> Path:
    from xwin.models.tiny import build_tiny_llama

    path = CACHE / "tiny-llama-v1"
    if not (path / "config.json").exists():
        build_tiny_llama(path)
    return path


def conversations(count: int, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        w = rng.choice(WORDS)
        reply = " ".join([w] * rng.randint(3, 30))
        out.append([{"role": "user", "content": f"Repeat the word {w} a number of times, please."},
                    {"role": "assistant", "content": reply}])
    return out


def pairs(count: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        w, v = rng.sample(WORDS, 2)
        n = rng.randint(3, 25)
        out.append({"context": [{"role": "user", "content": f"Say the word {w} {n} times."}],
                    "chosen": " ".join([w] * n), "rejected": " ".join([v] * rng.randint(3, 25))})
    return out


class StepClock:
    """Start times of every optimizer step."""

    def __init__(self):
        self.starts: list[float] = []

    def examples_per_s(self, batch: int, warmup: int) -> float:
        steps = len(self.starts) - 1 - warmup
        return steps * batch / (self.starts[-1] - self.starts[warmup])


def ours(kind: str, model_dir: Path, args, workdir: Path) -> tuple[float, float]:
    """(examples/s, mean tokens per example) of our loop."""
    from xwin.data.dataset import SftCollator, build_sft_dataset, pad_token_id
    from xwin.data.schemas import Conversation, PreferencePair
    from xwin.models.loading import load_causal_lm, load_tokenizer
    from xwin.train.dpo import PrecomputedReference, make_dpo_step
    from xwin.train.dpo_config import DpoConfig
    from xwin.train.launch import init_distributed, locate_process
    from xwin.train.loop import TrainTask, train
    from xwin.train.pairs import PairCollator, tokenize_pairs
    from xwin.train.sft import sft_step
    from xwin.train.sft_config import SftConfig
    from xwin.train.tracking import JsonlSink, Tracker

    place = locate_process({})
    device = init_distributed(place)
    tokenizer = load_tokenizer(model_dir)
    common = {"learning_rate": 1e-5, "max_steps": args.steps, "micro_batch_size": args.batch,
                  "gradient_accumulation_steps": 1, "max_length": args.max_length, "zero_stage": 0, "bf16": args.bf16,
                  "gradient_checkpointing": False, "batching": "random", "eval_fraction": 0.0, "log_every": 10**6,
                  "save_every": 0, "eval_every": 0, "warmup_steps": 0, "lr_scheduler": "constant"}
    clock = StepClock()
    if kind == "sft":
        config = SftConfig(**common)
        examples, _ = build_sft_dataset([Conversation(messages=m) for m in conversations(args.examples)],
                                        tokenizer, args.max_length)
        collate, step = SftCollator(pad_token_id(tokenizer)), sft_step
        prepare = None
    else:
        config = DpoConfig(**common, beta=0.1)
        examples, _ = tokenize_pairs([PreferencePair(**p) for p in pairs(args.examples)], tokenizer, args.max_length)
        collate = PairCollator(pad_token_id(tokenizer))
        reference = PrecomputedReference(workdir / f"ref-{time.time_ns()}.pt", examples, collate, args.batch,
                                         place, device)
        step, prepare = make_dpo_step(config, reference), reference.prepare

    def timed_step(engine, batch):
        clock.starts.append(time.perf_counter())
        return step(engine, batch)

    model = load_causal_lm(model_dir, "bfloat16" if args.bf16 else "float32")
    model.config.use_cache = False
    task = TrainTask(kind, model, examples, [], [len(e) for e in examples], collate, timed_step)
    tracker = Tracker([JsonlSink(workdir / f"{kind}-metrics.jsonl")])  # no TensorBoard: it is not what is timed
    train(task, config, place, device, tracker=tracker, prepare=prepare)
    tracker.close()
    tokens = sum(len(e) for e in examples) / len(examples)
    return clock.examples_per_s(args.batch, args.warmup), tokens


def trl_run(kind: str, model_dir: Path, args, workdir: Path) -> float:
    """examples/s of TRL's trainer on the same examples."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            clock.starts.append(time.perf_counter())

    common = {"output_dir": str(workdir / f"trl-{kind}"), "per_device_train_batch_size": args.batch,
                  "gradient_accumulation_steps": 1, "max_steps": args.steps, "learning_rate": 1e-5,
                  "logging_steps": 10**6,
                  "save_strategy": "no", "report_to": [], "bf16": args.bf16, "max_length": args.max_length,
                  "lr_scheduler_type": "constant", "warmup_steps": 0, "dataloader_num_workers": 0, "seed": 0,
                  "gradient_checkpointing": False, "use_cpu": not torch.cuda.is_available()}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    if kind == "sft":
        data = Dataset.from_list([{"messages": m} for m in conversations(args.examples)])
        trainer = SFTTrainer(model=model, args=SFTConfig(**common, packing=False), train_dataset=data,
                             processing_class=tokenizer, callbacks=[Clock()])
    else:
        data = Dataset.from_list([{"prompt": p["context"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                                   "rejected": [{"role": "assistant", "content": p["rejected"]}]}
                                  for p in pairs(args.examples)])
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1, precompute_ref_log_probs=True,
                                                         precompute_ref_batch_size=args.batch),
                             train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return clock.examples_per_s(args.batch, args.warmup)


def worker(args) -> None:
    """One measurement in a fresh process: TRL must not see our process group (accelerate would
    wrap the model in DDP) and neither side inherits the other's allocator or thread state."""
    model_dir = args.model or tiny_model()
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker_side == "ours":
            rate, tokens = ours(args.worker_kind, model_dir, args, Path(tmp))
        else:
            rate, tokens = trl_run(args.worker_kind, model_dir, args, Path(tmp)), None
    print("RESULT " + json.dumps({"examples_per_s": rate, "tokens_per_example": tokens}), flush=True)


def measure(side: str, kind: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", side, kind, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--max-length", str(args.max_length),
               "--examples", str(args.examples)] + (["--bf16"] if args.bf16 else []) + (
               ["--model", str(args.model)] if args.model else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {kind} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="HF folder (default: the tiny test Llama)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=8, help="examples (DPO: pairs) per step")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="best of N (shared machines are noisy)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", nargs=2, metavar=("SIDE", "KIND"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.worker_side, args.worker_kind = args.worker
        worker(args)
        return
    results: dict = {"model": str(args.model or tiny_model()), "device": "cuda" if torch.cuda.is_available() else "cpu",
                     "threads": torch.get_num_threads(), "batch": args.batch, "max_length": args.max_length,
                     "steps": args.steps, "trl": metadata.version("trl"), "deepspeed": metadata.version("deepspeed")}
    for kind in ("sft", "dpo"):
        best_ours = best_trl = 0.0
        tokens = 0.0
        for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
            mine = measure("ours", kind, args)
            best_ours, tokens = max(best_ours, mine["examples_per_s"]), mine["tokens_per_example"]
            best_trl = max(best_trl, measure("trl", kind, args)["examples_per_s"])
        results[kind] = {
            "ours_tokens_per_s": round(best_ours * tokens, 1),
            "trl_tokens_per_s": round(best_trl * tokens, 1),
            "ours_examples_per_s": round(best_ours, 2),
            "trl_examples_per_s": round(best_trl, 2),
            "tokens_per_example": round(tokens, 1),  # DPO: a pair, both replies with their context
            "ratio_ours_over_trl": round(best_ours / best_trl, 3) if best_trl else math.nan,
        }
        print(f"{kind}: ours {results[kind]['ours_tokens_per_s']} tok/s, TRL {results[kind]['trl_tokens_per_s']} "
              f"tok/s, ratio {results[kind]['ratio_ours_over_trl']}", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
