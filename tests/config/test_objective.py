"""The sweep's weighted dev objective (``sweep.objective``): its grammar, the value a
dev evaluation gives it, the settings beside it (promotion, finalists) and the check
that every task of a pair's objective is evaluated."""

from __future__ import annotations

import pytest

from optical_ray.config import from_flat
from optical_ray.errors import ConfigError
from optical_ray.config.objective import (
    finalists_of,
    objective_problems,
    objective_task_problems,
    parse_objective,
    search_terms,
)


def test_the_grammar_reads_weights_tasks_and_bare_metrics() -> None:
    o = parse_objective("mean(2*{lang}-en/map, en-{lang}/ndcg@10, map)")
    assert [(t.task, t.metric, t.weight) for t in o.terms] == [
        ("{lang}-en", "map", 2.0),
        ("en-{lang}", "ndcg@10", 1.0),
        (None, "map", 1.0),
    ]
    bound = parse_objective("mean(2*swa-en/map, en-swa/map, swa-en_doc/map)", "swa-en")
    assert bound.weights() == {"swa-en/map": 0.5, "en-swa/map": 0.25, "swa-en_doc/map": 0.25}
    assert bound.tasks == ["swa-en", "en-swa", "swa-en_doc"]
    # a weighted mean of what a dev evaluation reports; None when a task is missing
    metrics = {"swa-en/map": 0.6, "en-swa/map": 0.4, "swa-en_doc/map": 0.2}
    assert bound.value(metrics) == pytest.approx(0.5 * 0.6 + 0.25 * 0.4 + 0.25 * 0.2)
    assert bound.value({"swa-en/map": 0.6}) is None
    # a single term, and a bare metric bound to the pair
    assert parse_objective("map", "en-xc").weights() == {"en-xc/map": 1.0}
    assert str(parse_objective("mean(2*a-b/map, map)")) == "mean(2*a-b/map, map)"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("mean(swa-en/foo)", "metric 'foo'"),
        ("mean(0*map, en-en/map)", "weights must be > 0"),
        ("mean(map, map)", "given more than once"),
        ("mean(swa-en/map; en-swa/map)", "expected mean(TERM, ...)"),
        ("max(map)", "expected mean(TERM, ...)"),
    ],
)
def test_a_bad_objective_is_named_with_what_is_allowed(text: str, needle: str) -> None:
    problems = objective_problems(text)
    assert problems and needle in problems[0] and problems[0].startswith("sweep.objective")
    with pytest.raises(ConfigError, match="sweep.objective"):
        from_flat({"sweep.objective": text})


def test_settings_beside_the_objective_are_checked() -> None:
    cfg = from_flat(
        {
            "sweep.objective": "mean(map, en-en/map)",
            "sweep.metric": "objective",
            "train.keep_best": True,
            "train.select_metric": "objective",
        }
    )
    assert finalists_of(cfg.sweep) == 2  # default with an objective
    assert finalists_of(from_flat({}).sweep) == 0  # the single-metric form: none
    assert finalists_of(from_flat({"sweep.samples": 1, "sweep.objective": "map"}).sweep) == 1
    for flat, needle in [
        ({"sweep.promotion_alpha": 1.0}, "sweep.promotion_alpha: got 1.0, must be < 1"),
        ({"sweep.promotion_alpha": 0.0}, "sweep.promotion_alpha: got 0.0, must be > 0"),
        (
            {"sweep.finalists": 5, "sweep.samples": 3},
            "sweep.finalists: got 5, but a pair runs only 3",
        ),
        ({"sweep.metric": "objective"}, "(or objective, with sweep.objective)"),
        ({"train.keep_best": True, "train.select_metric": "objective"}, "without sweep.objective"),
        ({"sweep.objective": "map", "sweep.objectives": ["map", "cost"]}, "not both"),
    ]:
        with pytest.raises(ConfigError) as exc:
            from_flat(flat)
        assert any(needle in p for p in exc.value.problems), (needle, exc.value.problems)


def test_a_task_the_pair_does_not_evaluate_lists_the_tasks_it_has() -> None:
    cfg = from_flat(
        {
            "pair": "swa-en",
            "eval.pairs": ["swa-en", "en-swa"],
            "sweep.objective": "mean(swa-en/map, swa-en_doc/map, en-swa/recall@5)",
        }
    )
    problems = objective_task_problems(cfg)
    assert problems[0] == (
        "sweep.objective: swa-en has no task swa-en_doc; its tasks: swa-en, en-swa "
        "(add the task to eval.pairs with its data.eval source)"
    )
    assert "recall@5 is not among eval.metrics" in problems[1]
    # no objective: the trial is judged on sweep.metric of its own pair
    plain = from_flat({"pair": "en-xc"})
    assert search_terms(plain).weights() == {"en-xc/map": 1.0}
    assert search_terms(cfg).weights()["swa-en_doc/map"] == pytest.approx(1 / 3)


def test_the_planner_fills_the_objective_per_pair_and_checks_it_before_any_trial() -> None:
    from optical_ray.sweeps.plan import check_objectives, pair_base
    from optical_ray.sweeps.space import parse_space

    space = parse_space(
        {
            "base": {
                "eval.pairs": ["{pair}", "en-{lang}"],
                "sweep.objective": "mean({lang}-en/map, en-{lang}/map)",
            },
            "params": {"distill.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        }
    )
    cfg = from_flat({"sweep.pairs": ["swa-en", "hau-en"]})
    base = pair_base(cfg, space, "hau-en")
    assert base.sweep.objective == "mean(hau-en/map, en-hau/map)"
    assert base.sweep.metric == "objective"
    check_objectives(cfg, space)  # every task evaluated: nothing to say
    # the config's own objective wins over the space's (the CLI's --objective)
    mine = from_flat({"sweep.pairs": ["swa-en"], "sweep.objective": "mean({lang}-en_doc/map)"})
    assert pair_base(mine, space, "swa-en").sweep.objective == "mean(swa-en_doc/map)"
    with pytest.raises(
        ConfigError, match="swa-en has no task swa-en_doc; its tasks: swa-en, en-swa"
    ):
        check_objectives(mine, space)
    # without an objective the base is the config itself
    assert pair_base(from_flat({}), parse_space({"base": {}}), "en-xc") == from_flat({})
