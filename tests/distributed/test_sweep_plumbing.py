"""Ray plumbing that needs no cluster: ASHA's horizon, storage retries in trial
reports, keeping credentials out of Ray's runtime envs, checkpoint scores."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")


def _space(base: dict, params: dict | None = None, pairs: dict | None = None):
    from optical_ray.sweeps.space import parse_space

    return parse_space(
        {
            "base": base,
            "params": params
            or {"distill.epsilon": {"type": "loguniform", "low": 1e-3, "high": 1.0}},
            **({"pairs": pairs} if pairs else {}),
        }
    )


def test_asha_horizon_is_a_full_trial_plus_its_summary() -> None:
    from optical_ray.config import from_flat
    from optical_ray.sweeps.plan import (
        asha_max_t as _asha_max_t,
        evaluations_per_trial as _evaluations_per_trial,
    )

    cfg = from_flat({})
    space = _space(
        {"train.stages": ["distill"], "distill.steps": 100, "train.eval_every": 25},
        pairs={"en-xc": {"base": {"distill.steps": 150}}},
    )
    assert _evaluations_per_trial(cfg, space, "en-xa") == 4
    assert _asha_max_t(cfg, space, "en-xa") == 5  # 4 evaluations + the end-of-trial report
    assert _evaluations_per_trial(cfg, space, "en-xc") == 6  # the pair's own budget
    # 110 steps, an evaluation every 25 and one at the end: 5 evaluations.
    assert (
        _evaluations_per_trial(
            cfg,
            _space({"train.stages": ["distill"], "distill.steps": 110, "train.eval_every": 25}),
            "en-xa",
        )
        == 5
    )
    # Unknown or varying length: no horizon.
    varying = _space(
        {"train.stages": ["distill"], "train.eval_every": 25},
        {"distill.steps": {"type": "int", "low": 50, "high": 100}},
    )
    assert _evaluations_per_trial(cfg, varying, "en-xa") is None
    assert _asha_max_t(cfg, varying, "en-xa") == 10_000
    by_epochs = _space({"train.stages": ["distill"], "distill.steps": 0})
    assert _evaluations_per_trial(cfg, by_epochs, "en-xa") is None


def test_storage_call_marks_transient_failures_for_retry() -> None:
    from optical_ray.storage import StorageUnavailable, with_retries
    from optical_ray.retries import call_transient

    calls = []

    def flaky_upload() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(
                "When uploading part for key 'x': AWS Error NETWORK_CONNECTION "
                "during UploadPart operation: curlCode: 7, Couldn't connect to "
                "server"
            )
        return "done"

    assert (
        with_retries(
            lambda: call_transient(flaky_upload), attempts=5, base_delay=0, sleep=lambda s: None
        )
        == "done"
    )
    assert len(calls) == 3
    with pytest.raises(StorageUnavailable):  # still down after the last attempt
        with_retries(
            lambda: call_transient(_always_down), attempts=2, base_delay=0, sleep=lambda s: None
        )

    def denied() -> None:
        raise OSError("AWS Error ACCESS_DENIED during PutObject operation: Access Denied")

    with pytest.raises(OSError, match="ACCESS_DENIED"):  # permanent: not retried
        call_transient(denied)


def _always_down() -> None:
    raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation: connection refused")


def test_tune_does_not_copy_aws_keys_into_runtime_envs(monkeypatch) -> None:
    from ray.tune.execution import class_cache

    from optical_ray.distributed.pair import _credentials_stay_on_nodes

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    before = set(class_cache.ENV_VARS_TO_PROPAGATE)
    assert "AWS_SECRET_ACCESS_KEY" in before  # Ray's default: what the guard undoes

    class Trainable:
        pass

    with _credentials_stay_on_nodes():
        cache = class_cache._ActorClassCache()
        remote = cache.get(Trainable)
        env = remote._default_options["runtime_env"]["env_vars"]
        assert not {k for k in env if k.startswith("AWS_")}
    assert set(class_cache.ENV_VARS_TO_PROPAGATE) == before


# .json() / .parse_obj() are pydantic-1 calls (deprecated in 2): the ones Ray makes.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("mode", ["max", "min"])
def test_unevaluated_checkpoint_score_survives_ray_snapshot(mode: str) -> None:
    """A checkpoint reported before any evaluation gets the worst *finite* score: Ray
    Train saves its checkpoint-manager snapshot as JSON, where -inf would become null
    and a run resumed from it would crash ranking checkpoints."""
    import json
    import math

    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _TrainingResultState

    from optical_ray.distributed.train import checkpoint_score

    assert checkpoint_score({"map": 0.25}, "map", mode) == 0.25
    scores = [
        checkpoint_score(m, "map", mode)
        for m in ({"loss": 1.0}, {"map": float("nan")}, {"map": -math.inf})
    ]
    for score in scores:
        assert math.isfinite(score)
        worse = score < 0.25 if mode == "max" else score > 0.25
        assert worse, (mode, score)
        state = _TrainingResultState(checkpoint_dir_name="checkpoint_0", metrics={"score": score})
        restored = _TrainingResultState.parse_obj(json.loads(state.json()))
        assert restored.metrics["score"] == score


def test_trials_asha_stopped_are_pruned_for_optuna_and_finished_ones_complete() -> None:
    """A trial without the end-of-trial report was stopped by the scheduler: TPE must
    see it as pruned (ranked by how far it got), not as complete with an early metric."""
    import optuna
    from ray.tune.result import TRAINING_ITERATION

    from optical_ray.distributed.searchers import PruningAwareOptunaSearch
    from optical_ray.sweeps.protocol import FINISHED_KEY

    searcher = PruningAwareOptunaSearch(
        space=_space({}).define_by_run("en-xc", 2),
        metric="map",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for trial_id in ("stopped", "finished", "failed"):
        assert searcher.suggest(trial_id) is not None
    searcher.on_trial_result("stopped", {"map": 0.2, TRAINING_ITERATION: 1})
    searcher.on_trial_complete("stopped", {"map": 0.2, TRAINING_ITERATION: 1})
    for it, value in ((1, 0.1), (2, 0.3)):
        searcher.on_trial_result("finished", {"map": value, TRAINING_ITERATION: it})
    searcher.on_trial_complete("finished", {"map": 0.3, FINISHED_KEY: 1, TRAINING_ITERATION: 3})
    searcher.on_trial_complete("failed", None, error=True)
    trials = searcher._ot_study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states == [
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
    ]
    assert trials[0].intermediate_values == {1: 0.2}
    assert trials[1].value == 0.3


def test_summary_lists_the_searched_keys_first() -> None:
    from optical_ray.sweeps.plan import PairResult, SweepResult

    best = {
        "distill.contrastive": 1.557,
        "distill.epsilon": 0.02,
        "distill.weight": 1.0,
        "distill.layers": [-2, -1],
        "distill.lr": 2e-4,
        "distill.rank_batch_size": 0,
    }
    pair = PairResult(
        "hau-en",
        "real-hau-en",
        "/x",
        best,
        {"map": 0.4258},
        None,
        None,
        3,
        searched=["distill.epsilon", "distill.contrastive", "distill.layers"],
    )
    text = SweepResult("real", "map", "/x", {"hau-en": pair}).summary()
    assert "hau-en: map=0.4258; 3 trials, 0 failed" in text
    assert "epsilon=0.02, contrastive=1.56, layers=[-2, -1], weight=1" in text


def test_a_cancelled_coordinator_start_is_tried_again(monkeypatch) -> None:
    """Ray cancels the creation of an actor under a name it has not yet released (the
    coordinator of the sweep before, just killed): the driver waits and tries again."""
    import optical_ray.distributed.driver as driver
    from ray.exceptions import RaySystemError

    calls: list[tuple] = []

    class FakeCoordinator:
        @staticmethod
        def options(**options):
            class Starter:
                @staticmethod
                def remote(*args):
                    calls.append((options["name"], args))
                    if len(calls) == 1:
                        raise RaySystemError("Actor creation cancelled.")
                    return "coordinator"

            return Starter

    def no_actor(name, namespace=None):
        raise ValueError(f"Failed to look up actor with name {name!r}")

    monkeypatch.setattr(driver, "_Coordinator", FakeCoordinator)
    monkeypatch.setattr(driver.ray, "get_actor", no_actor)
    monkeypatch.setattr(driver.time, "sleep", lambda s: None)
    assert driver._start_coordinator("sweep:x:/s", None, 2, ["en-xc"]) == "coordinator"
    assert calls == [("sweep:x:/s", (2, ["en-xc"]))] * 2
