"""The Stage gains table: numbers from eval's results.json, judged ones only behind a passed
gate, paired differences with their interval and what the interval says."""

from __future__ import annotations

from xwin.controller.gains import model_order, stage_gains


def results(gate_passed: bool) -> dict:
    def model(value, lo, hi, words):
        return {"prompt_strict": {"value": value, "ci": [lo, hi], "n": 100},
                "length_words": {"mean": words, "median": words - 2}}

    return {
        "confidence": 0.95,
        "verifiable": {"ifeval": {"n_prompts": 100, "models": {
            "dpo": model(0.41, 0.32, 0.51, 60), "sft": model(0.30, 0.22, 0.40, 80),
            "base": model(0.12, 0.07, 0.20, 120)},
            "paired": {"dpo_vs_sft": {"diff": 0.11, "ci": [0.03, 0.19], "n": 100, "mcnemar_p": 0.012},
                       "sft_vs_base": {"diff": 0.18, "ci": [-0.01, 0.30], "n": 100, "mcnemar_p": 0.2}}}},
        "reward": {"sft": {"prompts_mean": 0.5}, "dpo": {"prompts_mean": 1.25}},
        "judge_gate": {"checked": True, "passed": gate_passed},
        "mtbench": {"single": {"sft": {"score": 3.0}, "dpo": {"score": 4.5}}},
    }


def test_the_table_lists_models_base_first_with_the_gold_metric_and_lengths():
    lines = stage_gains(results(gate_passed=False))
    assert lines[0] == "## Stage gains"
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == ["base", "sft", "dpo"]
    assert rows[1] == "| sft | 30.0% | [22.0%, 40.0%] | 0.500 | 80 / 78 |"
    assert rows[0].split(" | ")[3] == "–"  # the base has no RM score
    text = "\n".join(lines)
    assert "MT-bench" not in text and "failed its gate" in text
    assert "**dpo - sft**: +11.0 points [+3.0, +19.0] (above 0; n = 100, p = 0.012)" in text
    assert "**sft - base**: +18.0 points [-1.0, +30.0] (includes 0" in text


def test_judged_numbers_appear_only_behind_a_passed_gate():
    lines = stage_gains(results(gate_passed=True))
    assert "MT-bench grade" in lines[4]
    assert any(line.endswith("| 4.50 |") and line.startswith("| dpo") for line in lines)


def test_nothing_measured_means_no_section_and_the_order_is_base_then_the_pipeline():
    assert stage_gains({}) == []
    assert model_order({"dpo", "zeta", "base", "rs", "sft"}) == ["base", "sft", "rs", "dpo", "zeta"]


def test_the_summary_carries_each_models_gold_metric_and_every_paired_difference():
    from xwin.controller.gains import gains_summary

    summary = gains_summary(results(gate_passed=False))
    assert summary["gold_metric"] == "ifeval prompt-level strict accuracy (held-out, 100 prompts)"
    assert list(summary["models"]) == ["base", "sft", "dpo"]
    assert summary["models"]["dpo"] == {"value": 0.41, "ci": [0.32, 0.51], "n": 100,
                                        "length_words_mean": 60, "rm_score": 1.25}
    assert summary["models"]["base"]["rm_score"] is None
    assert summary["paired"]["dpo_vs_sft"] == {"diff": 0.11, "ci": [0.03, 0.19], "n": 100,
                                               "mcnemar_p": 0.012}
    assert summary["judge_gate"] == {"checked": True, "passed": False}
    assert gains_summary({"reward": {"sft": {"prompts_mean": 0.5}}}) is None
