"""The whole recipe through `xwin run` on tiny models: prepare, SFT as a two-process gang, RM,
sampling, scoring, selection, RS, DPO and eval (judged by a scripted OpenAI-compatible judge
over real HTTP), then the report; a second run reuses everything."""

from __future__ import annotations

import json

from judge_test_server import ScriptedJudgeServer
from pipeline_helpers import explain, records, tiny_config, xwin

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.controller.graph import OPTIONAL_STAGES
from xwin.stages.registry import STAGE_NAMES

TRAIN = {"max_steps": 2, "micro_batch_size": 1, "gradient_accumulation_steps": 1,
         "max_length": 256, "zero_stage": 0, "gradient_checkpointing": False, "bf16": False,
         "eval_every": 0, "save_every": 0, "log_every": 1, "eval_fraction": 0.25}


def test_whole_recipe_then_everything_cached(tmp_path, tiny_model_dir):
    with ScriptedJudgeServer() as judge:
        config = tiny_config(
            tmp_path, tiny_model_dir,
            prepare={"mtbench_questions": 1},
            executor={"profiles": {"sft": {"nodes": 2}}},
            sft=TRAIN, rm=TRAIN, rs=TRAIN, dpo=TRAIN,
            score={"dtype": "float32", "batch_size": 4, "max_length": 256},
            eval={"judge": {"base_url": judge.base_url, "model": judge.model,
                            "backoff_initial_s": 0.01},
                  "engine": {"backend": "hf", "dtype": "float32"},
                  "generation": {"temperature": 1.0, "max_new_tokens": 8}},
        )
        first = xwin("run", str(config), cwd=tmp_path, timeout=900)
        assert first.returncode == 0, explain(first)
        assert judge.requests  # eval asked the judge over HTTP

    (record,) = records(tmp_path / "work")
    expected = [s for s in STAGE_NAMES if s not in OPTIONAL_STAGES]
    assert list(record.stages) == expected
    assert all(s.status == "succeeded" and len(s.attempts) == 1 for s in record.stages.values())
    run_dir = tmp_path / "work" / "runs" / record.run_id
    # the gang: one process per rank, both logged, the world had two ranks
    assert (run_dir / "logs" / "sft.1.rank-1.log").exists()
    assert record.stages["sft"].metrics["world_size"] == 2
    assert record.stages["rm"].metrics["eval_accuracy"] >= 0

    report = (run_dir / "report" / "report.md").read_text()
    for plot in ("loss_sft.png", "loss_rm.png", "loss_rs.png", "loss_dpo.png", "best_of_n.png",
                 "timings.png", "rewards.png"):
        assert (run_dir / "report" / plot).stat().st_size > 1000, plot
        assert f"]({plot})" in report
    assert "RM held-out pairwise accuracy" in report
    store = open_store(StoreConfig(root=tmp_path / "store"))
    results = json.loads((store.fetch(record.stages["eval"].key) / "results.json").read_text())
    assert "## Reward of each model's answers" in report
    for model in ("sft", "rs", "dpo"):  # the RM scored every model's answers
        assert results["reward"][model]["n"] > 0
        assert f"{results['reward'][model]['mean']:.3f}" in report
    assert store.exists(f"reports/{record.run_id}")

    second = xwin("run", str(config), cwd=tmp_path)
    assert second.returncode == 0, explain(second)
    again = records(tmp_path / "work")[-1]
    assert again.run_id != record.run_id
    assert {s.status for s in again.stages.values()} == {"cached"}
    assert not any(s.attempts for s in again.stages.values())
    report = (tmp_path / "work" / "runs" / again.run_id / "report" / "report.md").read_text()
    assert f"cached, from {record.run_id}" in report  # times of the run that made them
