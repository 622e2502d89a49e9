"""Xwin-Pair through the controller: `run.inputs: {rm.train: annotate#pairs.jsonl}` pulls the
optional annotate stage into the run, moves rm after it, and the RM trains on the judge's pairs
(a scripted OpenAI-compatible judge over real HTTP) instead of prepare's stand-in pairs."""

from __future__ import annotations

from judge_test_server import ScriptedJudgeServer
from pipeline_helpers import explain, only_record, tiny_config, xwin

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.data.io import read_records
from xwin.data.schemas import MultiwiseRecord, PreferencePair

TRAIN = {"max_steps": 1, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "max_length": 256,
         "zero_stage": 0, "gradient_checkpointing": False, "bf16": False, "eval_every": 0, "save_every": 0,
         "log_every": 1, "eval_fraction": 0.25}


def test_judge_labelled_pairs_train_the_reward_model(tmp_path, tiny_model_dir):
    with ScriptedJudgeServer() as judge:
        config = tiny_config(
            tmp_path, tiny_model_dir,
            run={"inputs": {"rm.train": "annotate#pairs.jsonl"}, "until": "rm"},
            sample={"responses_per_prompt": 3, "temperature": 1.0},
            sft=TRAIN, rm=TRAIN,
            annotate={"judge": {"base_url": judge.base_url, "model": judge.model, "backoff_initial_s": 0.01},
                      "max_responses": 3},
        )
        result = xwin("run", str(config), cwd=tmp_path, timeout=900)
        assert result.returncode == 0, explain(result)
        judged = len(judge.requests)

    record = only_record(tmp_path / "work")
    assert list(record.stages) == ["prepare", "sft", "sample", "annotate", "rm"]
    assert all(s.status == "succeeded" for s in record.stages.values())
    annotate, rm = record.stages["annotate"], record.stages["rm"]
    assert rm.inputs["train"] == f"{annotate.key}#pairs.jsonl"

    store = open_store(StoreConfig(root=tmp_path / "store"))
    sample_key = record.stages["sample"].key
    parts = [sample_key] if store.exists(sample_key) else sorted(store.list(sample_key + "/"))
    samples = [r for key in parts for file in sorted(store.fetch(key).rglob("*.jsonl"))
               for r in read_records(file, MultiwiseRecord)]
    pairs = list(read_records(store.fetch(annotate.key) / "pairs.jsonl", PreferencePair))
    # Pairwise judging asks twice per response pair (both orders), and the scripted judge prefers
    # the longer answer: every kept pair has the longer reply as chosen.
    distinct = [len({r.text.strip() for r in s.responses if r.text.strip()}) for s in samples]
    assert judged == sum(2 * k * (k - 1) // 2 for k in distinct)
    assert pairs and all(len(p.chosen) > len(p.rejected) for p in pairs)
    assert annotate.metrics["pairs"] == len(pairs)
    # the RM's data report counts the judge's pairs, not prepare's four stand-in pairs
    assert rm.metrics["data_kept"] == len(pairs)
