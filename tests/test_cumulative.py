"""Cumulative-learning adaptors (SPEC §1-§2): alpha per epoch, T = epoch - 1, T_max rule."""

from __future__ import annotations

import math

import pytest
import torch

from bbn.errors import BBNError
from bbn.methods.cumulative import ADAPTORS, cumulative_alpha, is_stochastic, t_max

EPOCHS_200 = (1, 2, 50, 100, 101, 120, 121, 200)

# alpha at the 1-based epochs above of a 200-epoch schedule (T_max = 200), worked out by hand:
# T = 0, 1, 49, 99, 100, 119, 120, 199;  (T/200)^2 = 0, 0.000025, 0.060025, 0.245025, 0.25,
# 0.354025, 0.36, 0.990025.
HAND_200: dict[str, tuple[float, ...]] = {
    "parabolic_decay": (1.0, 0.999975, 0.939975, 0.754975, 0.75, 0.645975, 0.64, 0.009975),
    "parabolic_increment": (0.0, 0.000025, 0.060025, 0.245025, 0.25, 0.354025, 0.36, 0.990025),
    "linear_decay": (1.0, 0.995, 0.755, 0.505, 0.5, 0.405, 0.4, 0.005),
    # cos(T/200 * pi/2): T=100 -> cos(pi/4); T=199 -> cos(pi/2 - pi/400) = sin(pi/400)
    "cosine_decay": (1.0, math.cos(math.pi / 400), math.cos(49 * math.pi / 400),
                     math.cos(99 * math.pi / 400), math.sqrt(0.5), math.cos(119 * math.pi / 400),
                     math.cos(120 * math.pi / 400), math.sin(math.pi / 400)),
    "equal": (0.5,) * 8,
    # the reference: 1 for epochs 1..120, then 0
    "step": (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0),
}

# 90 epochs -> T_max = 100 and 180 epochs -> T_max = 200 (the reference's rule)
# (epochs, epoch) -> alpha by hand, per adaptor
HAND_SPECIAL: dict[str, dict[tuple[int, int], float]] = {
    "parabolic_decay": {(90, 1): 1.0, (90, 51): 0.75, (90, 90): 1 - 0.7921,
                        (180, 1): 1.0, (180, 101): 0.75, (180, 180): 1 - 0.801025},
    "parabolic_increment": {(90, 1): 0.0, (90, 51): 0.25, (90, 90): 0.7921,
                            (180, 101): 0.25, (180, 180): 0.801025},
    "linear_decay": {(90, 1): 1.0, (90, 51): 0.5, (90, 90): 0.11,
                     (180, 101): 0.5, (180, 180): 0.105},
    "cosine_decay": {(90, 1): 1.0, (90, 51): math.sqrt(0.5), (90, 90): math.cos(89 * math.pi / 200),
                     (180, 101): math.sqrt(0.5), (180, 180): math.cos(179 * math.pi / 400)},
    "equal": {(90, 1): 0.5, (90, 90): 0.5, (180, 180): 0.5},
}

STOCHASTIC = {"beta"}
DETERMINISTIC = set(HAND_200)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_registered_adaptor_has_a_hand_written_expectation() -> None:
    # a new adaptor without expected values here fails this test
    assert set(ADAPTORS.names()) == DETERMINISTIC | STOCHASTIC


def test_every_registered_adaptor_gives_its_hand_written_values() -> None:
    """Each adaptor the registry hands out, called as (T, T_max, generator): the deterministic
    ones at their hand-written points, the stochastic one drawing Beta(0.2, 0.2) from the
    generator."""
    for name in ADAPTORS:
        adaptor = ADAPTORS.get(name)
        if name in DETERMINISTIC:
            got = [adaptor(epoch - 1, 200, gen()) for epoch in EPOCHS_200]
            assert got == pytest.approx(HAND_200[name], abs=1e-12), name
            continue
        draws = [adaptor(0, 200, gen(3)) for _ in range(3)]
        assert draws[0] == draws[1] == draws[2], name  # the same generator, the same alpha
        g = gen(3)
        many = torch.tensor([adaptor(0, 200, g) for _ in range(2000)], dtype=torch.float64)
        assert bool(((many >= 0) & (many <= 1)).all()), name
        assert float(many[0]) == draws[0], name
        assert len({adaptor(0, 200, gen(seed)) for seed in range(20)}) == 20, name  # other seeds, other alphas
        # Beta(0.2, 0.2): mean 0.5, std 0.42, so the mean of 2000 draws has std 0.0094;
        # 0.05 is over 5 of them
        assert abs(float(many.mean()) - 0.5) < 0.05, name


@pytest.mark.parametrize("epochs, expected", [
    (200, 200), (90, 100), (180, 200), (100, 100), (60, 60), (1, 1), (91, 91), (179, 179), (300, 300),
])
def test_t_max_rule(epochs: int, expected: int) -> None:
    assert t_max(epochs) == expected


