"""Behaviour pins: every sampler's index streams and every method's training step, recorded.

`tests/fixtures/golden_v1.json` holds, on a fixed long-tailed label vector (10 classes, an
exponential profile with imbalance ratio 10, 283 labels):

* `samplers`: for each re-balancing sampler, SHA-256 of the int64 indices it draws for two
  "epochs" of len(labels) draws from one generator seeded 0;
* `streams`: for each method (and BBN with each re-balancing sampler and the 'beta'
  adaptor), SHA-256 of the index streams its epochs 4 and 5 of a 5-epoch schedule draw
  from one generator seeded 0 (epoch 5 is a deferred epoch for DRW / DRS), per epoch and
  per stream ('c' the uniform or only stream, 'r' the re-balancing one), with batch sizes;
* `steps`: for each method (and BBN with the 'beta' adaptor), one training step at epoch 5
  of 5 on fixed tensors (seeded model init, seeded 1-channel 8x8 images, fixed indices, no
  augmentation): the loss, the shown accuracy, alpha (BBN) or lambda and the mixed layer k
  (Mixup family), and per parameter the gradient's L2 norm and sum.

The step runs in float64: in float32, CPUs with other vector units round differently, and
Manifold Mixup with two samplers (two batches mixed through train-mode BatchNorm on 8x8
maps) amplifies that to 1 % of a gradient (an AVX512 host against the AVX2 host that
recorded the fixture, 2026-12-02), while the float64 step on that AVX512 host agrees with
the recorded float32 values to 1.3e-5 of a gradient's norm (float64 keeps 29 more bits, so
the amplification that moves float32 by 1 % moves float64 by about 1e-11). Integer draws are
compared exactly; floats with rtol 1e-4, atol 1e-6, a gradient's sum with atol 1e-4 x its
norm (the sum cancels). A refactor that keeps behaviour changes only the thin
calling code below (`make_method`, `draw_streams`, `run_step` and the spies of
`step_record`), never the fixture.

Re-record (rewrites the fixture) ONLY when a change of behaviour is intended, and say so,
with the reason, in the commit that changes it:

    PYTHONPATH=$PWD/src python tests/test_golden.py --record
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from bbn.config import build_config
from bbn.data.loader import DeviceImages
from bbn.data.sources import LabeledImages
from bbn.methods import METHODS, Batch, StepContext
from bbn.models import create_model
from bbn.samplers import REBALANCE_SAMPLERS

FIXTURE = Path(__file__).parent / "fixtures" / "golden_v1.json"
RTOL, ATOL = 1e-4, 1e-6
NUM_CLASSES, N_MAX, IMBALANCE = 10, 70, 10
EPOCHS, BATCH = 5, 16
STREAM_EPOCHS = (4, 5)
STEP_EPOCH = 5
MEAN, STD = (0.5,), (0.25,)

# The model each method trains (the plain ResNet-32 unless named here).
MODEL_OF = {"bbn": "bbn_resnet32", "ldam_drw": "resnet32_cosine"}
# Pinned variants beyond each method's defaults: name -> (method, extra overrides).
VARIANTS = {
    "bbn[rebalance_sampler=balanced]": ("bbn", ("method.rebalance_sampler=balanced",)),
    "bbn[rebalance_sampler=uniform]": ("bbn", ("method.rebalance_sampler=uniform",)),
    "bbn[adaptor=beta]": ("bbn", ("method.adaptor=beta",)),
}
# The variants whose step differs from their method's (a sampler changes only the streams).
STEP_VARIANTS = ("bbn[adaptor=beta]",)


def class_counts() -> list[int]:
    """n_i = floor(N_MAX * IMBALANCE^(-i / (C - 1))): 70, 54, 41, 32, 25, 19, 15, 11, 9, 7."""
    return [int(N_MAX * IMBALANCE ** (-i / (NUM_CLASSES - 1))) for i in range(NUM_CLASSES)]


def fixed_labels() -> torch.Tensor:
    labels = torch.tensor([c for c, n in enumerate(class_counts()) for _ in range(n)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def fixed_images() -> LabeledImages:
    labels = fixed_labels()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (len(labels), 1, 8, 8), generator=g, dtype=torch.uint8)
    return LabeledImages(images, labels, [f"c{i}" for i in range(NUM_CLASSES)])


def pinned() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every registered method with its defaults, plus VARIANTS."""
    return {**{m: (m, ()) for m in METHODS.names()}, **VARIANTS}


