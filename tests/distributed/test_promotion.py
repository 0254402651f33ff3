"""Noise-aware promotion: Ray's ASHA stops a trial at a rung only when its per-query
dev values are significantly below the rung's cut-off trial. The decision on hand-made
per-query values (a trial within noise survives, one clearly worse is stopped, one
without per-query values is Ray's call), the private Ray API it rests on, and one small
sweep through the real driver."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler  # noqa: E402

from optical_ray.distributed.promotion import (  # noqa: E402
    PairedASHA,
    PairedBracket,
    cutoff_trial,
    paired_stop,
)
from optical_ray.evaluation.perquery import decode_units, encode_units  # noqa: E402
from optical_ray.sweeps.protocol import UNITS_KEY  # noqa: E402

N = 200
BASE = np.random.default_rng(0).uniform(0.2, 0.8, N)


def _values(shift: float, noise: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    v = BASE + shift + rng.normal(0, noise, N)
    return {"xx-en/map": {f"q{i:03d}": float(x) for i, x in enumerate(v)}}


def _result(it: int, values: dict | None, metric: str = "objective", sign: float = 1.0) -> dict:
    mean = float(np.mean(list(values["xx-en/map"].values()))) if values else 0.0
    out: dict[str, Any] = {"training_iteration": it, metric: sign * mean}
    if values is not None:
        out[UNITS_KEY] = encode_units(values, {"xx-en/map": 1.0})
    return out


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _scheduler(kind: type, mode: str = "max") -> Any:
    kwargs = {
        "time_attr": "training_iteration",
        "grace_period": 1,
        "reduction_factor": 2,
        "max_t": 8,
    }
    sched = kind(alpha=0.1, **kwargs) if kind is PairedASHA else kind(**kwargs)
    sched.set_search_properties("objective", mode)
    return sched


def _run(sched: Any, results: dict[str, dict]) -> dict[str, str]:
    """Each trial's decision at the first rung, trials arriving in order."""
    out = {}
    for tid, result in results.items():
        trial = _Trial(tid)
        sched.on_trial_add(None, trial)
        out[tid] = sched.on_trial_result(None, trial, result)
    return out


STRONG = _values(0.05, 0.05, 1)
WITHIN_NOISE = _values(0.045, 0.10, 2)  # a little lower on average, far inside the noise
WORSE = _values(-0.05, 0.05, 3)


def test_a_trial_within_noise_survives_and_one_clearly_worse_is_stopped() -> None:
    results = {
        "strong": _result(1, STRONG),
        "within": _result(1, WITHIN_NOISE),
        "worse": _result(1, WORSE),
    }
    assert results["within"]["objective"] < results["strong"]["objective"]
    plain = _run(_scheduler(AsyncHyperBandScheduler), results)
    paired_sched = _scheduler(PairedASHA)
    paired = _run(paired_sched, results)
    # Ray's ASHA stops the trial that is only a few thousandths below the cut-off
    assert plain == {"strong": "CONTINUE", "within": "STOP", "worse": "STOP"}
    assert paired == {"strong": "CONTINUE", "within": "CONTINUE", "worse": "STOP"}
    assert paired_sched.reprieved == 1


def test_without_per_query_values_the_decision_is_rays() -> None:
    results = {"strong": _result(1, STRONG), "bare": {"training_iteration": 1, "objective": 0.1}}
    assert _run(_scheduler(PairedASHA), results)["bare"] == TrialScheduler.STOP
    # units of other queries do not pair up: Ray's call too
    other = {"yy-en/map": WITHIN_NOISE["xx-en/map"]}
    results["within"] = {
        "training_iteration": 1,
        "objective": 0.1,
        UNITS_KEY: encode_units(other, {"yy-en/map": 1.0}),
    }
    assert _run(_scheduler(PairedASHA), results)["within"] == TrialScheduler.STOP


def test_a_minimised_metric_is_tested_in_its_direction() -> None:
    # lower is better: the trial with the higher values is the worse one
    results = {
        "good": _result(1, _values(-0.05, 0.05, 1), sign=1.0),
        "bad": _result(1, _values(0.05, 0.05, 3), sign=1.0),
    }
    assert _run(_scheduler(PairedASHA, "min"), results) == {"good": "CONTINUE", "bad": "STOP"}


def test_the_decision_rule_on_its_own() -> None:
    weights = {"xx-en/map": 1.0}
    a, b = decode_units(encode_units(STRONG, weights)), decode_units(encode_units(WORSE, weights))
    noisy = decode_units(encode_units(WITHIN_NOISE, weights))
    assert paired_stop(b, a, 1.0, 0.1) is True
    assert paired_stop(noisy, a, 1.0, 0.1) is False
    assert paired_stop(None, a, 1.0, 0.1) is None
    # the cut-off trial is the weakest recorded trial at or above the cut-off
    assert cutoff_trial({"a": 0.5, "b": 0.7, "c": 0.6, "d": 0.2}, 0.55) == "c"
    assert cutoff_trial({"a": 0.5}, 0.9) is None


