"""The Ray-free half of a sweep: plans, the one trial-config resolution, the summary."""

from __future__ import annotations

import pytest

SPACE = {
    "base": {"train.stages": ["distill"], "distill.steps": 4, "train.eval_every": 2},
    "params": {
        "distill.epsilon": {"type": "loguniform", "low": 0.01, "high": 1.0},
        "distill.layers": {"type": "layers", "strategies": ["last"], "max_k": 2},
    },
    "pairs": {"en-xc": {"base": {"distill.steps": 6}}},
}


def _plans(resume=False, exists=None):
    from optical_ray.config import from_flat
    from optical_ray.sweeps.space import parse_space
    from optical_ray.sweeps.plan import plan_sweep, sweep_config

    cfg = sweep_config(from_flat({}), pairs=["en-xa", "en-xc"], name="s", samples=3)
    return plan_sweep(cfg, parse_space(SPACE), lambda e: f"/store/{e}", 2, exists or {}, resume)


def test_plans_per_pair_and_the_trial_config_resolved_once() -> None:
    from optical_ray.config import to_flat
    from optical_ray.sweeps.plan import resolve_trial_config

    plans = _plans()
    assert [(p.pair, p.experiment, p.path, p.max_t) for p in plans] == [
        ("en-xa", "s-en-xa", "/store/s-en-xa", 3),
        ("en-xc", "s-en-xc", "/store/s-en-xc", 4),
    ]
    assert plans[1].searched == ["distill.epsilon", "distill.layers"]
    sampled = {"distill.epsilon": 0.05, "distill.layers.strategy": "last", "distill.layers.k": 2}
    cfg = resolve_trial_config(plans[1], sampled, "abc123")
    flat = to_flat(cfg)
    # Knob names are the same end to end; name and checkpoints follow the trial.
    assert flat["distill.epsilon"] == 0.05 and flat["distill.layers"] == [-2, -1]
    assert flat["distill.steps"] == 6 and flat["pair"] == "en-xc"
    assert flat["name"] == "s-en-xc-abc123" and flat["train.checkpoint_every"] == 2


def test_every_existing_experiment_is_named_before_anything_runs() -> None:
    from optical_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="s-en-xa, s-en-xc already exist"):
        _plans(exists={"en-xa": True, "en-xc": True})
    plans = _plans(resume=True, exists={"en-xc": True})
    assert [p.resume for p in plans] == [False, True]


def test_bad_sweep_arguments_are_one_line() -> None:
    from optical_ray.config import from_flat
    from optical_ray.errors import ConfigError
    from optical_ray.sweeps.plan import sweep_config

    with pytest.raises(ConfigError, match="en-xa given more than once"):
        sweep_config(from_flat({}), pairs=["en-xa", "en-xa"])
    with pytest.raises(ConfigError, match="sweep.pair_order"):
        sweep_config(from_flat({}), pairs=["en-xa"], pair_order="diagonal")


def test_a_sweep_without_finished_trials_exits_non_zero() -> None:
    from optical_ray.sweeps.plan import PairResult, SweepResult

    ok = PairResult("en-xa", "s-en-xa", "/x", {"distill.epsilon": 0.1}, {"map": 0.4}, None, None, 2)
    failed = PairResult(
        "en-xc",
        "s-en-xc",
        "/x",
        None,
        {},
        None,
        None,
        2,
        failed=[("t1", "DataError: no bitext"), ("t2", "DataError: no bitext")],
    )
    assert SweepResult("s", "map", "/x", {"en-xa": ok}).exit_code == 0
    result = SweepResult("s", "map", "/x", {"en-xa": ok, "en-xc": failed})
    assert result.exit_code == 1
    text = result.summary()
    assert "en-xc: no finished trial; 2 trials, 2 failed" in text
    assert "failed t1: DataError: no bitext" in text
    assert text.splitlines()[-1].startswith("error: no finished trial for en-xc")
    crashed = PairResult("en-xc", "s-en-xc", "/x", None, {}, None, None, 0, error="boom")
    assert (
        "en-xc: experiment failed: boom"
        in SweepResult("s", "map", "/x", {"en-xc": crashed}).summary()
    )


