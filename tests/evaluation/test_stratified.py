"""The stratified sign-flip test of a weighted objective, against brute force: every
sign pattern enumerated by hand, weights per task, seeds pooled first."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optical_ray.errors import ConfigError, DataError
from optical_ray.evaluation.stratified import (
    objective_value,
    paired_objective_test,
    pool_seeds,
    sign_flip_p,
    term_values,
)


def _system(rng: np.random.Generator, shift: float = 0.0) -> dict[str, dict[str, float]]:
    return {
        "swa-en/map": {f"q{i}": float(rng.random()) + shift for i in range(5)},
        "en-swa/map": {f"r{i}": float(rng.random()) + shift for i in range(3)},
    }


def _brute(a, b, weights, alternative):
    """The p-value by enumerating the 2^n sign patterns of the weighted differences."""
    d = []
    for key, w in weights.items():
        qids = sorted(set(a[key]) & set(b[key]))
        d += [w / len(qids) * (a[key][q] - b[key][q]) for q in qids]
    t = sum(d)
    sums = [
        sum(s * x for s, x in zip(signs, d)) for signs in itertools.product((1, -1), repeat=len(d))
    ]
    hit = {
        "greater": lambda s: s >= t - 1e-12,
        "less": lambda s: s <= t + 1e-12,
        "two-sided": lambda s: abs(s) >= abs(t) - 1e-12,
    }[alternative]
    return t, sum(map(hit, sums)) / len(sums)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_exact_test_equals_brute_force(alternative: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _system(rng, 0.1), _system(rng)
    weights = {"swa-en/map": 2 / 3, "en-swa/map": 1 / 3}
    delta, p, units = paired_objective_test(a, b, weights, alternative=alternative)
    t, expected = _brute(a, b, weights, alternative)
    assert units == 8 and delta == pytest.approx(t)
    assert p == pytest.approx(expected)
    # the difference is the objective's difference
    assert delta == pytest.approx(objective_value(a, weights) - objective_value(b, weights))


def test_monte_carlo_agrees_with_the_exact_p_and_one_sided_p_halves() -> None:
    rng = np.random.default_rng(5)
    d = rng.normal(0.05, 1.0, 14)  # 2^14 = 16384 patterns
    exact = sign_flip_p(d, "greater", n_resamples=2**14)
    sampled = sign_flip_p(d, "greater", n_resamples=2**14 - 1, seed=3)
    assert abs(exact - sampled) < 0.02
    two = sign_flip_p(d, "two-sided", n_resamples=2**14)
    assert min(exact, 1 - exact) == pytest.approx(two / 2, abs=0.01)
    assert sign_flip_p(np.zeros(5)) == 1.0
    with pytest.raises(ConfigError, match="alternative"):
        sign_flip_p(d, "bigger")


def test_a_clear_difference_over_many_queries_is_significant_and_a_tie_is_not() -> None:
    rng = np.random.default_rng(0)
    base = {"t/map": {f"q{i}": float(v) for i, v in enumerate(rng.random(300))}}
    noise = {"t/map": {q: v + float(rng.normal(0, 0.05)) for q, v in base["t/map"].items()}}
    better = {"t/map": {q: v + 0.03 for q, v in noise["t/map"].items()}}
    w = {"t/map": 1.0}
    assert paired_objective_test(better, base, w, alternative="greater")[1] < 0.01
    assert paired_objective_test(noise, base, w, alternative="greater")[1] > 0.05


def test_seeds_are_pooled_per_query_before_the_test() -> None:
    runs = [
        {"t/map": {"a": 0.2, "b": 0.4, "c": 1.0}},
        {"t/map": {"a": 0.4, "b": 0.6}},  # c missing: only the shared queries pool
    ]
    assert pool_seeds(runs) == {"t/map": {"a": pytest.approx(0.3), "b": pytest.approx(0.5)}}
    assert pool_seeds([]) == {}
    per_task = {"swa-en": {"a": {"map": 0.5, "ndcg@10": 0.7}}, "en-swa": {"b": {"map": 0.1}}}
    assert term_values(per_task, {"swa-en/ndcg@10": 1.0, "xx-en/map": 1.0}) == {
        "swa-en/ndcg@10": {"a": 0.7}
    }
    with pytest.raises(DataError, match="no query"):
        paired_objective_test({"t/map": {"a": 1.0}}, {"t/map": {"b": 1.0}}, {"t/map": 1.0})