def stepped() -> list[str]:
    """Every registered method plus STEP_VARIANTS."""
    return sorted([*METHODS.names(), *STEP_VARIANTS])


def make_method(name: str) -> Any:
    method, extra = pinned()[name]
    model = MODEL_OF.get(method, "resnet32")
    cfg = build_config({}, [f"method.name={method}", f"model.name={model}", f"train.epochs={EPOCHS}",
                            f"train.batch_size={BATCH}", "augment.crop_padding=0", "augment.flip=false",
                            *extra])
    labels = fixed_labels()
    return METHODS.get(method)(cfg, labels, NUM_CLASSES), model


def num(x: float | torch.Tensor) -> float:
    """A recorded float, to 10 significant digits (far below the comparison tolerance)."""
    return float(f"{float(x.detach() if isinstance(x, torch.Tensor) else x):.10g}")


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


# ---- thin calling code: the only part a behaviour-preserving refactor may change ----

def draw_streams(method: Any, epochs: tuple[int, ...], generator: torch.Generator
                 ) -> dict[int, dict[str, list[torch.Tensor]]]:
    """Per epoch, the batches of each index stream ('c', and 'r' for paired methods)."""
    out: dict[int, dict[str, list[torch.Tensor]]] = {}
    for epoch in epochs:
        streams: dict[str, list[torch.Tensor]] = {}
        for batch in method.plan(epoch, generator):
            for key, idx in zip("cr", batch):
                streams.setdefault(key, []).append(idx)
        out[epoch] = streams
    return out


class Spy:
    """Wraps `module.name` and keeps what it returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.values: list[Any] = []
        inner: Callable[..., Any] = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            value = inner(*args, **kwargs)
            self.values.append(value)
            return value

        monkeypatch.setattr(module, name, spy)


def run_step(method: Any, model: torch.nn.Module, data: DeviceImages, idx_c: torch.Tensor,
             idx_r: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One step at STEP_EPOCH on the images idx_c (and idx_r for paired methods): loss, accuracy."""
    streams = len(method.plan(STEP_EPOCH, torch.Generator().manual_seed(0))[0])
    gathered = [data.gather(idx, torch.Generator()) for idx in (idx_c, idx_r)[:streams]]
    batch = Batch.of([(x.double(), y) for x, y in gathered])  # float64: see the module docstring
    result = method.step(model, batch, StepContext(STEP_EPOCH, 1, generator))
    return result.loss, result.accuracy