def test_the_sweep_module_is_ray_free() -> None:
    import subprocess
    import sys

    code = "import sys, optical_ray.sweeps.plan; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_space_that_samples_unconverging_epsilon_is_warned_about() -> None:
    from optical_ray.config import from_flat
    from optical_ray.sweeps.space import parse_space
    from optical_ray.sweeps.plan import sweep_config, unconverging_epsilon

    cfg = sweep_config(from_flat({"distill.sinkhorn_iters": 100}), pairs=["en-xa", "en-xc"])
    space = parse_space(
        {
            "params": {"distill.epsilon": {"type": "loguniform", "low": 1e-3, "high": 1.0}},
            "pairs": {"en-xa": {"base": {"distill.sinkhorn_iters": 20000}}},
        }
    )
    lines = unconverging_epsilon(cfg, space)
    assert len(lines) == 1 and lines[0].startswith("en-xc: ")
    assert "distill.epsilon down to 0.001" in lines[0] and "distill.sinkhorn_iters=100" in lines[0]
    mse = parse_space(
        {
            "base": {"distill.method": "mse_sentence"},
            "params": {"distill.epsilon": {"type": "loguniform", "low": 1e-3, "high": 1.0}},
        }
    )
    assert unconverging_epsilon(cfg, mse) == []  # no OT, nothing to converge


def test_slot_pool_caps_trials_in_flight_across_pairs() -> None:
    from optical_ray.distributed.slots import SlotPool

    pool = SlotPool(2)
    assert pool.acquire("a", "a1") and pool.acquire("b", "b1")
    assert not pool.acquire("a", "a2")  # the total is 2
    assert pool.acquire("a", "a1")  # asking again for a trial in flight is no new slot
    pool.release("a", "a1")
    assert pool.acquire("b", "b2")  # whichever pair asks first
    pool.release("b", "b9")  # a slot it does not hold: nothing happens
    assert pool.in_flight() == 2
    pool.release_owner("b")  # a pair that ended holds nothing
    assert pool.in_flight() == 0


def test_slot_pool_shares_slots_between_running_pairs() -> None:
    from optical_ray.distributed.slots import SlotPool

    pool = SlotPool(5, owners=["a", "b"])  # ceil(5 / 2) = 3 each
    assert [pool.acquire("a", f"a{i}") for i in range(4)] == [True, True, True, False]
    assert pool.acquire("b", "b1") and pool.acquire("b", "b2")
    assert not pool.acquire("b", "b3")  # the capacity, 5, is reached before b's share
    pool.release_owner("a")  # a ended: b may take every slot
    assert pool.share() == 5
    assert all(pool.acquire("b", f"b{i}") for i in range(3, 6))
    assert not pool.acquire("b", "b6")


class _Sampler:
    """A stand-in searcher for SharedLimiter: a config per call, or None when told."""

    metric, mode = "map", "max"

    def __init__(self) -> None:
        self.ready = True

    def suggest(self, trial_id: str) -> dict | None:
        return {"x": trial_id} if self.ready else None

    def on_trial_complete(self, trial_id: str, result=None, error=False) -> None:
        pass


def _limiter(pool, owner: str, samples: int):
    from optical_ray.distributed.slots import SharedLimiter

    class Local(SharedLimiter):
        def _acquire(self, key: str) -> bool:
            return pool.acquire(self.owner, key)

        def _release(self, key: str) -> None:
            pool.release(self.owner, key)

    return Local(_Sampler(), "unused", owner, samples=samples)


def test_a_pair_keeps_its_slot_for_its_next_trial_until_it_has_sampled_all() -> None:
    """Tune keeps an ended trial's actor (and its CPU) for the pair's next trial: the
    slot must stay with the pair, or another pair's trial waits for that CPU."""
    from optical_ray.distributed.slots import SlotPool

    pool = SlotPool(2, owners=["a", "b"])  # one slot each
    a, b = _limiter(pool, "a", samples=3), _limiter(pool, "b", samples=1)
    assert a.suggest("a1") and b.suggest("b1")
    assert a.suggest("a2") is None  # a holds its share
    a.on_trial_complete("a1", {"map": 0.5})
    assert pool.holding("a") == 1 and a.spare  # kept, not back in the pool
    assert not pool.acquire("c", "c1")  # nobody else can take it
    assert a.suggest("a2") == {"x": "a2"} and not a.spare  # its next trial has it
    a.searcher.ready = False
    a.on_trial_complete("a2", {"map": 0.6})
    assert a.suggest("a3") is None and pool.holding("a") == 0  # not sampled: given back
    a.searcher.ready = True
    b.on_trial_complete("b1", {"map": 0.4})  # b sampled all its trials: the slot goes back
    assert pool.holding("b") == 0 and not b.spare
    pool.release_owner("b")
    assert a.suggest("a3") and a.suggested == 3
    assert pool.holding("a") == 1
    a.on_trial_complete("a3", {"map": 0.7})  # a's last trial: nothing kept
    assert pool.in_flight() == 0


