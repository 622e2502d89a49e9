"""Settings of the judge: which endpoint answers, how hard we may push it, and where its
answers are remembered (shared by the `eval` and `annotate` stages); and the eval stage's
judge gate: how the judge is checked before its verdicts are believed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from xwin.core.config import StrictModel


class LocalServerConfig(StrictModel):
    """A vLLM OpenAI-compatible server started for the judge model when no base_url is set
    (on Kubernetes: these are the flags of the judge server pod; `port` does not apply there).
    The defaults are safe on a CPU; on a GPU set kv_cache_gib: null and
    gpu_memory_utilization: 0.9, enforce_eager: false."""

    port: int | None = Field(None, description="fixed port; default: a free port on 127.0.0.1")
    startup_timeout_s: float = Field(900.0, gt=0, description="wait this long for /v1/models")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="--dtype of the served model; auto is decided by xwin for this "
        "machine (bfloat16 where native, else float16 on a GPU, float32 on a CPU)")
    max_model_len: int = Field(4096, ge=256, description="--max-model-len (prompt + verdict)")
    enforce_eager: bool = Field(True, description="--enforce-eager (needed on CPU)")
    kv_cache_gib: float | None = Field(
        1.0, gt=0, description="--kv-cache-memory-bytes in GiB (CPU: the KV cache's share of RAM)"
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="--gpu-memory-utilization (GPU; on CPU a share of RAM)"
    )
    max_num_seqs: int | None = Field(None, ge=1, description="--max-num-seqs (batch width)")
    seed: int = Field(0, description="engine seed (vLLM on CPU takes no per-request seed)")
    extra_args: list[str] = Field(default_factory=list, description="more vLLM server flags")


def vllm_server_flags(served_name: str, cfg: LocalServerConfig, dtype: str) -> list[str]:
    """The engine flags of the judge server, the same for the local process (judge/server.py)
    and the cluster's Deployment (xwin.executors.kubernetes.judge_server): only where it
    listens differs. Here, with the config, so the controller builds them without torch."""
    flags = ["--served-model-name", served_name, "--dtype", dtype,
             "--max-model-len", str(cfg.max_model_len), "--seed", str(cfg.seed),
             "--disable-log-stats", "--uvicorn-log-level", "warning"]
    if cfg.enforce_eager:
        flags.append("--enforce-eager")
    if cfg.kv_cache_gib is not None:
        flags += ["--kv-cache-memory-bytes", str(int(cfg.kv_cache_gib * 2**30))]
    if cfg.gpu_memory_utilization is not None:
        flags += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    if cfg.max_num_seqs is not None:
        flags += ["--max-num-seqs", str(cfg.max_num_seqs)]
    return flags + list(cfg.extra_args)


class JudgeConfig(StrictModel):
    """An OpenAI-compatible chat endpoint that grades answers. Leave base_url unset to serve
    the judge model (input `judge`, or model_path) with a local vLLM server for the stage's
    lifetime; set it to use a hosted model (e.g. https://api.openai.com/v1, model gpt-4o)."""

    base_url: str | None = Field(
        None, description="external endpoint ending in /v1; unset: start a local vLLM server "
        "(on Kubernetes: the controller runs it as a Deployment + Service, profile judge-server)"
    )
    model: str | None = Field(
        None, description="model name sent to the endpoint (required with base_url); for the "
        "local server its served name (default: the judge input's name)"
    )
    model_path: str | None = Field(
        None, description="local server: HF folder of the judge model (else the input `judge`)"
    )
    api_key_env: str | None = Field(
        "XWIN_JUDGE_API_KEY",
        description="name of the environment variable holding the API key (never the key itself)",
    )
    allow_insecure_http: bool = Field(
        False, description="send the API key to a plain http:// endpoint on another host (it "
        "crosses the network unencrypted); off: such an endpoint is refused, only https:// and "
        "loopback http:// (127.0.0.1, localhost) get the key")
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once")
    max_attempts: int = Field(6, ge=1, description="tries per request on 429/5xx/timeouts")
    backoff_initial_s: float = Field(1.0, ge=0, description="first retry delay (exponential)")
    backoff_max_s: float = Field(60.0, ge=0, description="longest retry delay")
    timeout_s: float = Field(300.0, gt=0, description="per-request read timeout")
    temperature: float = Field(0.0, ge=0, description="judge sampling temperature (MT-bench: 0)")
    max_tokens: int = Field(1024, ge=8, description="longest judge reply (rationale + verdict)")
    constrain_verdict: bool = Field(
        False, description="vLLM endpoints only: constrain replies with a regex to a short "
        "rationale followed by the verdict, so small judges always answer in the format",
    )
    cache_path: Path | None = Field(
        None, description="SQLite file of judge replies; default: <workdir>/judge-cache.sqlite"
    )
    server: LocalServerConfig = Field(default_factory=LocalServerConfig)


class JudgeGateConfig(StrictModel):
    """The eval stage checks its judge before it reports a judged number (calibration.py).

    Calibration set: `questions` MT-bench questions with a GPT-4 reference answer (shipped with
    MT-bench; drawn with `seed`), each reference compared with two foils, a different question's
    reference answer and its own first `truncate_fraction` of words, in both orders: the full
    reference is the right verdict. Default: 6 x 2 x 2 = 24 judge requests (a few seconds each
    on a CPU-served small judge, cached like every judge reply).

    The gate fails when any figure misses its threshold: the judge's agreement with itself under
    position swap (on the calibration set, and on the real model comparisons when there are any),
    its accuracy on the calibration set, or the share of its replies without a verdict. A failed
    gate does not stop the stage: results.json, report.md and the metrics say "judge unreliable"
    and the judged tables are shown under that warning."""

    enabled: bool = Field(True, description="check the judge; off: no calibration requests, "
                          "and the report says the judge was not checked")
    questions: int = Field(6, ge=1, le=20, description="MT-bench questions with a reference "
                           "answer in the calibration set (4 judge requests each)")
    foils: list[Literal["other_question", "truncated"]] = Field(
        default_factory=lambda: ["other_question", "truncated"], min_length=1,
        description="what each reference answer is compared with: another question's "
        "reference answer, and/or a truncated copy of itself")
    truncate_fraction: float = Field(0.15, gt=0, lt=1, description="the truncated foil "
                                     "keeps this share of the reference's words")
    seed: int = Field(0, description="which questions (and other-question foils) are drawn")
    min_swap_agreement: float = Field(
        0.60, ge=0, le=1, description="least share of swapped comparisons whose two orders "
        "agree (calibration set; model comparisons too when there are any)")
    min_calibration_accuracy: float = Field(
        0.80, ge=0, le=1, description="least share of calibration verdicts that name the full "
        "reference (ties, wrong and unparseable verdicts are misses; always [[A]] scores 0.5)")
    max_unparseable_share: float = Field(
        0.10, ge=0, le=1, description="most share of judge replies (calibration and real, "
        "refused requests not counted) without a parseable verdict: beyond one in ten the "
        "judge is not following the prompt, and rates would rest on the replies it happened "
        "to format")
