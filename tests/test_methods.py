"""Training methods: BBN's step (Algorithm 1, two trunk passes) and the CE baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bbn.config import Config, build_config
from bbn.data.loader import DeviceImages
from bbn.data.sources import LabeledImages
from bbn.errors import BBNError
from bbn.methods import METHODS, Batch, Method, StepContext
from bbn.methods.cumulative import cumulative_alpha
from bbn.models import create_model

COUNTS = [9, 5, 3, 1]  # long-tailed, 18 images, 4 classes
N = sum(COUNTS)
BATCH = 4
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
AUG_SEED = 100  # stream s of a step is augmented from seed AUG_SEED + s


def tiny_images(channels: int = 3) -> LabeledImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, channels, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.tensor([c for c, n in enumerate(COUNTS) for _ in range(n)])
    labels = labels[torch.randperm(N, generator=g)]
    return LabeledImages(images, labels, [f"c{i}" for i in range(len(COUNTS))])


def tiny_cfg(*overrides: str) -> Config:
    return build_config({}, [f"train.batch_size={BATCH}", "train.epochs=10", "augment.crop_padding=1",
                             "augment.flip=true", *overrides])


def device_images(data: LabeledImages, cfg: Config) -> DeviceImages:
    """The in-memory set with `cfg`'s augmentation (crop padding, flip)."""
    c = data.images.shape[1]
    return DeviceImages.create(data, MEAN[:c], STD[:c], torch.device("cpu"),
                               padding=cfg.augment.crop_padding, flip=cfg.augment.flip)


def make(method: str, model: str, *overrides: str) -> tuple[Method, nn.Module, DeviceImages]:
    data = tiny_images()
    cfg = tiny_cfg(f"method.name={method}", f"model.name={model}", *overrides)
    m = METHODS.get(method)(cfg, data.labels, data.num_classes)
    torch.manual_seed(0)
    net = create_model(model, data.num_classes, data.images.shape[1])
    m.check_model(net)
    net.train()
    return m, net, device_images(data, cfg)


def clone(g: torch.Generator) -> torch.Generator:
    out = torch.Generator()
    out.set_state(g.get_state().clone())
    return out


def aug_gen(stream: int) -> torch.Generator:
    """The augmentation generator of one stream of a step (a fresh one per call)."""
    return torch.Generator().manual_seed(AUG_SEED + stream)