def test_a_restored_limiter_holds_no_slot_of_the_old_coordinator() -> None:
    from optical_ray.distributed.slots import SlotPool

    pool = SlotPool(1)
    a = _limiter(pool, "a", samples=4)
    assert a.suggest("a1")
    a.on_trial_complete("a1", {"map": 0.5})
    state = a.get_state()
    fresh = SlotPool(1)
    b = _limiter(fresh, "a", samples=4)
    b.set_state({**state, "live": {"a2"}})
    assert b.suggested == 1 and not b.spare  # the kept slot was the old pool's
    b.on_trial_complete("a2", {"map": 0.6})  # restored and running without a slot
    assert fresh.in_flight() == 0 and not b.spare
    assert b.suggest("a3") and fresh.in_flight() == 1


@pytest.mark.parametrize("old", ["optical_ray.raytune", "optical_ray.slots"])
def test_a_limiter_saved_under_an_old_module_still_loads(old: str) -> None:
    """Tune pickles the searcher into each experiment's saved state; sweeps saved before
    the package moved into subpackages name ``optical_ray.raytune.SharedLimiter`` or
    ``optical_ray.slots.SharedLimiter``, and ``--resume`` must still load them."""
    import pickle

    from optical_ray.distributed.slots import SharedLimiter

    limiter = SharedLimiter(_Sampler(), "coord", "en-sw", samples=4)
    limiter.suggested = 2
    new = pickle.dumps(limiter, protocol=2)
    saved = new.replace(
        b"optical_ray.distributed.slots\nSharedLimiter", f"{old}\nSharedLimiter".encode()
    )
    assert saved != new  # the saved state names the old module
    loaded = pickle.loads(saved)
    assert isinstance(loaded, SharedLimiter)
    assert (loaded.owner, loaded.samples, loaded.suggested) == ("en-sw", 4, 2)


def test_the_catalog_callback_keeps_each_trials_best_checkpoint_across_a_restart(tmp_path) -> None:
    """Ties go to the later checkpoint (as Tune's retention keeps it), a worse one never
    replaces the best, and the choice survives the callback's saved state (a driver
    restart), so a resumed trial's record still names its best checkpoint."""
    from types import SimpleNamespace

    from optical_ray.config import from_flat
    from optical_ray.sweeps.plan import PairPlan
    from optical_ray.distributed.callbacks import CatalogCallback

    cfg = from_flat({"storage.uri": str(tmp_path), "sweep.mode": "min"})
    plan = PairPlan("en-sw", "s-en-sw", "", cfg, None, 2, 3)
    catalog = SimpleNamespace(storage=None)
    trial = SimpleNamespace(trial_id="t1", last_result={}, checkpoint=None)
    cb = CatalogCallback(catalog, plan, None)
    for i, score in enumerate((0.4, 0.3, 0.5, 0.3)):
        trial.last_result = {"score": score}
        cb.on_checkpoint(0, [], trial, SimpleNamespace(path=f"/x/checkpoint_{i}", filesystem=None))
    assert cb.checkpoints.uri(trial, {}) == "/x/checkpoint_3"  # mode min; the later tie
    restored = CatalogCallback(catalog, plan, None)
    restored.set_state(cb.get_state())
    trial.last_result = {"score": 0.35}
    restored.on_checkpoint(0, [], trial, SimpleNamespace(path="/x/checkpoint_4", filesystem=None))
    assert restored.checkpoints.uri(trial, {}) == "/x/checkpoint_3"
    # a trial it never saw a checkpoint of: the one Tune names (or the Train run's)
    other = SimpleNamespace(trial_id="t2", last_result={}, checkpoint=None)
    assert restored.checkpoints.uri(other, {}) is None


