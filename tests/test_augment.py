"""Batched augmentation (SPEC §4: random crop with zero padding, horizontal flip,
normalisation) and the device-side image loader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bbn.config import build_config
from bbn.data.augment import Normalize, random_crop_flip
from bbn.data.cifar import CIFAR_MEAN, CIFAR_STD
from bbn.data.loader import DeviceImages, create_image_set
from bbn.data.sources import LabeledImages


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(b: int, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    # values 1..255: a zero in the output can only come from the padding
    return torch.randint(1, 256, (b, c, h, w), generator=gen(seed), dtype=torch.int64).to(torch.uint8)


def candidates(image: torch.Tensor, p: int) -> torch.Tensor:
    """All (2p+1)^2 * 2 crops of one (C, H, W) image: index ((oy * (2p+1) + ox) * 2 + flip)."""
    c, h, w = image.shape
    padded = F.pad(image, (p, p, p, p))
    out = []
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            window = padded[:, oy : oy + h, ox : ox + w]
            out.append(window)
            out.append(window.flip(-1))
    return torch.stack(out)


def match(outputs: torch.Tensor, inputs: torch.Tensor, p: int) -> list[list[int]]:
    """For each sample, the candidate indices (offset, flip) reproducing its output."""
    found = []
    for out, img in zip(outputs, inputs):
        eq = (candidates(img, p) == out).flatten(1).all(1)
        found.append(torch.nonzero(eq).flatten().tolist())
    return found


# ---------------------------------------------------------------- random_crop_flip


@pytest.mark.parametrize(("p", "flip"), [(4, True), (2, False), (1, True)])
def test_each_output_is_a_padded_window_possibly_mirrored(p: int, flip: bool) -> None:
    x = rand_images(64, 3, 8, 10, seed=1)  # non-square on purpose
    y = random_crop_flip(x, p, flip, gen(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    found = match(y, x, p)
    assert all(len(f) == 1 for f in found), found  # exactly one (oy, ox, flip) per sample
    flips = {f[0] % 2 for f in found}
    if not flip:
        assert flips == {0}
    assert x.shape == (64, 3, 8, 10)


def test_input_is_not_modified() -> None:
    x = rand_images(16)
    before = x.clone()
    random_crop_flip(x, 4, True, gen(0))
    assert torch.equal(x, before)


def test_randomness_is_per_sample() -> None:
    x = rand_images(1, seed=2).expand(64, -1, -1, -1).contiguous()
    y = random_crop_flip(x, 4, True, gen(0))
    distinct = {tuple(img.flatten().tolist()) for img in y}
    assert len(distinct) > 20  # 162 possible crops; 64 identical inputs give many different outputs


def test_same_seed_same_output() -> None:
    x = rand_images(32, seed=3)
    a = random_crop_flip(x, 4, True, gen(7))
    b = random_crop_flip(x, 4, True, gen(7))
    c = random_crop_flip(x, 4, True, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_padding_zero_no_flip_is_identity() -> None:
    x = rand_images(8, seed=4)
    assert torch.equal(random_crop_flip(x, 0, False, gen(0)), x)


def test_flip_only() -> None:
    x = rand_images(200, seed=5)
    y = random_crop_flip(x, 0, True, gen(1))
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert int(same.sum()) > 50 and int(mirrored.sum()) > 50  # both occur, about half each


def test_offsets_and_flips_cover_every_position() -> None:
    p = 2
    x = rand_images(1, 3, 6, 6, seed=6).expand(3000, -1, -1, -1).contiguous()
    y = random_crop_flip(x, p, True, gen(2))
    cands = candidates(x[0], p)  # (50, C, H, W)
    eq = (y[:, None] == cands[None]).flatten(2).all(2)  # (B, 50)
    assert bool((eq.sum(1) == 1).all())
    hits = eq.sum(0)
    assert bool((hits > 0).all()), hits  # all 25 offsets x 2 flips drawn
    # roughly uniform: 3000 / 50 = 60 expected per cell
    assert int(hits.min()) > 25 and int(hits.max()) < 110


def test_padding_border_is_zero() -> None:
    # an extreme offset shows p zero rows/columns; the image itself has no zeros
    p = 3
    x = rand_images(1, 3, 8, 8, seed=8).expand(2000, -1, -1, -1).contiguous()
    y = random_crop_flip(x, p, False, gen(3))
    top_left = (y[:, :, :p, :] == 0).flatten(1).all(1) & (y[:, :, :, :p] == 0).flatten(1).all(1)
    assert bool(top_left.any())  # offset (0, 0) occurred
    k = int(torch.nonzero(top_left)[0])
    assert torch.equal(y[k, :, p:, p:], x[0, :, : 8 - p, : 8 - p])


def test_empty_batch() -> None:
    x = torch.zeros((0, 3, 8, 8), dtype=torch.uint8)
    assert random_crop_flip(x, 4, True, gen(0)).shape == (0, 3, 8, 8)


def test_meta_device_shape_and_dtype() -> None:
    x = torch.empty((4, 3, 8, 8), dtype=torch.uint8, device="meta")
    y = random_crop_flip(x, 4, True, gen(0))
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == torch.uint8


def test_result_does_not_depend_on_device_choice_cpu() -> None:
    # draws come from the CPU generator: the same seed gives the same crops on any device
    x = rand_images(16, seed=9)
    a = random_crop_flip(x, 4, True, gen(5))
    b = random_crop_flip(x.to("cpu"), 4, True, gen(5))
    assert torch.equal(a, b) and a.device.type == "cpu"


# ---------------------------------------------------------------- Normalize


def test_normalize_by_hand() -> None:
    x = torch.tensor([0, 51, 128, 255], dtype=torch.uint8)
    x = torch.stack([x, x.flip(0), x]).view(1, 3, 2, 2)  # (1, 3, 2, 2)
    norm = Normalize(CIFAR_MEAN, CIFAR_STD)
    out = norm(x)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                v = int(x[0, c, i, j])
                expected = (v / 255.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]
                assert abs(float(out[0, c, i, j]) - expected) < 1e-5


def test_normalize_single_channel_and_batch() -> None:
    x = torch.full((5, 1, 3, 3), 255, dtype=torch.uint8)
    out = Normalize((0.5,), (0.25,))(x)
    torch.testing.assert_close(out, torch.full((5, 1, 3, 3), 2.0))


# ---------------------------------------------------------------- DeviceImages


@pytest.fixture
def dataset() -> LabeledImages:
    images = rand_images(50, 3, 8, 8, seed=10)
    labels = torch.arange(50, dtype=torch.int64) % 7
    return LabeledImages(images, labels, [f"c{i}" for i in range(7)])


def reference_normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def test_gather_without_augmentation(dataset: LabeledImages) -> None:
    dev = DeviceImages.create(dataset, CIFAR_MEAN, CIFAR_STD, torch.device("cpu"))
    assert (dev.padding, dev.flip) == (0, False)  # no augmentation unless asked
    assert len(dev) == 50
    idx = torch.tensor([3, 0, 49, 3, 17])
    g = gen(0)
    before = g.get_state()
    x, y = dev.gather(idx, g)
    assert x.dtype == torch.float32 and x.shape == (5, 3, 8, 8)
    torch.testing.assert_close(x, reference_normalise(dataset.images[idx]), rtol=0, atol=1e-5)
    assert torch.equal(y, dataset.labels[idx])
    assert torch.equal(g.get_state(), before)  # nothing to draw


def test_gather_with_augmentation(dataset: LabeledImages) -> None:
    dev = DeviceImages.create(dataset, CIFAR_MEAN, CIFAR_STD, torch.device("cpu"), padding=2, flip=True)
    idx = torch.arange(49, -1, -1)
    g = gen(1)
    x, y = dev.gather(idx, g)
    assert torch.equal(y, dataset.labels[idx])
    # same as augmenting the gathered uint8 images then normalising, drawing from the generator
    replay = gen(1)
    expected = reference_normalise(random_crop_flip(dataset.images[idx], 2, True, replay))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert torch.equal(g.get_state(), replay.get_state())  # exactly the crop and flip draws
    assert not torch.allclose(x, reference_normalise(dataset.images[idx]))
    # the same generator state gives the same images, another one other crops
    assert torch.equal(dev.gather(idx, gen(1))[0], x)
    assert not torch.equal(dev.gather(idx, gen(2))[0], x)


def test_train_batches_augment_each_stream_from_its_own_seed(dataset: LabeledImages) -> None:
    dev = DeviceImages.create(dataset, CIFAR_MEAN, CIFAR_STD, torch.device("cpu"), padding=2, flip=True)
    a, b, c = torch.arange(0, 8), torch.arange(8, 16), torch.arange(49, 41, -1)
    steps = [[(a, 11), (b, 12)], [(c, 13)], [(a, 14), (a, 14)]]
    out = list(dev.train_batches(steps))
    assert [len(streams) for streams in out] == [2, 1, 2]  # per step, one (x, y) per stream
    for step, streams in zip(steps, out):
        for (idx, seed), (x, y) in zip(step, streams):
            want_x, want_y = dev.gather(idx, gen(seed))
            assert torch.equal(x, want_x) and torch.equal(y, want_y)
            assert torch.equal(y, dataset.labels[idx])
    # a stream's images depend on its own seed alone, not on the streams or steps before it
    assert torch.equal(out[2][0][0], out[2][1][0])
    assert torch.equal(next(iter(dev.train_batches([[(b, 12)]])))[0][0], out[0][1][0])
    assert not torch.equal(out[2][0][0], out[0][0][0])  # a, another seed: other crops


def test_image_set_takes_the_configured_augmentation(dataset: LabeledImages) -> None:
    cfg = build_config({}, ["augment.crop_padding=3", "augment.flip=false"])
    dev = create_image_set(dataset, cfg, CIFAR_MEAN, CIFAR_STD, torch.device("cpu"))
    assert isinstance(dev, DeviceImages) and (dev.padding, dev.flip) == (3, False)
    idx = torch.arange(50)
    x, _ = dev.gather(idx, gen(4))
    expected = reference_normalise(random_crop_flip(dataset.images[idx], 3, False, gen(4)))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    cfg = build_config({}, ["augment.crop_padding=0", "augment.flip=true"])
    dev = create_image_set(dataset, cfg, CIFAR_MEAN, CIFAR_STD, torch.device("cpu"))
    assert (dev.padding, dev.flip) == (0, True)


def test_eval_batches_in_order_without_augmentation(dataset: LabeledImages) -> None:
    dev = DeviceImages.create(dataset, CIFAR_MEAN, CIFAR_STD, torch.device("cpu"))
    batches = list(dev.eval_batches(16))
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    xs = torch.cat([b[0] for b in batches])
    ys = torch.cat([b[1] for b in batches])
    torch.testing.assert_close(xs, reference_normalise(dataset.images), rtol=0, atol=1e-5)
    assert torch.equal(ys, dataset.labels)
    # deterministic: a second pass is identical
    again = torch.cat([b[0] for b in dev.eval_batches(50)])
    assert torch.equal(again, xs)
