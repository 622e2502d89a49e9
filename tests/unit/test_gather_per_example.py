"""gather_per_example across two real ranks (gloo): every rank gets every example's row back,
in the examples' order, whatever share each rank computed; filler slots are dropped."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from xwin.train.launch import ProcessPlace
from xwin.train.loop import gather_per_example

EXAMPLES = [3.0, -1.5, 0.25, 10.0, 7.0, -2.0, 1e-9]  # 7: the second rank's last batch has a filler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collate(values: list[float]) -> dict[str, torch.Tensor]:
    return {"x": torch.tensor(values, dtype=torch.float64)}


def per_batch(model, batch):
    x = batch["x"]
    return list(zip(x.tolist(), (2 * x).tolist()))  # (x, 2x) per example


def worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        place = ProcessPlace(rank=rank, world_size=2, local_rank=rank, local_world_size=2, node_rank=0,
                             nnodes=1, master_addr="127.0.0.1", master_port=port)
        model = torch.nn.Linear(1, 1)
        results[rank] = gather_per_example(model, EXAMPLES, collate, 2, place, torch.device("cpu"), per_batch)
        assert model.training  # put back as it was
    finally:
        dist.destroy_process_group()


def test_every_rank_gets_every_row_in_order():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
        expected = [(x, 2 * x) for x in EXAMPLES]
        assert results[0] == expected
        assert results[1] == expected
