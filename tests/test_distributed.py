"""bbn.engine.distributed: how ranks split an epoch, and gradient averaging across 2 gloo processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from kill_harness import without_timing

from bbn.engine.checkpoint import load_checkpoint
from bbn.cli import main
from bbn.config import load_config
from bbn.engine.distributed import SINGLE, World, check_batch, world_from_env
from bbn.errors import EXIT_PREEMPTED, BBNError
from bbn.methods import METHODS, Batch, StepContext
from bbn.engine.runs import RunDir, read_metrics
from bbn.tools.runner import start_run


def test_world_from_env_reads_torchrun_variables():
    assert world_from_env({}) == SINGLE
    w = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.is_main, w.distributed) == (3, 4, 1, False, True)
    with pytest.raises(BBNError, match="outside"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(BBNError, match="integers"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_global_batch_must_split_evenly():
    check_batch(128, World(0, 4))
    with pytest.raises(BBNError, match="multiple of 3"):
        check_batch(128, World(0, 3))


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("method", ["bbn", "ce", "rs"])
def test_ranks_see_disjoint_shares_that_make_up_the_single_process_epoch(size, method):
    labels = _labels([40, 20, 9, 5])  # 74 images
    cfg = load_config("digits_bbn", [f"method.name={method}", f"train.batch_size={6 * size}",
                                     "train.drop_last=false"])
    m = METHODS.get(method)(cfg, labels, 4)
    whole = m.plan(1, torch.Generator().manual_seed(5))
    shares = [[World(r, size).shard(b) for b in m.plan(1, torch.Generator().manual_seed(5))] for r in range(size)]
    for step, batch in enumerate(whole):
        parts = [shares[r][step] for r in range(size)]
        assert all(len(p) == len(batch) for p in parts)  # every stream on every rank
        for k, full in enumerate(batch):
            pieces = [p[k] for p in parts]
            assert torch.equal(torch.cat(pieces), full)  # together: the single-process batch
            assert max(len(p) for p in pieces) - min(len(p) for p in pieces) <= 1
    if method != "rs":  # the uniform sampler: each image once per epoch, on exactly one rank
        seen = torch.cat([b[0] for r in range(size) for b in shares[r]])
        assert sorted(seen.tolist()) == list(range(len(labels)))


def test_single_process_collectives_are_the_identity():
    batch = (torch.arange(8), torch.arange(8, 16))
    values = torch.tensor([1.5, -2.0])
    assert SINGLE.shard(batch) is batch
    assert SINGLE.sum(values) is values and torch.equal(SINGLE.mean(values), values)
    assert SINGLE.agree(True) and not SINGLE.agree(False)
    assert SINGLE.all_true(True) and not SINGLE.all_true(False)
    assert SINGLE.broadcast({"a": 1}) == {"a": 1}
    SINGLE.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, size: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        cfg = load_config("digits_bbn", ["train.batch_size=8"])
        labels = _labels([12, 6, 3])
        torch.manual_seed(0)  # the same initial weights on every rank
        from bbn.data.loader import DeviceImages
        from bbn.data.sources import LabeledImages
        from bbn.models import create_model

        images = torch.randint(0, 256, (len(labels), 1, 8, 8), dtype=torch.uint8)
        data = DeviceImages.create(LabeledImages(images, labels, ["a", "b", "c"]), [0.5], [0.25],
                                   torch.device("cpu"))
        model = create_model("bbn_resnet32", 3, 1)
        method = METHODS.get("bbn")(cfg, labels, 3)
        world = World(rank, size)
        ddp = world.step_module(model, False, torch.device("cpu"))
        idx = world.shard(method.plan(1, torch.Generator().manual_seed(1))[0])
        batch = Batch.of([data.gather(i, torch.Generator().manual_seed(100 + rank)) for i in idx])
        result = ddp(method, batch, StepContext(1, 1, torch.Generator().manual_seed(7)))
        result.loss.backward()
        out[rank] = torch.cat([p.grad.flatten() for p in model.parameters()])
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_average_their_gradients():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    g0, g1 = out[0], out[1]
    assert torch.equal(g0, g1)  # every rank steps with the same averaged gradient
    assert g0.abs().sum() > 0


def test_sync_bn_is_refused_on_cpu():
    with pytest.raises(BBNError, match="train.sync_bn"):
        World(0, 2).step_module(torch.nn.BatchNorm2d(2), True, torch.device("cpu"))


def _loop_worker(rank: int, size: int, port: int, out: dict) -> None:
    """Two steps of the real training loop (train_epoch) as rank `rank` of `size`, with the
    beta adaptor; records each step's alpha and the final weights."""
    import bbn.methods.bbn as bbn_method
    from bbn.engine.session import TrainState, build_trainer
    from bbn.engine.train import train_epoch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    alphas: list[float] = []
    real = bbn_method.cumulative_alpha

    def recorded(*args):
        alphas.append(real(*args))
        return alphas[-1]

    bbn_method.cumulative_alpha = recorded
    t = build_trainer(load_config("digits_bbn", ["method.adaptor=beta", "train.batch_size=16", "data.n_max=40",
                                                 "train.threads=1", "train.device=cpu"]))
    try:
        train_epoch(t, TrainState(), progress=False, max_steps=2)
        out[rank] = (alphas, torch.cat([p.detach().flatten() for p in t.model.parameters()]))
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