def ce_by_hand(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(z.double(), dim=1)[torch.arange(len(y)), y].mean()


def first_step(method: Method, epoch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The index tensors (one per stream) of the first step of `epoch`'s plan."""
    return method.plan(epoch, g)[0]


def gather(data: DeviceImages, step: tuple[torch.Tensor, ...]) -> Batch:
    """The step's images, each stream gathered and augmented from its own `aug_gen`."""
    return Batch.of([data.gather(idx, aug_gen(s)) for s, idx in enumerate(step)])


def test_registry() -> None:
    assert set(METHODS.names()) >= {"bbn", "ce"}
    with pytest.raises(BBNError, match="did you mean 'bbn'"):
        METHODS.get("bnn")


def test_batch_of_streams() -> None:
    x_c, y_c, x_r, y_r = torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(2, 3), torch.tensor([2, 3])
    paired = Batch.of([(x_c, y_c), (x_r, y_r)])
    assert paired == Batch(x_c, y_c, x_r, y_r)
    assert paired.labels() == (y_c, y_r)
    single = Batch.of([(x_c, y_c)])
    assert single.x_r is None and single.y_r is None
    assert single.labels() == (y_c,)


def test_bbn_step_runs_two_separate_trunk_passes() -> None:
    method, model, data = make("bbn", "bbn_resnet32")
    idx_c, idx_r = first_step(method, 4, torch.Generator().manual_seed(1))
    batch = gather(data, (idx_c, idx_r))
    g = torch.Generator().manual_seed(11)
    replay = clone(g)

    inputs: list[torch.Tensor] = []
    real_trunk = model.backbone.trunk

    def counting_trunk(x: torch.Tensor) -> torch.Tensor:
        inputs.append(x.detach().clone())
        return real_trunk(x)

    model.backbone.trunk = counting_trunk  # instance attribute shadows the method
    block_inputs: dict[str, list[int]] = {"cb": [], "rb": []}
    h1 = model.backbone.cb_block.register_forward_hook(lambda m, i, o: block_inputs["cb"].append(len(i[0])))
    h2 = model.backbone.rb_block.register_forward_hook(lambda m, i, o: block_inputs["rb"].append(len(i[0])))
    try:
        method.step(model, batch, StepContext(4, 1, g))
    finally:
        h1.remove()
        h2.remove()
        del model.backbone.trunk

    # two passes of BATCH images each (BatchNorm sees each branch's batch on its own)
    assert [len(x) for x in inputs] == [BATCH, BATCH]
    assert block_inputs == {"cb": [BATCH], "rb": [BATCH]}
    # first the uniform batch, then the reversed one, exactly as gathered and augmented:
    # the same generators give the same images, and the step augments nothing itself
    x_c, y_c = data.gather(idx_c, aug_gen(0))
    x_r, y_r = data.gather(idx_r, aug_gen(1))
    assert torch.equal(inputs[0], x_c) and torch.equal(inputs[0], batch.x_c)
    assert torch.equal(inputs[1], x_r) and torch.equal(inputs[1], batch.x_r)
    assert torch.equal(y_c, data.labels[idx_c]) and torch.equal(y_r, data.labels[idx_r])
    # the parabolic adaptor draws nothing: the step leaves its generator untouched
    assert torch.equal(g.get_state(), replay.get_state())


@pytest.mark.parametrize("epoch, alpha", [(1, 1.0), (4, 1 - 0.3**2), (10, 1 - 0.9**2)])
def test_bbn_step_loss_by_hand(epoch: int, alpha: float) -> None:
    method, model, data = make("bbn", "bbn_resnet32")
    assert method.logged(epoch)["alpha"] == pytest.approx(alpha)  # parabolic decay, T_max = 10 epochs
    idx_c, idx_r = first_step(method, epoch, torch.Generator().manual_seed(2))
    batch = gather(data, (idx_c, idx_r))
    out = method.step(model, batch, StepContext(epoch, 1, torch.Generator().manual_seed(12)))

    x_c, y_c = data.gather(idx_c, aug_gen(0))
    x_r, y_r = data.gather(idx_r, aug_gen(1))
    assert torch.equal(x_c, batch.x_c) and torch.equal(x_r, batch.x_r)
    assert torch.equal(y_c, data.labels[idx_c]) and torch.equal(y_r, data.labels[idx_r])
    with torch.no_grad():
        f_c = model.features(x_c, "cb")
        f_r = model.features(x_r, "rb")
        w, b = model.classifier.weight, model.classifier.bias
        z = 2 * alpha * f_c @ w[:, :64].t() + 2 * (1 - alpha) * f_r @ w[:, 64:].t() + b
    want = alpha * ce_by_hand(z, y_c) + (1 - alpha) * ce_by_hand(z, y_r)
    assert out.loss.item() == pytest.approx(float(want), rel=1e-4)
    pred = z.argmax(dim=1)
    acc = alpha * (pred == y_c).double().mean() + (1 - alpha) * (pred == y_r).double().mean()
    assert float(out.accuracy) == pytest.approx(float(acc), abs=1e-6)
    assert out.images == 2 * BATCH
    # the loss is a graph leaf-connected scalar reaching both branch blocks
    out.loss.backward()
    assert model.backbone.cb_block.conv1.weight.grad.abs().sum() > 0
    if alpha < 1.0:
        assert model.backbone.rb_block.conv1.weight.grad.abs().sum() > 0


def test_bbn_beta_adaptor_draws_alpha_each_step_from_the_generator() -> None:
    method, model, data = make("bbn", "bbn_resnet32", "method.adaptor=beta")
    assert method.logged(3) == {"alpha": None}
    idx_c, idx_r = first_step(method, 3, torch.Generator().manual_seed(0))
    batch = gather(data, (idx_c, idx_r))
    g = torch.Generator().manual_seed(3)
    replay = clone(g)
    out = method.step(model, batch, StepContext(3, 1, g))

    alpha = cumulative_alpha("beta", 3, 10, replay)  # the step's only draw
    assert torch.equal(replay.get_state(), g.get_state())  # same draws, same order
    x_c, y_c = data.gather(idx_c, aug_gen(0))
    x_r, y_r = data.gather(idx_r, aug_gen(1))
    assert torch.equal(x_c, batch.x_c) and torch.equal(x_r, batch.x_r)
    with torch.no_grad():
        z = model.logits(model.features(x_c, "cb"), model.features(x_r, "rb"), alpha)
    want = alpha * ce_by_hand(z, y_c) + (1 - alpha) * ce_by_hand(z, y_r)
    assert out.loss.item() == pytest.approx(float(want), rel=1e-4)
    # another step generator draws another alpha
    other = method.step(model, batch, StepContext(3, 2, torch.Generator().manual_seed(4)))
    assert other.loss.item() != pytest.approx(out.loss.item(), rel=1e-6)


def test_bbn_pairs_one_reversed_sample_per_uniform_sample() -> None:
    method, _, data = make("bbn", "bbn_resnet32")
    batches = method.plan(1, torch.Generator().manual_seed(4))
    assert isinstance(batches, list)
    assert len(batches) == method.steps_per_epoch() == N // BATCH
    assert all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    idx_c = torch.cat([c for c, _ in batches])
    assert all(len(c) == len(r) == BATCH for c, r in batches)
    assert len(set(idx_c.tolist())) == len(idx_c) == (N // BATCH) * BATCH  # no repeats in an epoch
    assert all(0 <= int(i) < N for _, r in batches for i in r)


def test_plan_depends_on_the_generator_alone() -> None:
    # a method holds no epoch state: the same generator state plans the same epoch,
    # whatever was planned before
    method, _, _ = make("bbn", "bbn_resnet32")
    first = method.plan(2, torch.Generator().manual_seed(5))
    method.plan(7, torch.Generator().manual_seed(6))
    again = method.plan(2, torch.Generator().manual_seed(5))
    assert len(first) == len(again)
    assert all(torch.equal(a, b) for s1, s2 in zip(first, again) for a, b in zip(s1, s2))


def test_bbn_refuses_a_plain_model() -> None:
    data = tiny_images()
    cfg = tiny_cfg("method.name=bbn", "model.name=resnet32")
    method = METHODS.get("bbn")(cfg, data.labels, data.num_classes)
    with pytest.raises(BBNError, match="bilateral.*bbn_resnet32"):
        method.check_model(create_model("resnet32", 4))
    method.check_model(create_model("bbn_resnet32", 4))  # accepted


def test_bbn_unknown_adaptor_or_sampler_fails_at_construction() -> None:
    data = tiny_images()
    with pytest.raises(BBNError, match="did you mean 'linear_decay'"):
        METHODS.get("bbn")(tiny_cfg("method.adaptor=linear_decy"), data.labels, 4)
    with pytest.raises(BBNError, match="did you mean 'reversed'"):
        METHODS.get("bbn")(tiny_cfg("method.rebalance_sampler=reverse"), data.labels, 4)


def test_ce_step_is_cross_entropy_on_the_uniform_batch() -> None:
    method, model, data = make("ce", "resnet32")
    assert method.logged(1) == {"alpha": None}
    step = first_step(method, 1, torch.Generator().manual_seed(5))
    assert isinstance(step, tuple) and len(step) == 1  # one stream
    (idx,) = step
    assert isinstance(idx, torch.Tensor) and len(idx) == BATCH
    batch = gather(data, step)
    assert batch.x_r is None and batch.y_r is None
    g = torch.Generator().manual_seed(15)
    replay = clone(g)
    out = method.step(model, batch, StepContext(1, 1, g))
    assert torch.equal(g.get_state(), replay.get_state())  # CE draws nothing in its step
    x, y = data.gather(idx, aug_gen(0))
    assert torch.equal(x, batch.x_c) and torch.equal(y, data.labels[idx])
    with torch.no_grad():
        z = model(x)
    assert out.loss.item() == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-5)
    assert out.loss.item() == pytest.approx(float(ce_by_hand(z, y)), rel=1e-4)
    assert float(out.accuracy) == pytest.approx(float((z.argmax(1) == y).double().mean()))
    assert out.images == BATCH


@pytest.mark.parametrize("method_name, model_name, streams", [("bbn", "bbn_resnet32", 2), ("ce", "resnet32", 1)])
@pytest.mark.parametrize("drop_last, steps", [(True, N // BATCH), (False, -(-N // BATCH))])
def test_steps_per_epoch(method_name: str, model_name: str, streams: int, drop_last: bool, steps: int) -> None:
    method, _, _ = make(method_name, model_name, f"train.drop_last={str(drop_last).lower()}")
    assert method.steps_per_epoch() == steps
    batches = method.plan(1, torch.Generator().manual_seed(6))
    assert len(batches) == steps
    assert all(len(b) == streams and all(len(i) == len(b[0]) for i in b) for b in batches)
    sizes = [len(b[0]) for b in batches]
    assert sizes == ([BATCH] * (N // BATCH) + ([] if drop_last else [N % BATCH]))


def test_batch_larger_than_data_with_drop_last_fails() -> None:
    data = tiny_images()
    cfg = build_config({}, ["train.batch_size=64", "method.name=ce", "model.name=resnet32"])
    with pytest.raises(BBNError, match="train.batch_size=64"):
        METHODS.get("ce")(cfg, data.labels, data.num_classes)


def test_bbn_step_on_one_channel_images() -> None:
    data = tiny_images(channels=1)
    cfg = tiny_cfg("augment.flip=false")
    method = METHODS.get("bbn")(cfg, data.labels, data.num_classes)
    model = create_model("bbn_resnet32", data.num_classes, in_channels=1).train()
    method.check_model(model)
    batch = gather(device_images(data, cfg), first_step(method, 1, torch.Generator().manual_seed(7)))
    assert batch.x_c.shape == batch.x_r.shape == (BATCH, 1, 8, 8)
    out = method.step(model, batch, StepContext(1, 1, torch.Generator().manual_seed(7)))
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.images == 2 * BATCH
