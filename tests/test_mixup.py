"""The Mixup family (SPEC §6): Mixup, Manifold Mixup, and Manifold Mixup with two samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from bbn.config import load_config
from bbn.errors import BBNError
from bbn.methods import METHODS, StepContext
from bbn.methods.mixup import MANIFOLD_LAYERS, mix, mix_layer, mixup_lambda
from bbn.models import create_model
from test_methods import (BATCH, COUNTS, N, aug_gen, ce_by_hand, clone, first_step, gather, make, tiny_cfg,
                          tiny_images)

FAMILY = ("mixup", "manifold_mixup", "manifold_mixup_two")


def lambda_by_hand(a: float, g: torch.Generator) -> float:
    """Beta(a, a) drawn the documented way: a seed from `g` drives NumPy's sampler."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(a, a))


def test_registry() -> None:
    assert set(FAMILY) <= set(METHODS.names())
    assert MANIFOLD_LAYERS == (0, 1, 2)


@pytest.mark.parametrize("a", [0.2, 1.0, 2.0])
def test_lambda_is_in_unit_interval_and_reproducible_from_the_generator(a: float) -> None:
    g = torch.Generator().manual_seed(11)
    replay = clone(g)
    draws = [mixup_lambda(a, g) for _ in range(200)]
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert draws == [lambda_by_hand(a, replay) for _ in range(200)]
    assert torch.equal(g.get_state(), replay.get_state())
    other = torch.Generator().manual_seed(12)
    assert draws[:5] != [mixup_lambda(a, other) for _ in range(5)]


