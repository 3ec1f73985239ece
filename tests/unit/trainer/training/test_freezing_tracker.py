"""The freezing tracker on a real tiny BERT: the trainable set per stage and the log."""

from __future__ import annotations

from typing import Any

from kubetune_trainer import freezing
from kubetune_trainer.training.freezing_tracker import FreezingTracker, freezing_summary
from tests.unit.trainer.test_freezing import bert, spec


def tracker(**fields: Any) -> FreezingTracker:
    model = bert(layers=2)
    plan = freezing.build_plan(model, spec(**fields), 10)
    weights = [(n, p) for n, p in model.named_parameters() if n.endswith("weight")]
    return FreezingTracker(plan, weights)


def test_the_trainable_set_is_kept_until_the_schedule_releases_a_group() -> None:
    tracked = tracker(gradualUnfreezing={"every": 5, "unit": "steps"})
    first = tracked.trainable(0, 0)
    assert first.stage == ()
    assert tracked.trainable(0, 4) is first  # the same stage: nothing rebuilt
    released = tracked.trainable(0, 5)
    assert released.stage == ("block 1",)
    assert released.names == tracked.plan.trainable_at(0, 5)
    assert "bert.encoder.layer.1.output.dense.weight" in released.names
    assert "bert.encoder.layer.1.output.dense.weight" not in first.names


def test_l1_applies_to_the_penalised_parameters_that_train_now() -> None:
    tracked = tracker(headOnlyEpochs=1)
    head_only = tracked.trainable(0, 0).l1_parameters
    named = dict(tracked.l1_parameters)
    assert {id(p) for p in head_only} == {
        id(named[n]) for n in ("bert.pooler.dense.weight", "classifier.weight")
    }
    everything = tracked.trainable(1, 10).l1_parameters
    assert len(everything) == len(tracked.l1_parameters)


def test_the_log_gets_an_entry_per_change_with_its_peak_rates() -> None:
    tracked = tracker(headOnlyEpochs=1)
    log: list[dict[str, Any]] = []
    rates = {"head": 1e-3, "block 1": 5e-4}

    entry = tracked.note(log, 0, 0, rates)
    assert entry is not None
    assert entry["trainable"] == ["head"]
    assert entry["learningRates"] == {"head": 1e-3}
    assert entry["message"] == "epoch 1 trains head (0.001); frozen: embeddings, block 0, block 1"
    assert tracked.note(log, 0, 3, rates) is None  # nothing changed
    tracked.trainable(0, 3)
    assert not tracked.released_since_logged()

    tracked.trainable(1, 10)
    assert tracked.released_since_logged()
    entry = tracked.note(log, 1, 10, rates)
    assert entry is not None
    assert entry["frozen"] == []
    assert [e["epoch"] for e in log] == [1, 2]
    assert not tracked.released_since_logged()


def test_the_summary_names_each_group_with_its_rate_where_known() -> None:
    entry = {
        "epoch": 3,
        "trainable": ["block 1", "head"],
        "frozen": [],
        "learningRates": {"head": 0.002},
    }
    assert freezing_summary(entry) == "epoch 3 trains block 1, head (0.002); frozen: nothing"
