"""Loss and sampling baselines (SPEC §6): RW, RS, Focal, CB-Focal, CE-DRW, CE-DRS, LDAM-DRW,
and the cosine ResNet-32 LDAM trains. Every expected number is worked out here with `math`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from bbn.config import build_config, load_config
from bbn.errors import BBNError
from bbn.losses import (
    class_balanced_focal_loss,
    effective_number_weights,
    focal_loss,
    inverse_frequency_weights,
    ldam_loss,
    ldam_margins,
    weighted_cross_entropy,
)
from bbn.methods import METHODS, StepContext
from bbn.methods.single import defer_epoch
from bbn.models import MODELS, create_model, num_params
from bbn.samplers import UniformSampler
from test_methods import COUNTS, aug_gen, clone, first_step, gather, make, tiny_cfg, tiny_images

BASELINES = ["rw", "rs", "focal", "cb_focal", "ce_drw", "ce_drs", "ldam_drw"]

# 3 samples x 4 classes
Z = [[0.2, -0.1, 0.5, 0.0], [0.9, 0.3, -0.4, 0.1], [-0.2, 0.6, 0.1, 0.7]]
Y = [2, 0, 3]


def zy() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(Z, dtype=torch.float64), torch.tensor(Y)


def log_p(row: list[float], k: int) -> float:
    """log softmax(row)[k]"""
    return row[k] - math.log(sum(math.exp(v) for v in row))


def ce_terms(rows: list[list[float]]) -> list[float]:
    return [-log_p(r, y) for r, y in zip(rows, Y)]


def weighted_mean(terms: list[float], w: list[float]) -> float:
    wy = [w[y] for y in Y]
    return sum(a * b for a, b in zip(wy, terms)) / sum(wy)


def test_registries() -> None:
    assert set(METHODS.names()) >= set(BASELINES)
    assert "resnet32_cosine" in MODELS


# --- class weights ---------------------------------------------------------------------

def test_effective_number_weights_by_hand() -> None:
    beta = 0.9999
    inv_eff = [(1 - beta) / (1 - beta**n) for n in (5000, 500, 50)]  # 1 / E_n
    want = [3 * v / sum(inv_eff) for v in inv_eff]
    got = effective_number_weights([5000, 500, 50], beta)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert got.tolist() == pytest.approx([0.0341074, 0.2751672, 2.6907254], abs=1e-6)
    assert float(got.sum()) == pytest.approx(3.0, rel=1e-6)  # sums to C


def test_effective_number_with_beta_zero_is_no_weighting() -> None:
    assert effective_number_weights([5000, 500, 50], 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_inverse_frequency_weights_by_hand() -> None:
    inv = [1 / 9, 1 / 5, 1 / 3, 1.0]
    want = [4 * v / sum(inv) for v in inv]  # sum 1.6444..., so w = [0.2703, 0.4865, 0.8108, 2.4324]
    assert inverse_frequency_weights(COUNTS).tolist() == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx([0.27027, 0.48649, 0.81081, 2.43243], abs=1e-5)


# --- losses ----------------------------------------------------------------------------

def test_weighted_cross_entropy_by_hand() -> None:
    z, y = zy()
    w = [0.5, 1.0, 2.0, 0.5]
    got = weighted_cross_entropy(z, y, torch.tensor(w))
    assert float(got) == pytest.approx(weighted_mean(ce_terms(Z), w), rel=1e-9)
    # no weights: the plain mean CE
    assert float(weighted_cross_entropy(z, y, None)) == pytest.approx(sum(ce_terms(Z)) / 3, rel=1e-9)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_loss_by_hand(gamma: float) -> None:
    z, y = zy()
    terms = [-((1 - math.exp(log_p(r, k))) ** gamma) * log_p(r, k) for r, k in zip(Z, Y)]
    assert float(focal_loss(z, y, gamma)) == pytest.approx(sum(terms) / 3, rel=1e-9)
    if gamma == 0.0:
        assert float(focal_loss(z, y, gamma)) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-12)
    else:  # down-weights every sample: below CE
        assert float(focal_loss(z, y, gamma)) < float(F.cross_entropy(z, y))


def test_focal_gamma_one_worked_row() -> None:
    # row 2 (y = 0): p_t = e^0.9 / (e^0.9 + e^0.3 + e^-0.4 + e^0.1) = 2.45960 / 5.58495
    p_t = math.exp(0.9) / (math.exp(0.9) + math.exp(0.3) + math.exp(-0.4) + math.exp(0.1))
    assert p_t == pytest.approx(0.44040, abs=1e-5)
    z = torch.tensor([Z[1]], dtype=torch.float64)
    assert float(focal_loss(z, torch.tensor([0]), 1.0)) == pytest.approx(-(1 - p_t) * math.log(p_t), rel=1e-9)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_cb_focal_by_hand(gamma: float) -> None:
    z, y = zy()
    w = [0.1, 0.4, 1.5, 2.0]
    terms = [w[k] * -((1 - math.exp(log_p(r, k))) ** gamma) * log_p(r, k) for r, k in zip(Z, Y)]
    got = class_balanced_focal_loss(z, y, gamma, torch.tensor(w))
    assert float(got) == pytest.approx(sum(terms) / 3, rel=1e-9)  # plain mean over the batch


def test_ldam_margins_by_hand() -> None:
    # m_i proportional to N_i^(-1/4), the largest (N = 1) is 0.5
    want = [0.5 * (1 / 100) ** 0.25, 0.5 * (1 / 20) ** 0.25, 0.5 * (1 / 5) ** 0.25, 0.5]
    assert want == pytest.approx([0.1581139, 0.2364354, 0.3343702, 0.5], abs=1e-7)
    got = ldam_margins([100, 20, 5, 1], 0.5)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert ldam_margins([100, 20, 5, 1], 0.3).tolist() == pytest.approx([0.6 * m for m in want], rel=1e-6)


@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0, 0.5]])
def test_ldam_loss_by_hand(weights: list[float] | None) -> None:
    z, y = zy()
    m = [0.5 * (1 / n) ** 0.25 for n in (100, 20, 5, 1)]
    s = 30.0
    shifted = [[s * (v - (m[k] if j == k else 0.0)) for j, v in enumerate(r)] for r, k in zip(Z, Y)]
    terms = ce_terms(shifted)
    want = sum(terms) / 3 if weights is None else weighted_mean(terms, weights)
    got = ldam_loss(z, y, ldam_margins([100, 20, 5, 1], 0.5).double(), s,
                    None if weights is None else torch.tensor(weights))
    assert float(got) == pytest.approx(want, rel=1e-6)
    # the margin makes the loss larger than the CE of the scaled cosines
    w = None if weights is None else torch.tensor(weights)
    assert float(got) > float(weighted_cross_entropy(s * z, y, w))


# --- deferred schedules ----------------------------------------------------------------

@pytest.mark.parametrize("epochs, defer", [(200, 160), (60, 48)])
def test_default_defer_epoch(epochs: int, defer: int) -> None:
    assert defer_epoch(tiny_cfg(f"train.epochs={epochs}")) == defer
    assert defer_epoch(tiny_cfg(f"train.epochs={epochs}", "method.defer_epoch=7")) == 7


@pytest.mark.parametrize("epochs, defer", [(200, 160), (60, 48)])
@pytest.mark.parametrize("name, model", [("ce_drw", "resnet32"), ("ldam_drw", "resnet32_cosine")])
def test_drw_reweights_from_the_epoch_after_defer(name: str, model: str, epochs: int, defer: int) -> None:
    method, _, _ = make(name, model, f"train.epochs={epochs}")
    inv_eff = [(1 - 0.9999) / (1 - 0.9999**n) for n in COUNTS]
    cb = [4 * v / sum(inv_eff) for v in inv_eff]
    assert method.class_weights(defer) is None
    assert method.class_weights(defer + 1).tolist() == pytest.approx(cb, rel=1e-5)
    assert all(method.sampler(e) == "uniform" for e in (1, defer, defer + 1, epochs))

    z, y = zy()
    z = z.float()
    m = [0.5 * (1 / n) ** 0.25 for n in COUNTS]
    rows = Z if name == "ce_drw" else [[30 * (v - (m[k] if j == k else 0.0)) for j, v in enumerate(r)]
                                        for r, k in zip(Z, Y)]
    terms = ce_terms(rows)
    assert float(method.loss(z, y, defer)) == pytest.approx(sum(terms) / 3, rel=1e-5)
    assert float(method.loss(z, y, defer + 1)) == pytest.approx(weighted_mean(terms, cb), rel=1e-5)
    # the epoch is an argument, not a state: asking for an earlier one again gives its loss again
    assert float(method.loss(z, y, 1)) == pytest.approx(sum(terms) / 3, rel=1e-5)


@pytest.mark.parametrize("epochs, defer", [(200, 160), (60, 48)])
def test_drs_resamples_from_the_epoch_after_defer(epochs: int, defer: int) -> None:
    method, _, _ = make("ce_drs", "resnet32", f"train.epochs={epochs}")
    names = [method.sampler(e) for e in (1, defer, defer + 1, epochs)]
    assert names == ["uniform", "uniform", "balanced", "balanced"]
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([idx for (idx,) in method.plan(defer, g)])
    assert len(set(seen.tolist())) == len(seen)  # each image at most once: the uniform sampler
    # plain CE in both phases
    z, y = zy()
    for epoch in (defer, defer + 1):
        assert float(method.loss(z.float(), y, epoch)) == pytest.approx(sum(ce_terms(Z)) / 3, rel=1e-5)


BIG_COUNTS = [200, 60, 20, 5]


def big_method(name: str, *overrides: str):
    labels = torch.tensor([c for c, n in enumerate(BIG_COUNTS) for _ in range(n)])
    cfg = build_config({}, ["train.batch_size=16", "train.epochs=10", f"method.name={name}", *overrides])
    return METHODS.get(name)(cfg, labels, len(BIG_COUNTS)), labels


def chi2_stat(observed: torch.Tensor, probs: list[float]) -> float:
    n = int(observed.sum())
    return sum((float(o) - n * p) ** 2 / (n * p) for o, p in zip(observed, probs))


@pytest.mark.parametrize("name, epoch", [("rs", 1), ("rs", 10), ("ce_drs", 9)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_resampled_batches_are_class_balanced(name: str, epoch: int, drop_last: bool) -> None:
    method, labels = big_method(name, f"train.drop_last={str(drop_last).lower()}")
    uniform = UniformSampler(len(labels), 16, drop_last)
    g = torch.Generator().manual_seed(11)
    drawn = []
    for _ in range(20):
        plan = method.plan(epoch, g)
        assert len(plan) == method.steps_per_epoch() == len(uniform)  # 17 or 18 steps
        assert all(len(step) == 1 for step in plan)  # one stream
        batches = [idx for (idx,) in plan]
        assert all(len(b) == 16 for b in batches)
        drawn.append(torch.cat(batches))
    observed = torch.bincount(labels[torch.cat(drawn)], minlength=4)
    bound = float(stats.chi2.ppf(0.999, 3))  # 16.27
    assert chi2_stat(observed, [0.25] * 4) < bound
    # the uniform sampler's class frequencies (200:60:20:5) are far from balanced
    g = torch.Generator().manual_seed(11)
    plain = torch.cat([torch.cat(list(uniform.epoch(g))) for _ in range(20)])
    assert chi2_stat(torch.bincount(labels[plain], minlength=4), [0.25] * 4) > 100 * bound


# --- the cosine classifier -------------------------------------------------------------

def test_cosine_model_logits_are_cosines() -> None:
    torch.manual_seed(0)
    model = create_model("resnet32_cosine", 10).eval()
    w = model.classifier.weight
    assert w.shape == (10, 64)
    assert w.norm(dim=1).tolist() == pytest.approx([1.0] * 10, rel=1e-5)  # renormalised rows
    x = 3 * torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        z = model(x)
        f = model.features(x)
        by_hand = (f / f.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()
    assert z.shape == (16, 10)
    assert float(z.abs().max()) <= 1.0 + 1e-6
    assert torch.allclose(z, by_hand, atol=1e-6)
    # scaling the weights or the features does not change a cosine
    with torch.no_grad():
        model.classifier.weight.mul_(7.0)
        assert torch.allclose(model(x), z, atol=1e-6)


def test_cosine_model_parameters_and_names() -> None:
    cosine, plain = create_model("resnet32_cosine", 10), create_model("resnet32", 10)
    # trunk: conv1 3*16*9 + bn1 32 + layer1 5*(2*16*16*9 + 64)
    #   + layer2 (16*32*9 + 32*32*9 + 128) + 4*(2*32*32*9 + 128)
    #   + layer3 (32*64*9 + 64*64*9 + 256) + 4*(2*64*64*9 + 256) = 463504; classifier 64*10
    trunk = 432 + 32 + 5 * (2 * 2304 + 64) + (4608 + 9216 + 128) + 4 * (2 * 9216 + 128) \
        + (18432 + 36864 + 256) + 4 * (2 * 36864 + 256)
    assert trunk == 463504
    assert num_params(cosine) == trunk + 640 == num_params(plain) - 10
    names = set(cosine.state_dict())
    assert names == set(plain.state_dict()) - {"classifier.bias"}
    assert "classifier.weight" in names and all(n.startswith(("backbone.", "classifier.")) for n in names)


def test_ldam_needs_the_cosine_model_and_bbn_the_bilateral_one() -> None:
    data = tiny_images()
    ldam = METHODS.get("ldam_drw")(tiny_cfg("method.name=ldam_drw", "model.name=resnet32"),
                                   data.labels, data.num_classes)
    with pytest.raises(BBNError, match="cosine.*model.name=resnet32_cosine"):
        ldam.check_model(create_model("resnet32", 4))
    with pytest.raises(BBNError, match="model.name=resnet32_cosine"):
        ldam.check_model(create_model("bbn_resnet32", 4))
    ldam.check_model(create_model("resnet32_cosine", 4))  # accepted
    bbn = METHODS.get("bbn")(tiny_cfg("model.name=resnet32_cosine"), data.labels, data.num_classes)
    with pytest.raises(BBNError, match="bilateral.*bbn_resnet32"):
        bbn.check_model(create_model("resnet32_cosine", 4))


# --- presets ----------------------------------------------------------------------------

PRESET_STEMS = [f"{ds}_ir{ir}" for ds in ("cifar10", "cifar100") for ir in (100, 50, 10)] + ["digits"]


@pytest.mark.parametrize("stem", PRESET_STEMS)
def test_baseline_presets_are_the_ce_recipe_with_their_method(stem: str) -> None:
    ce = load_config(f"{stem}_ce").to_dict()
    for name in BASELINES:
        cfg = load_config(f"{stem}_{name}")
        got = cfg.to_dict()
        assert cfg.name == f"{stem}_{name}" and cfg.method.name == name
        assert cfg.model.name == ("resnet32_cosine" if name == "ldam_drw" else "resnet32")
        # the method's parameters are the defaults, written out: gamma 1, beta 0.9999, ...
        assert got["method"] == {**ce["method"], "name": name}
        assert {k: v for k, v in got.items() if k not in ("name", "model", "method")} == \
            {k: v for k, v in ce.items() if k not in ("name", "model", "method")}
    assert defer_epoch(load_config(f"{stem}_ce_drw")) == (48 if stem == "digits" else 160)


# --- one optimisation step of each ------------------------------------------------------

# 10 epochs: the defer epoch is 8, so the deferred methods re-balance at epoch 9
DEFERRED = ("ce_drw", "ce_drs", "ldam_drw")


@pytest.mark.parametrize("name, epoch", [(n, 1) for n in BASELINES] + [(n, 9) for n in DEFERRED])
def test_one_step_of_each_baseline(name: str, epoch: int) -> None:
    method, model, data = make(name, "resnet32_cosine" if name == "ldam_drw" else "resnet32")
    assert method.logged(epoch) == {"alpha": None}
    (idx,) = step = first_step(method, epoch, torch.Generator().manual_seed(3))
    batch = gather(data, step)
    g = torch.Generator().manual_seed(13)
    replay = clone(g)
    out = method.step(model, batch, StepContext(epoch, 1, g))
    assert torch.equal(g.get_state(), replay.get_state())  # these steps draw nothing
    assert out.loss.shape == () and math.isfinite(out.loss.item()) and out.loss.item() > 0
    assert out.images == len(idx)
    x, y = data.gather(idx, aug_gen(0))
    assert torch.equal(x, batch.x_c) and torch.equal(y, data.labels[idx])
    with torch.no_grad():
        assert float(method.loss(model(x), y, epoch)) == pytest.approx(out.loss.item(), rel=1e-5)
        if name in ("ce_drw", "ldam_drw") and epoch == 9:  # the step took the context's epoch, weighted
            assert float(method.loss(model(x), y, 1)) != pytest.approx(out.loss.item(), rel=1e-3)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads)
    before = model.classifier.weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.classifier.weight, before)


@pytest.mark.parametrize("name", ["ce", "rw", "rs", "focal", "cb_focal", "ce_drw", "ce_drs", "mixup",
                                  "manifold_mixup", "manifold_mixup_two"])
@pytest.mark.parametrize("model", ["bbn_resnet32", "resnet32_cosine"])
def test_single_network_methods_refuse_other_networks(name: str, model: str) -> None:
    with pytest.raises(BBNError, match="use model.name=resnet32"):
        make(name, model)


def test_an_explicit_defer_epoch_must_leave_a_deferred_phase() -> None:
    assert defer_epoch(tiny_cfg("method.defer_epoch=9")) == 9  # 10 epochs: epoch 10 is deferred
    with pytest.raises(BBNError, match="method.defer_epoch=10 leaves no deferred phase"):
        defer_epoch(tiny_cfg("method.defer_epoch=10"))


@pytest.mark.parametrize("name", ["rs", "ce_drs"])
def test_resampling_draws_from_method_sampler(name: str) -> None:
    """RS (and DRS after its switch) re-sample with method.sampler: sqrt here."""
    from bbn.samplers import sqrt_class_probs

    counts = [200, 60, 20, 8]
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    cfg = build_config({}, [f"method.name={name}", "model.name=resnet32", "method.sampler=sqrt", "train.batch_size=8",
                            "train.epochs=10", "method.defer_epoch=5"])
    method = METHODS.get(name)(cfg, labels, len(counts))
    g = torch.Generator().manual_seed(0)
    drawn = torch.cat([idx for epoch in range(6, 11) for (idx,) in method.plan(epoch, g)])
    observed = torch.bincount(labels[drawn], minlength=4).double()
    expected = sqrt_class_probs(counts) * len(drawn)
    stat = float(((observed - expected) ** 2 / expected).sum())
    assert stat < 16.27, (stat, observed.tolist())  # chi-square, 3 degrees of freedom, q = 0.999
