"""The local judge server's lifecycle with the real vLLM entry point: a server that is not
ready in time, or exits, is reported with its log and leaves no process behind. (Serving and
judging for real: test_eval_smollm2.py.)"""

import os
import shutil

import pytest

from xwin.judge.config import LocalServerConfig
from xwin.judge.server import ServerStartError, VllmServer


def group_is_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_server_not_ready_in_time_is_stopped_with_its_whole_group(tmp_path, tiny_model_dir):
    server = VllmServer(tiny_model_dir, "judge", LocalServerConfig(startup_timeout_s=2),
                        tmp_path / "server.log")
    with pytest.raises(ServerStartError, match="not ready after 2 s"):
        server.start()
    assert server.process.poll() is not None
    assert group_is_gone(server.process.pid)


@pytest.mark.slow
def test_a_server_that_exits_is_reported_with_its_log(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(tiny_model_dir / "config.json", broken / "config.json")  # no weights
    server = VllmServer(broken, "judge", LocalServerConfig(startup_timeout_s=600),
                        tmp_path / "server.log")
    with pytest.raises(ServerStartError, match="exited with code") as err, server:
        pass
    assert str(err.value).count("\n") > 3  # the log's tail came along
    assert group_is_gone(server.process.pid)
