"""A local vLLM OpenAI-compatible server for the judge model, alive for one stage: started as
its own process group, ready once /v1/models lists the model, stopped (terminate, then kill)
on exit, errors included. On Kubernetes the controller runs the same server (the same engine
flags, `vllm_server_flags`) as a Deployment + Service for the stage and the stage only gets its
base_url (xwin.executors.kubernetes.judge_server)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typing_extensions import Self

from xwin.core.hardware import resolve_dtype
from xwin.core.net import free_port
from xwin.judge.config import LocalServerConfig, vllm_server_flags
from xwin.models.device import vllm_cpu_env

log = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server exited or never became ready; the message carries its log's tail."""



def vllm_server_command(model_path: Path, served_name: str, port: int, cfg: LocalServerConfig) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port),
            *vllm_server_flags(served_name, cfg, resolve_dtype(cfg.dtype))]


class VllmServer:
    """`with VllmServer(...) as server: server.base_url` -> "http://127.0.0.1:PORT/v1"."""

    def __init__(self, model_path: Path, served_name: str, cfg: LocalServerConfig, log_path: Path):
        self.model_path = Path(model_path)
        self.served_name = served_name
        self.cfg = cfg
        self.log_path = Path(log_path)
        self.port = cfg.port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        cmd = vllm_server_command(self.model_path, self.served_name, self.port, self.cfg)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting judge server: %s (log: %s)", " ".join(cmd), self.log_path)
        with open(self.log_path, "ab") as out:
            # A new session: stop() signals the whole group, vLLM's engine processes included.
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True,
                                            env={**os.environ, **vllm_cpu_env()})
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"judge server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=5)
                if r.status_code == 200 and any(m.get("id") == self.served_name
                                                for m in r.json().get("data", [])):
                    log.info("judge server ready in %.0f s", time.monotonic() - started)
                    return
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(1.0)
        raise ServerStartError(
            f"judge server not ready after {self.cfg.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                log.warning("judge server did not stop on %s", sig.name)
        # The leader may be gone while engine workers of its group linger: make sure.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
