import json

import pytest

from xwin.core.errors import UserError
from xwin.judge.alpaca import load_alpaca, reference_outputs
from xwin.judge.config import LocalServerConfig
from xwin.judge.server import vllm_server_command


def test_alpaca_files_load_as_json_list_or_jsonl(tmp_path):
    items = [{"instruction": "Add.", "input": "1 and 2", "output": "3", "dataset": "x"},
             {"instruction": "Greet.", "output": "Hi", "generator": "davinci"}]
    (tmp_path / "a.json").write_text(json.dumps(items))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    for name in ("a.json", "b.jsonl"):
        loaded = load_alpaca(tmp_path / name)
        assert [i.prompt for i in loaded] == ["Add.\n\n1 and 2", "Greet."]
        assert reference_outputs(loaded, None, name) == ["3", "Hi"]


def test_bad_alpaca_records_are_named(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "ok"}, {"output": "no instruction"}]))
    with pytest.raises(UserError, match=r"bad.json: record 1: instruction"):
        load_alpaca(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: invalid JSON"):
        load_alpaca(tmp_path / "bad.jsonl")


def test_reference_outputs_are_matched_by_instruction_text(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{"instruction": "B"}, {"instruction": "A"}]))
    (tmp_path / "r.json").write_text(json.dumps([{"instruction": "A", "output": "ref A"},
                                                 {"instruction": "B", "output": "ref B"}]))
    items = load_alpaca(tmp_path / "q.json")
    assert reference_outputs(items, load_alpaca(tmp_path / "r.json"), "r.json") == ["ref B", "ref A"]
    (tmp_path / "r2.json").write_text(json.dumps([{"instruction": "A", "output": "ref A"}]))
    with pytest.raises(UserError, match="r2.json: no reference output for instruction 0"):
        reference_outputs(items, load_alpaca(tmp_path / "r2.json"), "r2.json")


def test_local_server_command_is_cpu_safe_by_default(tmp_path):
    cmd = vllm_server_command(tmp_path, "judge", 8123, LocalServerConfig())
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = " ".join(cmd)
    assert "--host 127.0.0.1 --port 8123" in flags and "--served-model-name judge" in flags
    assert "--enforce-eager" in cmd and f"--kv-cache-memory-bytes {2**30}" in flags
    assert "--gpu-memory-utilization" not in cmd
    gpu = vllm_server_command(tmp_path, "judge", 1, LocalServerConfig(
        enforce_eager=False, kv_cache_gib=None, gpu_memory_utilization=0.9, extra_args=["--x"]))
    assert "--enforce-eager" not in gpu and "--kv-cache-memory-bytes" not in gpu
    assert gpu[-3:] == ["--gpu-memory-utilization", "0.9", "--x"]