def test_a_trial_that_ends_after_its_driver_died_is_recorded_by_the_resumed_sweep(
    tmp_path,
) -> None:
    """A trial that ends just after the sweep's driver died gets no record (the fence)
    and asks the task to end; its state is kept for the saved experiment. The resumed
    experiment, which restored the trial ended, records it as it ends, with that state,
    and never records a restored trial twice."""
    import json
    from types import SimpleNamespace

    from optical_ray.catalog import Catalog
    from optical_ray.config import from_flat
    from optical_ray.sweeps.plan import PairPlan
    from optical_ray.sweeps.protocol import CONFIG_KEY, FINISHED_KEY, PER_QUERY_KEY
    from optical_ray.distributed.callbacks import CatalogCallback

    cfg = from_flat({"storage.uri": str(tmp_path / "store")})
    plan = PairPlan("en-sw", "s-en-sw", "", cfg, None, 2, 3)
    catalog = Catalog(str(tmp_path / "store"))

    def trial(tid: str, status: str = "TERMINATED") -> SimpleNamespace:
        result = {
            "map": 0.5,
            "score": 0.5,
            "training_iteration": 3,
            FINISHED_KEY: True,
            CONFIG_KEY: json.dumps({"distill.lr": 1e-3}),
        }
        return SimpleNamespace(
            trial_id=tid,
            status=status,
            last_result=result,
            metric_analysis={"map": {"max": 0.5, "min": 0.4}},
            config={},
            checkpoint=None,
            error_file=None,
            get_error=lambda: None,
        )

    ended = []
    gone = CatalogCallback(
        catalog, plan, None, fence=lambda: False, on_fenced=lambda t: ended.append(t.trial_id)
    )
    gone.on_trial_result(0, [], trial("t1"), {PER_QUERY_KEY: '{"qids": ["q1"]}', "map": 0.5})
    gone.on_trial_complete(0, [], trial("t1"))
    assert ended == ["t1"]
    assert not (tmp_path / "store" / "catalog").exists() or catalog.records().empty
    saved = gone.get_state()  # what Tune saves with the experiment in that step
    assert "t1" in saved["per_query"]

    first = CatalogCallback(catalog, plan, None, fence=lambda: True)
    first.on_trial_complete(0, [], trial("t0"))
    assert list(catalog.records()["record_id"]) == ["s-en-sw--t0"]

    writes = []
    resumed = CatalogCallback(catalog, plan, None)
    resumed.set_state(saved)
    append = catalog.append
    catalog.append = lambda record: writes.append(record.record_id) or append(record)
    trials = [trial("t0"), trial("t1"), trial("t2", "RUNNING")]
    resumed.on_experiment_end(trials)
    assert writes == ["s-en-sw--t1"]  # t0 had its record; t2 did not end
    after = catalog.records()
    assert sorted(after["record_id"]) == ["s-en-sw--t0", "s-en-sw--t1"]
    assert set(after["status"]) == {"finished"}
    assert after.set_index("record_id").loc["s-en-sw--t1", "dev_per_query"] == '{"qids": ["q1"]}'
    resumed.on_experiment_end(trials)  # nothing left to record
    assert writes == ["s-en-sw--t1"]


def test_the_tracking_callback_tags_a_resumed_trial_with_its_best_checkpoint(tmp_path) -> None:
    """An MLflow/TensorBoard/W&B run's checkpoint tag is the trial's best checkpoint,
    also after a driver restart (the callback's state travels with the experiment),
    the same one the catalog record names."""
    from types import SimpleNamespace

    from optical_ray.config import from_flat
    from optical_ray.sweeps.plan import PairPlan
    from optical_ray.sweeps.protocol import FINISHED_KEY
    from optical_ray.distributed.tracking import TrackingCallback

    cfg = from_flat({"storage.uri": str(tmp_path)})
    plan = PairPlan("en-sw", "s-en-sw", "", cfg, None, 2, 3)
    finished = []
    tracker = SimpleNamespace(finish=lambda key, status, tags: finished.append((key, tags)))
    trial = SimpleNamespace(trial_id="t1", last_result={}, checkpoint=None)
    cb = TrackingCallback(tracker, plan=plan, store=None)
    for i, score in enumerate((0.7, 0.5)):
        trial.last_result = {"score": score}
        cb.on_checkpoint(0, [], trial, SimpleNamespace(path=f"/x/checkpoint_{i}", filesystem=None))
    state = cb.get_state()
    restored = TrackingCallback(tracker, plan=plan, store=None)
    restored.set_state({"configs": {}})  # another callback's state: ignored
    restored.set_state(state)
    trial.last_result = {"score": 0.6}
    restored.on_checkpoint(0, [], trial, SimpleNamespace(path="/x/checkpoint_2", filesystem=None))
    trial.last_result = {"score": 0.6, FINISHED_KEY: True}
    trial.checkpoint = SimpleNamespace(path="/x/checkpoint_2", filesystem=None)  # the latest
    restored.on_trial_complete(0, [], trial)
    assert finished == [
        ("t1", {"optical_ray.status": "finished", "optical_ray.checkpoint_uri": "/x/checkpoint_0"})
    ]
    assert restored.get_state() == {"tracking_checkpoints": {}}