def step_record(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import bbn.methods.bbn as bbn_module
    import bbn.methods.mixup as mixup_module

    alphas = Spy(monkeypatch, bbn_module, "cumulative_alpha")
    lams = Spy(monkeypatch, mixup_module, "mixup_lambda")
    layers = Spy(monkeypatch, mixup_module, "mix_layer")
    method, model_name = make_method(name)
    data = fixed_images()
    torch.manual_seed(0)
    model = create_model(model_name, NUM_CLASSES, 1).double()
    method.check_model(model)
    model.train()
    idx_c = torch.arange(BATCH) * 7 % len(data.labels)  # a fixed batch: images 0, 7, 14, ...
    idx_r = torch.arange(len(data.labels) - BATCH, len(data.labels)).flip(0)  # the last BATCH images
    device_data = DeviceImages.create(data, MEAN, STD, torch.device("cpu"))
    alphas.values.clear()
    loss, accuracy = run_step(method, model, device_data, idx_c, idx_r, torch.Generator().manual_seed(1))
    loss.backward()
    record: dict[str, Any] = {"loss": num(loss), "accuracy": num(accuracy)}
    if alphas.values:
        record["alpha"] = num(alphas.values[-1])  # the step's alpha (start_epoch may ask too)
    if lams.values:
        record["lambda"] = [num(v) for v in lams.values]
    if layers.values:
        record["k"] = [int(v) for v in layers.values]
    record["grads"] = {
        pname: [num(p.grad.double().norm()), num(p.grad.double().sum())]
        for pname, p in model.named_parameters() if p.grad is not None
    }
    return record


def stream_record(name: str) -> dict[str, Any]:
    method, _ = make_method(name)
    drawn = draw_streams(method, STREAM_EPOCHS, torch.Generator().manual_seed(0))
    return {str(epoch): {key: {"sha256": sha(torch.cat(batches)), "sizes": [len(b) for b in batches]}
                         for key, batches in streams.items()}
            for epoch, streams in drawn.items()}


def sampler_record(name: str) -> str:
    labels = fixed_labels()
    sampler = REBALANCE_SAMPLERS.get(name)(labels, NUM_CLASSES, EPOCHS)
    g = torch.Generator().manual_seed(0)
    return sha(torch.cat([sampler.draw(len(labels), epoch, g) for epoch in (1, 2)]))


# ---- the pins ----

def load() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def test_fixture_covers_every_sampler_and_method() -> None:
    golden = load()
    assert set(golden["samplers"]) == set(REBALANCE_SAMPLERS.names())
    assert set(golden["streams"]) == set(pinned())
    assert set(golden["steps"]) == set(stepped())
    assert golden["class_counts"] == class_counts()


@pytest.mark.parametrize("name", sorted(REBALANCE_SAMPLERS.names()))
def test_sampler_streams_unchanged(name: str) -> None:
    assert sampler_record(name) == load()["samplers"][name]


@pytest.mark.parametrize("name", sorted(pinned()))
def test_method_streams_unchanged(name: str) -> None:
    assert stream_record(name) == load()["streams"][name]


def close(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL)


def sum_close(got: float, want: float, norm: float) -> bool:
    """A gradient's sum cancels (a softmax gradient sums to ~0 over the classes), so its
    rounding error scales with the gradient's size, not the sum's: tolerance RTOL x the L2 norm."""
    return math.isclose(got, want, rel_tol=RTOL, abs_tol=max(ATOL, RTOL * norm))


@pytest.mark.parametrize("name", stepped())
def test_method_step_unchanged(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got, want = step_record(name, monkeypatch), load()["steps"][name]
    assert set(got) == set(want)
    assert got.get("k") == want.get("k")
    for key in ("loss", "accuracy", "alpha"):
        if key in want:
            assert close(got[key], want[key]), f"{key}: {got[key]} != {want[key]}"
    assert len(got.get("lambda", [])) == len(want.get("lambda", []))
    for g, w in zip(got.get("lambda", []), want.get("lambda", [])):
        assert close(g, w), f"lambda: {g} != {w}"
    assert set(got["grads"]) == set(want["grads"])
    bad = [f"{p}: {g} != {w}" for p, (g, w) in ((p, (got["grads"][p], want["grads"][p])) for p in want["grads"])
           if not (close(g[0], w[0]) and sum_close(g[1], w[1], w[0]))]
    assert not bad, "gradients changed:\n" + "\n".join(bad[:10])


def record() -> None:
    """Rewrite the fixture from the current code."""
    mp = pytest.MonkeyPatch()
    try:
        steps = {}
        for name in stepped():
            steps[name] = step_record(name, mp)
            mp.undo()
    finally:
        mp.undo()
    golden = {
        "class_counts": class_counts(),
        "samplers": {name: sampler_record(name) for name in sorted(REBALANCE_SAMPLERS.names())},
        "streams": {name: stream_record(name) for name in sorted(pinned())},
        "steps": steps,
    }
    FIXTURE.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_golden.py --record  (rewrites the fixture; see the docstring)")
    record()