@pytest.mark.parametrize("name", sorted(HAND_200))
def test_alpha_200_epochs_matches_hand_values(name: str) -> None:
    for epoch, want in zip(EPOCHS_200, HAND_200[name]):
        got = cumulative_alpha(name, epoch, 200, gen())
        assert isinstance(got, float)
        assert got == pytest.approx(want, abs=1e-12), (name, epoch)


@pytest.mark.parametrize("name", sorted(HAND_SPECIAL))
def test_alpha_90_and_180_epochs_use_the_larger_t_max(name: str) -> None:
    for (epochs, epoch), want in HAND_SPECIAL[name].items():
        got = cumulative_alpha(name, epoch, epochs, gen())
        assert got == pytest.approx(want, abs=1e-12), (name, epochs, epoch)


def test_parabolic_decay_never_reaches_zero_on_180_epochs() -> None:
    last = cumulative_alpha("parabolic_decay", 180, 180, gen())
    assert last == pytest.approx(1 - (179 / 200) ** 2, abs=1e-12)
    assert last > 0.19
    # while a plain schedule nearly reaches 0: 1 - (T/T_max)^2 with T_max = epochs
    assert cumulative_alpha("parabolic_decay", 150, 150, gen()) == pytest.approx(1 - (149 / 150) ** 2)


def test_step_is_one_through_epoch_120_then_zero_for_200_epochs() -> None:
    got = [cumulative_alpha("step", e, 200, gen()) for e in range(1, 201)]
    assert got == [1.0] * 120 + [0.0] * 80


@pytest.mark.parametrize("name", ["parabolic_decay", "linear_decay", "cosine_decay"])
def test_decays_are_monotone_and_in_unit_interval(name: str) -> None:
    vals = [cumulative_alpha(name, e, 200, gen()) for e in range(1, 201)]
    assert vals[0] == 1.0
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert all(b < a for a, b in zip(vals, vals[1:]))


def test_parabolic_increment_is_one_minus_parabolic_decay() -> None:
    for e in range(1, 201, 7):
        inc = cumulative_alpha("parabolic_increment", e, 200, gen())
        dec = cumulative_alpha("parabolic_decay", e, 200, gen())
        assert inc + dec == pytest.approx(1.0, abs=1e-12)


def test_deterministic_adaptors_ignore_and_do_not_consume_the_generator() -> None:
    for name in DETERMINISTIC:
        g = gen(5)
        state = g.get_state().clone()
        a = cumulative_alpha(name, 37, 200, g)
        assert torch.equal(g.get_state(), state), name
        assert a == cumulative_alpha(name, 37, 200, gen(123)), name


def test_beta_values_reproducible_from_the_generator_seed() -> None:
    g1, g2, g3 = gen(7), gen(7), gen(8)
    a = [cumulative_alpha("beta", 3, 200, g1) for _ in range(50)]
    b = [cumulative_alpha("beta", 3, 200, g2) for _ in range(50)]
    c = [cumulative_alpha("beta", 3, 200, g3) for _ in range(50)]
    assert a == b
    assert a != c
    assert len(set(a)) == 50  # a fresh draw every call


def test_beta_consumes_the_generator() -> None:
    g = gen(1)
    state = g.get_state().clone()
    cumulative_alpha("beta", 1, 200, g)
    assert not torch.equal(g.get_state(), state)


def test_beta_distribution_is_u_shaped_with_mean_one_half() -> None:
    g = gen(0)
    draws = torch.tensor([cumulative_alpha("beta", 1, 200, g) for _ in range(5000)], dtype=torch.float64)
    assert bool(((draws >= 0) & (draws <= 1)).all())
    # Beta(0.2, 0.2): mean 0.5, std 0.42 -> std of the mean over 5000 draws ~ 0.006
    assert abs(float(draws.mean()) - 0.5) < 0.03
    outside = float(((draws < 0.1) | (draws > 0.9)).double().mean())
    assert outside > 0.5  # ~0.66 for Beta(0.2, 0.2); a uniform would give 0.2
    # both ends carry mass, roughly symmetrically
    low, high = float((draws < 0.1).double().mean()), float((draws > 0.9).double().mean())
    assert 0.25 < low < 0.42 and 0.25 < high < 0.42
    # the std of Beta(0.2, 0.2) is sqrt(0.04 / (0.16 * 1.4)) = 0.4226
    assert float(draws.std()) == pytest.approx(math.sqrt(0.04 / (0.16 * 1.4)), abs=0.02)


def test_is_stochastic_only_for_beta() -> None:
    for name in ADAPTORS.names():
        assert is_stochastic(name) is (name in STOCHASTIC), name


@pytest.mark.parametrize("typo, closest", [
    ("parabolic_decy", "parabolic_decay"), ("cosine", "cosine_decay"), ("linear-decay", "linear_decay"),
])
def test_unknown_adaptor_names_the_closest(typo: str, closest: str) -> None:
    with pytest.raises(BBNError, match=f"unknown adaptor '{typo}'.*did you mean '{closest}'") as info:
        cumulative_alpha(typo, 1, 200, gen())
    assert "\n" not in str(info.value)
    with pytest.raises(BBNError, match=closest):
        is_stochastic(typo)
