"""Balanced Softmax and the logit-adjusted loss as methods: registered, reading their keys,
training the plain network on the uniform sampler with the prior-adjusted loss (inference
stays argmax z: the methods change only `loss`). Losses by hand: tests/test_losses.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bbn.config import build_config, load_config
from bbn.errors import BBNError
from bbn.methods import METHODS
from bbn.methods.single import SingleBranch
from bbn.models import create_model

COUNTS = [6, 3, 1]  # training images per class
LABELS = torch.tensor([c for c, n in enumerate(COUNTS) for _ in range(n)])


def method(name: str, *overrides: str) -> SingleBranch:
    cfg = build_config({}, [f"method.name={name}", "model.name=resnet32", "train.batch_size=4",
                            "train.epochs=10", *overrides])
    return METHODS.get(name)(cfg, LABELS, len(COUNTS))


def test_registered_with_the_keys_they_read() -> None:
    assert {"balanced_softmax", "logit_adjusted"} <= set(METHODS.names())
    assert METHODS.reads("logit_adjusted") == {"method.la_tau"}
    assert METHODS.reads("balanced_softmax") == frozenset()
    with pytest.raises(BBNError, match="method.la_tau is read by methods logit_adjusted, not by method 'ce'"):
        load_config("digits_ce", ["method.la_tau=2"])
    with pytest.raises(BBNError, match="method.la_tau.*greater than or equal to 0"):
        load_config("digits_logit_adjusted", ["method.la_tau=-0.5"])
    assert load_config("digits_logit_adjusted", ["method.la_tau=0"]).method.la_tau == 0.0


def test_the_losses_the_methods_train_with() -> None:
    # z = 0 for one image of class 2 (1 of 10 training images): p_2 = 1 / (6 + 3 + 1)
    z, y = torch.zeros(1, 3), torch.tensor([2])
    assert method("balanced_softmax").loss(z, y, 1).item() == pytest.approx(math.log(10), rel=1e-6)
    assert method("logit_adjusted").loss(z, y, 1).item() == pytest.approx(math.log(10), rel=1e-6)
    # tau = 2: weights 36, 9, 1 -> p_2 = 1 / 46; tau = 0: plain CE, ln 3
    assert method("logit_adjusted", "method.la_tau=2").loss(z, y, 1).item() == pytest.approx(math.log(46), rel=1e-6)
    assert method("logit_adjusted", "method.la_tau=0").loss(z, y, 1).item() == pytest.approx(math.log(3), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    want = F.cross_entropy(z + torch.tensor(COUNTS, dtype=torch.float32).log(), y)
    assert method("balanced_softmax").loss(z, y, 1).item() == pytest.approx(want.item(), rel=1e-6)
    assert method("logit_adjusted").loss(z, y, 1).item() == pytest.approx(want.item(), rel=1e-6)


def test_uniform_sampler_plain_network_and_plain_inference() -> None:
    for name in ("balanced_softmax", "logit_adjusted"):
        m = method(name)
        assert isinstance(m, SingleBranch)
        assert all(m.sampler(epoch) == "uniform" for epoch in (1, 5, 10))
        m.check_model(create_model("resnet32", 3, 3))
        with pytest.raises(BBNError, match="use model.name=resnet32"):
            m.check_model(create_model("bbn_resnet32", 3, 3))
        # the adjusted loss only trains: nothing here changes the model's forward pass
        assert type(m).loss is not SingleBranch.loss
        assert {k for k in vars(type(m)) if not k.startswith("_")} == {"loss"}
