"""A judge API key reaches the stage only through the environment (a Kubernetes Secret in a
cluster) and is written nowhere: `xwin render` and `xwin run` of a stage that calls the judge
(annotate, against the scripted judge over real HTTP) with a known key in the environment, then
every rendered object, run record, stage spec, log, artifact, report and console line is
searched for it. The judge must have received the key, or the search would prove nothing."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import yaml
from judge_test_server import ScriptedJudgeServer
from pipeline_helpers import REPO, explain, only_record, xwin_env

KEY_ENV = "XWIN_JUDGE_API_KEY"
RECORDS = [
    {"id": "p1", "context": [{"role": "user", "content": "Plan a trip."}],
     "responses": [{"text": "quality=3 walk"}, {"text": "quality=8 Alfama, then Belem"}]},
    {"id": "p2", "context": [{"role": "user", "content": "Name a colour."}],
     "responses": [{"text": "quality=6 teal"}, {"text": "quality=2 red"}]},
]


def xwin_with_key(key: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**xwin_env(), KEY_ENV: key}
    return subprocess.run([sys.executable, "-m", "xwin.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


def test_the_judge_key_is_used_but_never_rendered_recorded_logged_or_reported(tmp_path, tiny_model_dir):
    key = f"sk-canary-{secrets.token_hex(12)}"
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    with ScriptedJudgeServer() as judge:
        config = tmp_path / "pipeline.yaml"
        config.write_text(yaml.safe_dump({
            "run": {"name": "leak", "workdir": str(tmp_path / "work"), "only": ["annotate"],
                    "inputs": {"annotate.samples": str(samples), "annotate.judge": str(tiny_model_dir)}},
            "store": {"root": str(tmp_path / "store")},
            "executor": {"profiles_dir": str(REPO / "jobs")},
            "annotate": {"judge": {"base_url": judge.base_url, "model": judge.model,
                                   "backoff_initial_s": 0.01}, "max_responses": 2},
        }, sort_keys=False))

        rendered = xwin_with_key(key, "render", str(config), "--stage", "annotate", cwd=tmp_path)
        assert rendered.returncode == 0, explain(rendered)
        ran = xwin_with_key(key, "run", str(config), cwd=tmp_path)
        assert ran.returncode == 0, explain(ran)
        status = xwin_with_key(key, "status", "--json", "--workdir", str(tmp_path / "work"), cwd=tmp_path)
        report = xwin_with_key(key, "report", "--workdir", str(tmp_path / "work"), cwd=tmp_path)
        assert report.returncode == 0, explain(report)

    # the key did its job: every judge request carried it
    assert judge.requests
    sent = [{k.lower(): v for k, v in h.items()}.get("authorization") for h in judge.headers]
    assert sent == [f"Bearer {key}"] * len(judge.requests)
    # rendered: the pod reads it from the Secret the profile names, by reference
    docs = list(yaml.safe_load_all(rendered.stdout))
    job = next(d for d in docs if d["kind"] == "Job")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[KEY_ENV] == {"name": KEY_ENV, "valueFrom": {"secretKeyRef": {
        "name": "xwin-judge", "key": "api-key", "optional": True}}}
    record = only_record(tmp_path / "work")
    assert record.stages["annotate"].status == "succeeded"
    assert (tmp_path / "work" / "runs").is_dir() and list((tmp_path / "work").rglob("*.log"))
    # ...and the value is nowhere: not in the manifests, the console, nor any file the run wrote
    # (run record, stage specs, logs, judge cache, artifacts, records, report)
    for what, text in [("render", rendered.stdout + rendered.stderr), ("run", ran.stdout + ran.stderr),
                       ("status", status.stdout + status.stderr), ("report", report.stdout + report.stderr)]:
        assert key not in text, f"the key appears in the output of xwin {what}"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 10, written  # the search covers what the run wrote
    assert files_holding(tmp_path, key.encode()) == []
