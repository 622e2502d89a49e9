"""The stage table is the one place a stage's identity lives: every other layer reads it, and
what cannot read it (the chart's schema, the Job profile files) is checked against it here and
in test_helm_chart / test_k8s_profiles."""

from __future__ import annotations

import inspect

import grimp
import pytest

from xwin.config import PipelineConfig
from xwin.core.config import StrictModel
from xwin.core.errors import ConfigError
from xwin.stages.eval import RESERVED_INPUTS
from xwin.stages.registry import STAGE_NAMES, STAGES, default_wiring, stage_def


def test_the_pipeline_config_has_one_section_per_row_in_pipeline_order():
    sections = list(PipelineConfig.model_fields)
    assert sections[:4] == ["run", "store", "executor", "tracking"]
    assert sections[4:] == list(STAGE_NAMES)
    for stage in STAGES:
        assert issubclass(stage.config, StrictModel)
        assert PipelineConfig.model_fields[stage.name].annotation is stage.config


def test_default_wiring_reads_only_from_stages_of_the_table():
    wiring = default_wiring()
    assert set(wiring) == set(STAGE_NAMES)
    for stage, inputs in wiring.items():
        assert set(inputs) <= set(stage_def(stage).inputs)
        for source in inputs.values():
            upstream = source.partition("#")[0]
            assert upstream in STAGE_NAMES and upstream != stage, (stage, source)
    # inputs only a user wires in are documented in the row but have no default
    assert "alpaca" in stage_def("eval").inputs and "alpaca" not in wiring["eval"]


@pytest.mark.parametrize("stage", STAGES, ids=STAGE_NAMES)
def test_every_entry_point_is_a_run_of_config_and_context(stage):
    run = stage.load_entry()
    assert list(inspect.signature(run).parameters) == ["config", "ctx"]


MODEL_STAGES = {stage.name for stage in STAGES if stage.output == "model"}


def test_eval_reserves_exactly_the_inputs_its_row_gives_a_non_model_meaning():
    inputs = stage_def("eval").inputs
    models = {name for name, i in inputs.items() if i.source in MODEL_STAGES}
    reserved = set(inputs) - models
    assert reserved == RESERVED_INPUTS


def test_the_rows_say_what_the_report_and_profiles_need():
    assert [s.name for s in STAGES if s.trains] == ["sft", "rm", "rs", "dpo"]
    assert sorted(MODEL_STAGES) == ["dpo", "rs", "sft"]
    assert {s.name for s in STAGES if s.kind == "sharded"} == {"sample", "score"}
    assert [s.name for s in STAGES if s.optional] == ["annotate"]


def test_an_unknown_stage_is_a_user_error_that_lists_the_stages():
    with pytest.raises(ConfigError, match="unknown stage 'sftt'; stages are: prepare, sft"):
        stage_def("sftt")


def test_no_import_cycles_between_xwin_modules():
    """Function-level imports included; the layers contract in `make lint` says which way the
    arrows point, this says no two modules lean on each other."""
    graph = grimp.build_graph("xwin", cache_dir=None)
    cycles = sorted(
        (a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
        if a < b and graph.chain_exists(importer=b, imported=a)
    )
    assert cycles == []
