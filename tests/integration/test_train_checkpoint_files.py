"""DeepSpeed's own checkpoint files, loaded the way a resume loads them (`load_without_pickled_code`:
torch.load with weights_only=True and a few DeepSpeed classes allowed): every ZeRO stage, fp32
and bf16, round-trips exactly, and a file holding a pickle payload is refused without running.
One DeepSpeed process on CPU (gloo), in a child so that its process group stays out of pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from train_support import REPO, process_env

from xwin.core.net import free_port

_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from xwin.core.errors import UserError
    from xwin.train.checkpoint import load_without_pickled_code
    from xwin.train.config import TrainConfig
    from xwin.train.deepspeed_setup import build_engine
    from xwin.train.launch import ProcessPlace

    class Payload:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return (Path.touch, (self.marker,))

    dist.init_process_group("gloo", rank=0, world_size=1)
    place = ProcessPlace(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0,
                         nnodes=1, master_addr="127.0.0.1", master_port=0)
    root = Path(sys.argv[1])

    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))

    def step(engine, x):
        engine.backward(engine(x).float().pow(2).sum())
        engine.step()

    for zero_stage, bf16 in [(0, False), (2, False), (3, False), (2, True)]:
        config = TrainConfig(zero_stage=zero_stage, bf16=bf16, micro_batch_size=2,
                             gradient_accumulation_steps=1, learning_rate=1e-2)
        folder = root / f"zero{zero_stage}-bf16{int(bf16)}"
        engine = build_engine(model(0), config, place, 10)
        x = torch.randn(2, 8, dtype=next(engine.module.parameters()).dtype)
        step(engine, x)
        engine.save_checkpoint(str(folder), tag="t")
        step(engine, x)  # the same step after a resume must give the same weights
        resumed = build_engine(model(1), config, place, 10)
        load_without_pickled_code(resumed)
        assert resumed.load_checkpoint(str(folder), tag="t")[0] is not None
        step(resumed, x)
        assert torch.equal(resumed(x), engine(x)), (zero_stage, bf16)
        print("round trip", zero_stage, bf16, flush=True)

    # a model-states file replaced by a pickle payload: refused, naming the file and the class
    marker = root / "payload-ran"
    target = next(folder.glob("t/*model_states.pt"))
    torch.save({"module": Payload(marker)}, target)
    crafted = build_engine(model(1), config, place, 10)
    load_without_pickled_code(crafted)
    try:
        crafted.load_checkpoint(str(folder), tag="t")
    except UserError as e:
        assert target.name in str(e) and "refused, it names" in str(e), e
        print("refused:", e, flush=True)
    else:
        raise AssertionError("a pickle payload was loaded")
    assert not marker.exists()
    """
)


def test_deepspeed_checkpoints_load_without_unpickling_code(tmp_path: Path):
    env = process_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    result = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.count("round trip") == 4
    assert "refused:" in result.stdout and not (tmp_path / "payload-ran").exists()
