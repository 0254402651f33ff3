"""What a pair's Tune driver loads at start: one process per pair, so every import and
every default callback is paid once per pair when a sweep starts."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

pytest.importorskip("ray")


def test_the_driver_side_never_imports_torch() -> None:
    """The pair's task, the coordinator and the driver import launch/raytune/tracking
    glue only; the training code (and torch) loads in trial processes."""
    code = (
        "import sys, optical_ray.distributed.driver, optical_ray.distributed.pair, optical_ray.distributed.tracking; "
        "print(sorted(m for m in ('torch', 'tensorboardX', 'mlflow', 'wandb') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_tune_adds_no_tensorboard_logger_but_keeps_the_result_files() -> None:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from optical_ray.distributed.pair import _no_default_loggers, _result_loggers

    with _no_default_loggers():
        callbacks = _create_default_callbacks(_result_loggers())
    kinds = [type(c) for c in callbacks]
    assert CSVLoggerCallback in kinds and JsonLoggerCallback in kinds
    assert not any(issubclass(k, TBXLoggerCallback) for k in kinds)
    # Without the guard Tune would add it (the guard is what keeps it out).
    assert any(
        isinstance(c, TBXLoggerCallback) for c in _create_default_callbacks(_result_loggers())
    )


def test_callback_telemetry_is_skipped_where_tune_calls_it() -> None:
    """Private Ray: ``tune.run`` tags the user's callbacks through
    ``ray.air._internal.usage.tag_callbacks`` (the name the guard replaces)."""
    import ray.tune.tune as tune_module
    from ray.air._internal import usage

    from optical_ray.distributed.pair import _no_callback_telemetry

    assert "air_usage.tag_callbacks(" in inspect.getsource(tune_module.run)
    assert tune_module.air_usage is usage
    original = usage.tag_callbacks
    with _no_callback_telemetry():
        assert usage.tag_callbacks is not original
        assert usage.tag_callbacks([object()]) is False
    assert usage.tag_callbacks is original