def test_the_private_ray_api_promotion_rests_on() -> None:
    """If Ray renames or reshapes these, noise-aware promotion silently becomes plain
    ASHA (or breaks): this test fails first."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    plain = AsyncHyperBandScheduler(grace_period=1, reduction_factor=2, max_t=8)
    assert isinstance(plain._brackets, list) and isinstance(plain._brackets[0], _Bracket)
    assert isinstance(plain._trial_info, dict)
    plain.set_search_properties("m", "min")
    assert plain._metric_op == -1.0
    rungs = plain._brackets[0]._rungs
    assert [m for m, _ in rungs] == [8, 4, 2, 1] and all(isinstance(r, dict) for _, r in rungs)
    assert list(inspect.signature(_Bracket.on_result).parameters) == [
        "self",
        "trial",
        "cur_iter",
        "cur_rew",
    ]
    assert list(inspect.signature(_Bracket.cutoff).parameters) == ["self", "recorded"]
    assert plain._brackets[0]._stop_last_trials is True
    # the brackets PairedASHA builds are Ray's, rung for rung
    paired = PairedASHA(alpha=0.1, grace_period=1, reduction_factor=2, max_t=8)
    assert all(isinstance(b, PairedBracket) for b in paired._brackets)
    assert [m for m, _ in paired._brackets[0]._rungs] == [m for m, _ in rungs]
    assert "trial_id in recorded" in inspect.getsource(_Bracket.on_result)


# --------------------------------------------------------------------------- one real sweep


def stand_in(sampled: dict[str, Any], *, plan: Any) -> None:
    """A trial without training whose quality is set by its position (trials run one
    at a time; a counter file in the run's output dir numbers them): strong, within
    noise of it, clearly worse."""
    import json

    from ray import tune

    from optical_ray.config import to_flat
    from optical_ray.sweeps.plan import resolve_trial_config
    from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY

    trial_id = tune.get_context().get_trial_id()
    counter = Path(plan.base.output_dir) / "trials"
    counter.parent.mkdir(parents=True, exist_ok=True)
    index = len(counter.read_text().split()) if counter.exists() else 0
    counter.write_text((counter.read_text() if counter.exists() else "") + f"{trial_id}\n")
    values = [STRONG, WITHIN_NOISE, WORSE][index % 3]
    config = json.dumps(to_flat(resolve_trial_config(plan, sampled, trial_id)), sort_keys=True)
    for i in range(1, plan.max_t):
        tune.report({**_result(i, values, metric="map"), CONFIG_KEY: config})
    tune.report({**_result(plan.max_t, values, metric="map"), FINISHED_KEY: 1})


@pytest.fixture(scope="module")
def cluster(cluster):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield cluster
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.slow
@pytest.mark.parametrize("promotion", ["paired", "mean"])
def test_a_sweep_lets_the_trial_within_noise_through(cluster, tmp_path: Path, promotion) -> None:
    from optical_ray.catalog import Catalog
    from optical_ray.config import from_flat
    from optical_ray.distributed.driver import run
    from optical_ray.sweeps.space import parse_space

    space = parse_space(
        {
            "base": {"train.stages": ["distill"], "distill.steps": 4, "train.eval_every": 2},
            "params": {"distill.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        }
    )
    cfg = from_flat(
        {
            "name": f"promo-{promotion}",
            "output_dir": str(tmp_path / "runs"),
            "storage.uri": str(tmp_path / "store"),
            "sweep.pairs": ["xx-en"],
            "sweep.samples": 3,
            "sweep.max_concurrent": 1,
            "sweep.promotion": promotion,
            "sweep.reduction_factor": 2,
            "scaling.cpus_per_worker": 1.0,
        }
    )
    result = run(cfg, space, verbose=0, out=lambda _: None, check_data=False, trial_fn=stand_in)
    assert result.exit_code == 0
    records = Catalog(str(tmp_path / "store")).records("xx-en").set_index("trial_id")
    order = (tmp_path / "runs" / "trials").read_text().split()
    expected_within = "finished" if promotion == "paired" else "stopped"
    assert [records.loc[t, "status"] for t in order] == ["finished", expected_within, "stopped"]
    # the stopped trial paid only its first rung; the trial let through ran to the end
    assert [records.loc[t, "iterations"] for t in order][2] == 1