def test_lambda_distribution() -> None:
    g = torch.Generator().manual_seed(0)
    uniform = np.array([mixup_lambda(1.0, g) for _ in range(3000)])
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3  # Beta(1, 1) is U(0, 1)
    u_shaped = np.array([mixup_lambda(0.2, g) for _ in range(3000)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 1 / 5.6 for a = 0.2
    assert u_shaped.mean() == pytest.approx(0.5, abs=0.03)
    assert u_shaped.var() == pytest.approx(1 / 5.6, abs=0.015)


def test_mix_layer_is_uniform_over_input_layer1_layer2() -> None:
    g = torch.Generator().manual_seed(1)
    ks = [mix_layer(g) for _ in range(600)]
    counts = np.bincount(ks, minlength=3)
    assert len(counts) == 3 and counts.sum() == 600
    chi2 = ((counts - 200.0) ** 2 / 200.0).sum()
    assert chi2 < stats.chi2.ppf(0.999, df=2)


def test_split_forward_is_faithful() -> None:
    torch.manual_seed(0)
    model = create_model("resnet32", 4)
    x = torch.randn(BATCH, 3, 8, 8)
    perm = torch.tensor([2, 0, 3, 1])
    shapes = {0: (BATCH, 3, 8, 8), 1: (BATCH, 16, 8, 8), 2: (BATCH, 32, 4, 4), 3: (BATCH, 64, 2, 2)}
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            want = model(x)
            for k, shape in shapes.items():
                h = model.hidden(x, k)
                assert h.shape == shape
                assert torch.equal(model.forward_from(h, k), want)
                # lam = 1 keeps h_k itself, whatever it is mixed with
                assert torch.equal(model.forward_from(mix(h, h[perm], 1.0), k), want)
    for k in (-1, 4):
        with pytest.raises(ValueError, match="0..3"):
            model.hidden(x, k)


def test_mixup_step_mixes_images_and_labels_by_hand() -> None:
    method, model, data = make("mixup", "resnet32")
    (idx,) = first_step(method, 1, torch.Generator().manual_seed(6))
    batch = gather(data, (idx,))
    g = torch.Generator().manual_seed(16)
    replay = clone(g)
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        out = method.step(model, batch, StepContext(1, 1, g))
    finally:
        hook.remove()

    x, y = data.gather(idx, aug_gen(0))  # the same generator gathers the same images
    assert torch.equal(x, batch.x_c) and torch.equal(y, data.labels[idx])
    lam = lambda_by_hand(1.0, replay)
    perm = torch.randperm(BATCH, generator=replay)
    assert torch.equal(replay.get_state(), g.get_state())  # same draws, same order
    assert 0.05 < lam < 0.95 and not torch.equal(y, y[perm])  # a case that tells the terms apart
    assert len(seen) == 1
    assert torch.allclose(seen[0], lam * x + (1 - lam) * x[perm], rtol=0, atol=1e-6)
    with torch.no_grad():
        z = model(seen[0])
    want = lam * ce_by_hand(z, y) + (1 - lam) * ce_by_hand(z, y[perm])
    assert out.loss.item() == pytest.approx(float(want), rel=1e-4)
    pred = z.argmax(1)
    acc = lam * (pred == y).double().mean() + (1 - lam) * (pred == y[perm]).double().mean()
    assert float(out.accuracy) == pytest.approx(float(acc), abs=1e-6)
    assert out.images == BATCH


def record_splits(model: torch.nn.Module) -> list[int]:
    """Shadow `model.hidden` to record the k of each call."""
    ks: list[int] = []
    real = model.hidden

    def hidden(x: torch.Tensor, k: int) -> torch.Tensor:
        ks.append(k)
        return real(x, k)

    model.hidden = hidden
    return ks


def test_manifold_mixup_step_by_hand_at_each_layer() -> None:
    method, model, data = make("manifold_mixup", "resnet32")
    ks = record_splits(model)
    checked: set[int] = set()
    for seed in range(30):
        (idx,) = step = first_step(method, 1, torch.Generator().manual_seed(seed))
        batch = gather(data, step)
        g = torch.Generator().manual_seed(100 + seed)
        replay = clone(g)
        out = method.step(model, batch, StepContext(1, 1, g))

        x, y = data.gather(idx, aug_gen(0))
        assert torch.equal(x, batch.x_c) and torch.equal(y, data.labels[idx])
        lam = lambda_by_hand(1.0, replay)
        k = int(torch.randint(0, 3, (1,), generator=replay))
        perm = torch.randperm(BATCH, generator=replay)
        assert torch.equal(replay.get_state(), g.get_state())
        assert ks[-1] == k
        with torch.no_grad():
            h = model.hidden(x, k)
            z = model.forward_from(lam * h + (1 - lam) * h[perm], k)
        want = lam * ce_by_hand(z, y) + (1 - lam) * ce_by_hand(z, y[perm])
        assert out.loss.item() == pytest.approx(float(want), rel=1e-4)
        assert out.images == BATCH
        checked.add(k)
    assert checked == {0, 1, 2}  # the input, after layer1, after layer2; never after layer3


def test_two_samplers_second_batch_follows_the_reversed_probabilities() -> None:
    data = tiny_images()
    method = METHODS.get("manifold_mixup_two")(tiny_cfg(), data.labels, data.num_classes)
    assert method.steps_per_epoch() == N // BATCH
    g = torch.Generator().manual_seed(3)
    drawn = torch.zeros(len(COUNTS))
    epochs = 400
    for e in range(epochs):
        batches = method.plan(1 + e % 10, g)  # the 10 epochs of the schedule, 40 times over
        assert len(batches) == N // BATCH and all(len(c) == len(r) == BATCH for c, r in batches)
        idx_c = torch.cat([c for c, _ in batches])
        assert len(set(idx_c.tolist())) == len(idx_c)  # the uniform batch: each image at most once
        drawn += torch.bincount(data.labels[torch.cat([r for _, r in batches])], minlength=len(COUNTS))
    # w_i = N_max / N_i = 9/9, 9/5, 9/3, 9/1 = 1, 1.8, 3, 9; P_i = w_i / 14.8
    expected = torch.tensor([1.0, 1.8, 3.0, 9.0]) / 14.8 * drawn.sum()
    assert drawn.sum() == epochs * (N // BATCH) * BATCH
    chi2 = float(((drawn - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(0.999, df=len(COUNTS) - 1)


def test_two_samplers_step_mixes_uniform_and_reversed_batches_by_hand() -> None:
    method, model, data = make("manifold_mixup_two", "resnet32", "method.mixup_alpha=2.0")
    checked: set[int] = set()
    for seed in range(30):
        idx_c, idx_r = first_step(method, 1, torch.Generator().manual_seed(seed))
        batch = gather(data, (idx_c, idx_r))
        g = torch.Generator().manual_seed(100 + seed)
        replay = clone(g)
        out = method.step(model, batch, StepContext(1, 1, g))

        x_c, y_c = data.gather(idx_c, aug_gen(0))
        x_r, y_r = data.gather(idx_r, aug_gen(1))
        assert torch.equal(x_c, batch.x_c) and torch.equal(x_r, batch.x_r)
        lam = lambda_by_hand(2.0, replay)  # the configured a
        k = int(torch.randint(0, 3, (1,), generator=replay))
        assert torch.equal(replay.get_state(), g.get_state())
        assert torch.equal(y_c, data.labels[idx_c]) and torch.equal(y_r, data.labels[idx_r])
        with torch.no_grad():
            h = lam * model.hidden(x_c, k) + (1 - lam) * model.hidden(x_r, k)
            z = model.forward_from(h, k)
        want = lam * ce_by_hand(z, y_c) + (1 - lam) * ce_by_hand(z, y_r)
        assert out.loss.item() == pytest.approx(float(want), rel=1e-4)
        pred = z.argmax(1)
        acc = lam * (pred == y_c).double().mean() + (1 - lam) * (pred == y_r).double().mean()
        assert float(out.accuracy) == pytest.approx(float(acc), abs=1e-6)
        assert out.images == 2 * BATCH
        checked.add(k)
    assert checked == {0, 1, 2}


@pytest.mark.parametrize("name", FAMILY)
def test_refuses_the_bilateral_model(name: str) -> None:
    data = tiny_images()
    method = METHODS.get(name)(tiny_cfg(f"method.name={name}", "model.name=bbn_resnet32"),
                               data.labels, data.num_classes)
    with pytest.raises(BBNError, match="model.name='bbn_resnet32'.*use model.name=resnet32") as info:
        method.check_model(create_model("bbn_resnet32", 4))
    assert "\n" not in str(info.value)
    method.check_model(create_model("resnet32", 4))  # accepted


@pytest.mark.parametrize("name", FAMILY)
def test_one_optimisation_step(name: str) -> None:
    method, model, data = make(name, "resnet32")
    assert method.logged(1) == {"alpha": None}
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = first_step(method, 1, torch.Generator().manual_seed(9))
    assert len(step) == (2 if name == "manifold_mixup_two" else 1)  # streams: uniform (and reversed)
    out = method.step(model, gather(data, step), StepContext(1, 1, torch.Generator().manual_seed(19)))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert 0.0 <= float(out.accuracy) <= 1.0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(changed)


@pytest.mark.parametrize("name", FAMILY)
def test_presets_are_the_ce_presets_with_the_method(name: str) -> None:
    alpha = 1.0 if name == "mixup" else 2.0  # Zhang et al.'s / Verma et al.'s CIFAR setting
    for base in [f"{ds}_ir{ir}" for ds in ("cifar10", "cifar100") for ir in (100, 50, 10)] + ["digits"]:
        cfg = load_config(f"{base}_{name}")
        ce = load_config(f"{base}_ce")
        assert cfg.name == f"{base}_{name}" and cfg.model.name == "resnet32"
        assert cfg.method.name == name and cfg.method.mixup_alpha == alpha
        same = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "method")}
        assert same == {k: v for k, v in ce.to_dict().items() if k not in ("name", "method")}