def test_every_rank_draws_the_same_stochastic_alpha_in_the_loop():
    """The beta adaptor's alpha comes from the step's keyed generator, the same on every
    rank (each rank drawing its own would mix the branches differently per rank)."""
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_loop_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    (a0, w0), (a1, w1) = out[0], out[1]
    assert len(a0) == 2 and a0 == a1 and a0[0] != a0[1]
    assert torch.equal(w0, w1)  # and the ranks step alike


# --- torchrun end to end (2 gloo processes on the CPU) ---------------------------------------

TINY = ["train.epochs=3", "train.warmup_epochs=1", "train.milestones=[2]", "train.tensorboard=false",
        "train.threads=1", "train.device=cpu", "data.n_max=60", "data.test_max_per_class=10", "train.log_every=2"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "bbn", "train", *args, "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    start_run(load_config("digits_bbn", TINY), out, progress=False, log=lambda _line: None)
    return out


def test_a_two_process_run_keeps_the_run_folder_contract(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    done = torchrun("digits_bbn", *TINY, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("last epoch: top-1") == 1  # rank 0 alone reports
    one, two = RunDir(single), RunDir(out)
    assert [r["epoch"] for r in read_metrics(two.metrics)] == [1, 2, 3]
    assert set(read_metrics(two.metrics)[0]) == set(read_metrics(one.metrics)[0])
    assert set(json.loads(two.final.read_text())) == set(json.loads(one.final.read_text()))
    assert sorted(p.name for p in two.checkpoints.iterdir()) == sorted(p.name for p in one.checkpoints.iterdir())
    state = load_checkpoint(two.last)
    assert state["epoch"] == 3 and set(state["model"]) == set(load_checkpoint(one.last)["model"])
    assert not any(k.startswith(("module.", "model.")) for k in state["model"])


def test_a_single_process_run_stopped_mid_epoch_resumes_on_two(single: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from bbn.methods.bbn import BBN

    real_step, calls = BBN.step, [0]

    def step(self, *args, **kwargs):  # SIGTERM from inside epoch 2, step 2
        calls[0] += 1
        if calls[0] == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(BBN, "step", step)
    out = tmp_path / "moved"
    assert main(["train", "digits_bbn", *TINY, "--no-progress", "--out", str(out)]) == EXIT_PREEMPTED
    assert load_checkpoint(RunDir(out).last)["partial"]["step"] == 2
    done = torchrun("--resume", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows, reference = read_metrics(RunDir(out).metrics), read_metrics(RunDir(single).metrics)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert without_timing(rows[0]) == without_timing(reference[0])  # trained by one process
    assert json.loads(RunDir(out).final.read_text())["epochs"] == 3
