"""The sweep's trial budget across pairs: ``sweep.max_concurrent`` trials in flight
at once, shared by every pair's experiment.

:class:`SlotPool` is the budget's state, held by the driver's coordinator actor
(:mod:`optical_ray.distributed.driver`); :class:`SharedLimiter` is the Tune searcher each pair's
experiment samples through, which asks the coordinator for a slot first. Tune pickles
the searcher into each experiment's saved state, so the limiter's state
(:meth:`SharedLimiter.get_state`) is what a resumed pair restores.
"""

from __future__ import annotations

from typing import Any, Iterable

import ray
from ray.tune.search import Searcher

from optical_ray.distributed.callbacks import coordinator_handle

__all__ = ["SlotPool", "SharedLimiter"]


class SlotPool:
    """The sweep's trial budget across pairs: ``capacity`` trials in flight at once.

    Each pair still running (``owners``, until :meth:`release_owner`) may hold an equal
    share, ``ceil(capacity / pairs running)``, so the first pair to ask cannot take
    every slot; shares grow as pairs end. With no owners registered (pairs run one
    after another) a pair may hold all of it. A pair keeps its slots from one of its
    trials to the next (:class:`SharedLimiter`), so slots move
    between pairs only when one has sampled all its trials."""

    def __init__(self, capacity: int, owners: Iterable[str] = ()) -> None:
        self.capacity = capacity
        self.active = set(owners)
        self.held: set[tuple[str, str]] = set()

    def share(self) -> int:
        """Slots one running pair may hold."""
        if not self.active:
            return self.capacity
        return max(1, -(-self.capacity // len(self.active)))

    def acquire(self, owner: str, trial_id: str) -> bool:
        """Take a slot for ``trial_id`` of ``owner`` (a pair); False when none is free
        or the pair holds its share."""
        if (owner, trial_id) in self.held:
            return True
        if len(self.held) >= self.capacity:
            return False
        if owner in self.active and self.holding(owner) >= self.share():
            return False
        self.held.add((owner, trial_id))
        return True

    def holding(self, owner: str) -> int:
        """Slots ``owner`` holds."""
        return sum(1 for o, _ in self.held if o == owner)

    def release(self, owner: str, trial_id: str) -> None:
        """Give back ``trial_id``'s slot."""
        self.held.discard((owner, trial_id))

    def release_owner(self, owner: str) -> None:
        """Every slot of a pair that ended; the others' shares grow."""
        self.held = {h for h in self.held if h[0] != owner}
        self.active.discard(owner)

    def in_flight(self) -> int:
        return len(self.held)


class SharedLimiter(Searcher):
    """Caps trials in flight across every pair of a sweep: Tune's ConcurrencyLimiter
    counts one experiment's trials, and each pair is its own experiment. A pair asks the
    coordinator for a slot before it samples a trial.

    A pair keeps a slot from one of its trials to its next while it still has trials to
    sample, and gives it back once it has sampled all ``samples``. Tune keeps an ended
    trial's actor, and the CPU it holds, cached for the pair's next trial (one per
    experiment, until its search is finished); a slot handed to another pair meanwhile
    left that pair's trial waiting for a CPU the cached actor held (44-67 s stalls in
    ``bench_cluster.py``, see docs/scale.md). Kept, the slot goes
    to the pair's next trial, which reuses the warm actor.

    Holds the coordinator by name, so a searcher restored on resume finds the new
    driver's coordinator; slots held under the old one are not carried over."""

    def __init__(
        self, searcher: Searcher, coordinator: str, owner: str, samples: int | None = None
    ) -> None:
        self.searcher, self.coordinator, self.owner = searcher, coordinator, owner
        self.samples = samples
        self.suggested = 0  # trials sampled so far (restored on resume)
        self.live: set[str] = set()
        self.slot_of: dict[str, str] = {}  # trial in flight -> the pool key of its slot
        self.spare: list[str] = []  # slots the pair keeps for its next trials
        self._handle: Any = None
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _slots(self) -> Any:
        if self._handle is None:
            self._handle = coordinator_handle(self.coordinator)
        return self._handle

    def _acquire(self, key: str) -> bool:
        slots = self._slots()
        return slots is None or bool(ray.get(slots.acquire.remote(self.owner, key)))

    def _release(self, key: str) -> None:
        slots = self._slots()
        if slots is not None:
            slots.release.remote(self.owner, key)

    def _release_spare(self) -> None:
        while self.spare:
            self._release(self.spare.pop())

    def _exhausted(self) -> bool:
        return self.samples is not None and self.suggested >= self.samples

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict | None:
        if self.spare:
            key = self.spare.pop()
        elif self._acquire(trial_id):
            key = trial_id
        else:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion is None or suggestion == Searcher.FINISHED:
            self._release(key)
            if suggestion == Searcher.FINISHED:
                self._release_spare()
            return suggestion
        self.suggested += 1
        self.live.add(trial_id)
        self.slot_of[trial_id] = key
        if self._exhausted():
            self._release_spare()
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)
        if trial_id not in self.live:
            return
        self.live.discard(trial_id)
        key = self.slot_of.pop(trial_id, None)
        if key is None:  # restored on resume: it holds no slot of this coordinator
            self._release(trial_id)
        elif self._exhausted():
            self._release(key)
        else:
            self.spare.append(key)

    def get_state(self) -> dict:
        return {"live": set(self.live), "suggested": self.suggested}

    def set_state(self, state: dict) -> None:
        self.live = set(state.get("live", ()))
        self.suggested = int(state.get("suggested", 0))
        self.slot_of, self.spare = {}, []

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
