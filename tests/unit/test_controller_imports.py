"""The controller never imports the ML stack: its image ships without torch, transformers, vLLM
or DeepSpeed, and `xwin run` starts without paying for them. Stage modules keep their configs
importable and load the heavy code inside run()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CONTROLLER_WORK = """
import sys
import tempfile

from typer.testing import CliRunner

from xwin.artifacts.factory import open_store
from xwin.cli import app
from xwin.artifacts.config import StoreConfig
from xwin.config import load_config
from xwin.controller.graph import make_plan
from xwin.controller import pipeline, report  # noqa: F401  (the run loop and the report)
from xwin.executors.kubernetes import executor  # noqa: F401
from xwin.stages.registry import STAGES

config = load_config("examples/demo-cpu.yaml")
with tempfile.TemporaryDirectory() as root:
    make_plan(config, open_store(StoreConfig(root=root)))
for stage in STAGES:  # every config class, and the modules of the non-training stages
    stage.config()
    if stage.entry.startswith("xwin.stages."):
        __import__(stage.entry.partition(":")[0])
for args in (["--help"], ["render", "examples/cluster-7b.yaml"]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output)
print("imported:", [m for m in ("torch", "transformers", "vllm", "deepspeed") if m in sys.modules])
"""


def test_controller_work_imports_no_ml_stack():
    result = subprocess.run([sys.executable, "-c", CONTROLLER_WORK], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "imported: []", result.stdout[-3000:]
