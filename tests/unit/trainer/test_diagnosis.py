"""Diagnosis: synthetic curves with known verdicts, exact evidence, and the status limits."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from kubetune_operator.api.v1alpha1 import Diagnosis as DiagnosisStatus
from kubetune_operator.api.v1alpha1 import FineTuneJob
from kubetune_trainer.config import (
    FreezingSpec,
    GradualUnfreezingSpec,
    LoraSpec,
    RegularizationSpec,
)
from kubetune_trainer.diagnosis import (
    DIVERGED_ADVICE,
    HEALTHY_ADVICE,
    MAX_EVIDENCE_CHARS,
    MAX_EVIDENCE_ITEMS,
    MAX_SUGGESTION_CHARS,
    REGULARIZE_MORE,
    Diagnosis,
    DivergenceMonitor,
    EvalPoint,
    RunSetup,
    diagnose,
)
from tests.conftest import load_example

STEPS_PER_EPOCH = 20


def falling_losses(
    steps: int = 100, start: float = 0.7, end: float = 0.1
) -> list[tuple[int, float]]:
    """A training loss falling in a straight line from `start` to `end` over `steps` steps."""
    return [(s, start + (end - start) * (s - 1) / (steps - 1)) for s in range(1, steps + 1)]


def evaluations(
    validation: dict[str, list[float]], training: dict[str, list[float]]
) -> list[EvalPoint]:
    """One evaluation per epoch, from per-metric series of equal length."""
    count = len(validation["loss"])
    return [
        EvalPoint(
            step=STEPS_PER_EPOCH * (i + 1),
            epoch=float(i + 1),
            metrics={name: values[i] for name, values in validation.items()},
            train_metrics={name: values[i] for name, values in training.items()},
        )
        for i in range(count)
    ]


def judge(
    evals: list[EvalPoint],
    metric: str = "accuracy",
    losses: list[tuple[int, float]] | None = None,
    **thresholds: Any,
) -> Diagnosis:
    settings: dict[str, Any] = {
        "setup": RunSetup(),
        "max_gap": None,
        "underfitting_floor": None,
        "majority_rate": None,
        "diverged": None,
    }
    settings.update(thresholds)
    return diagnose(falling_losses() if losses is None else losses, evals, metric, **settings)


def overfitting_run() -> list[EvalPoint]:
    """Validation loss bottoms out at step 60 and climbs while training loss keeps falling."""
    return evaluations(
        {"loss": [0.600, 0.450, 0.412, 0.440, 0.515], "accuracy": [0.70, 0.76, 0.80, 0.79, 0.78]},
        {"loss": [0.650, 0.500, 0.380, 0.200, 0.120], "accuracy": [0.68, 0.77, 0.85, 0.93, 0.97]},
    )


def wide_gap_run(final_train_accuracy: float = 0.99) -> list[EvalPoint]:
    """Validation loss keeps falling, but training accuracy runs far ahead of validation."""
    return evaluations(
        {"loss": [0.60, 0.50, 0.45, 0.42, 0.40], "accuracy": [0.70, 0.75, 0.78, 0.80, 0.81]},
        {
            "loss": [0.65, 0.45, 0.30, 0.15, 0.05],
            "accuracy": [0.75, 0.85, 0.93, 0.97, final_train_accuracy],
        },
    )


def steady_run(final_train_accuracy: float) -> list[EvalPoint]:
    """Both curves improve together; only the final training accuracy varies."""
    return evaluations(
        {"loss": [0.69, 0.67, 0.66], "accuracy": [0.58, 0.60, 0.61]},
        {"loss": [0.70, 0.68, 0.67], "accuracy": [0.57, 0.59, final_train_accuracy]},
    )


def test_validation_loss_turning_up_while_training_loss_falls_is_overfitting() -> None:
    result = judge(overfitting_run())

    assert result.verdict == "Overfitting"
    assert result.evidence[0] == (
        "validation loss rose from 0.412 (step 60) to 0.515 (step 100) "
        "while training loss fell from 0.380 to 0.120"
    )
    assert result.evidence[-1] == (
        "final validation metrics at step 100 (epoch 5): loss 0.515, accuracy 0.780"
    )
    assert "lowest at epoch 3 (step 60); set training.epochs to 3" in result.suggestion
    assert "evaluation.earlyStopping" in result.suggestion
    assert "regularization.weightDecay" in result.suggestion
    assert "freezing.freezeLayers" not in result.suggestion, "no gap evidence for capacity"


def test_validation_loss_rise_within_tolerance_is_noise() -> None:
    evals = evaluations(
        {"loss": [0.600, 0.450, 0.412, 0.440, 0.450], "accuracy": [0.70, 0.76, 0.80, 0.79, 0.79]},
        {"loss": [0.650, 0.500, 0.380, 0.200, 0.120], "accuracy": [0.68, 0.77, 0.82, 0.83, 0.84]},
    )

    result = judge(evals)

    assert result.verdict == "Healthy"
    assert "lowest validation loss 0.412 at step 60; final 0.450 at step 100" in result.evidence


def test_validation_loss_rising_with_training_loss_is_not_overfitting() -> None:
    evals = evaluations(
        {"loss": [0.600, 0.450, 0.412, 0.440, 0.515], "accuracy": [0.70, 0.76, 0.80, 0.79, 0.78]},
        {"loss": [0.650, 0.500, 0.380, 0.420, 0.480], "accuracy": [0.68, 0.77, 0.82, 0.81, 0.80]},
    )

    result = judge(evals)

    assert result.verdict != "Overfitting"
    assert not any("validation loss rose" in line for line in result.evidence)


@pytest.mark.parametrize(
    ("max_gap", "verdict", "evidence"),
    [
        (
            None,
            "Healthy",
            "training accuracy 0.990 vs validation 0.810 at step 100: a gap of 0.180",
        ),
        (
            0.2,
            "Healthy",
            "training accuracy 0.990 vs validation 0.810 at step 100: a gap of 0.180, "
            "within maxGeneralizationGap 0.200",
        ),
        (
            0.1,
            "Overfitting",
            "training accuracy 0.990 vs validation 0.810 at step 100: a gap of 0.180, "
            "more than maxGeneralizationGap 0.100",
        ),
    ],
)
def test_generalization_gap_counts_only_against_max_gap(
    max_gap: float | None, verdict: str, evidence: str
) -> None:
    result = judge(wide_gap_run(), max_gap=max_gap)

    assert result.verdict == verdict
    assert evidence in result.evidence


def test_gap_overfitting_suggests_regularization_and_capacity_not_stopping_earlier() -> None:
    result = judge(wide_gap_run(), max_gap=0.1)

    assert "regularization.weightDecay" in result.suggestion
    assert "freezing.freezeLayers" in result.suggestion
    assert "Stop earlier" not in result.suggestion


def test_both_overfitting_signals_combine_their_advice_once() -> None:
    result = judge(overfitting_run(), max_gap=0.1)

    assert result.evidence[:2] == [
        "validation loss rose from 0.412 (step 60) to 0.515 (step 100) "
        "while training loss fell from 0.380 to 0.120",
        "training accuracy 0.970 vs validation 0.780 at step 100: a gap of 0.190, "
        "more than maxGeneralizationGap 0.100",
    ]
    assert "Stop earlier" in result.suggestion
    assert "freezing.freezeLayers" in result.suggestion
    assert result.suggestion.count("regularization.weightDecay") == 1


def test_loss_gap_is_validation_minus_training() -> None:
    evals = evaluations({"loss": [0.6, 0.5]}, {"loss": [0.3, 0.1]})

    result = judge(evals, metric="loss", max_gap=0.2)

    assert result.verdict == "Overfitting"
    assert result.evidence[0] == (
        "training loss 0.100 vs validation 0.500 at step 40: a gap of 0.400, "
        "more than maxGeneralizationGap 0.200"
    )


def test_loss_lower_on_validation_than_training_is_no_gap() -> None:
    evals = evaluations({"loss": [0.3, 0.1]}, {"loss": [0.7, 0.5]})

    result = judge(evals, metric="loss", max_gap=0.2)

    assert result.verdict == "Healthy"
    assert "training loss 0.500 vs validation 0.100 at step 40: a gap of -0.400, " in (
        "\n".join(result.evidence)
    )


def test_accuracy_barely_above_the_majority_class_is_underfitting() -> None:
    result = judge(steady_run(0.61), majority_rate=0.6)

    assert result.verdict == "Underfitting"
    assert result.evidence[0] == (
        "final training accuracy 0.610 (step 60) is worse than 0.620 "
        "(the majority-class rate 0.600 plus 0.020)"
    )
    assert "training.learningRate" in result.suggestion
    assert "training.epochs" in result.suggestion


def test_accuracy_clearing_the_majority_margin_is_healthy() -> None:
    assert judge(steady_run(0.63), majority_rate=0.6).verdict == "Healthy"


def test_majority_rate_sets_no_floor_for_other_metrics() -> None:
    evals = evaluations(
        {"loss": [0.69, 0.67, 0.66], "f1Macro": [0.40, 0.42, 0.43]},
        {"loss": [0.70, 0.68, 0.67], "f1Macro": [0.39, 0.41, 0.42]},
    )

    assert judge(evals, metric="f1Macro", majority_rate=0.6).verdict == "Healthy"


def test_underfitting_floor_wins_over_the_majority_rate() -> None:
    result = judge(steady_run(0.65), majority_rate=0.6, underfitting_floor=0.7)

    assert result.verdict == "Underfitting"
    assert result.evidence[0] == (
        "final training accuracy 0.650 (step 60) is worse than underfittingFloor 0.700"
    )


@pytest.mark.parametrize(("final_loss", "verdict"), [(0.45, "Underfitting"), (0.20, "Healthy")])
def test_loss_floor_is_a_ceiling(final_loss: float, verdict: str) -> None:
    evals = evaluations({"loss": [0.9, 0.7, 0.5]}, {"loss": [0.8, 0.6, final_loss]})

    assert judge(evals, metric="loss", underfitting_floor=0.3).verdict == verdict


def test_flat_training_loss_is_underfitting() -> None:
    flat = [(s, 0.7 - 0.0002 * s) for s in range(1, 101)]

    result = judge(steady_run(0.61), losses=flat, setup=RunSetup(FreezingSpec(freeze_layers=3)))

    assert result.verdict == "Underfitting"
    assert result.evidence[0] == (
        "training loss fell by less than 5%: mean 0.699 over steps 1-10, 0.681 over steps 91-100"
    )
    assert result.suggestion == (
        "Raise training.learningRate (e.g. 3x). "
        "Train more of the model: lower freezing.freezeLayers (now 3)."
    )


def test_overfitting_wins_over_underfitting() -> None:
    result = judge(wide_gap_run(), max_gap=0.1, underfitting_floor=0.995)

    assert result.verdict == "Overfitting"
    assert not any("underfittingFloor" in line for line in result.evidence)


# Advice names only what the run's config can change


def one_short_epoch() -> tuple[list[tuple[int, float]], list[EvalPoint]]:
    """One epoch of 510 training rows (600 less a 15% validation split) in batches of 16:
    32 steps whose loss barely moves, and a training accuracy below the 0.55 majority."""
    losses = [(step, 0.693 - 0.0002 * (step - 1)) for step in range(1, 33)]
    evals = [
        EvalPoint(
            step=32,
            epoch=1.0,
            metrics={"loss": 0.688, "accuracy": 0.544},
            train_metrics={"loss": 0.690, "accuracy": 0.541},
        )
    ]
    return losses, evals


def judge_one_short_epoch(setup: RunSetup) -> Diagnosis:
    losses, evals = one_short_epoch()
    return judge(evals, losses=losses, majority_rate=0.55, setup=setup)


def test_underfitting_with_nothing_frozen_does_not_advise_unfreezing() -> None:
    result = judge_one_short_epoch(RunSetup())

    assert result.verdict == "Underfitting"
    assert result.evidence[:2] == [
        "final training accuracy 0.541 (step 32) is worse than 0.570 "
        "(the majority-class rate 0.550 plus 0.020)",
        "training loss fell by less than 5%: mean 0.693 over steps 1-5, 0.687 over steps 28-32",
    ]
    assert result.suggestion == (
        "Raise training.learningRate (e.g. 3x). Train more epochs (training.epochs). "
        "Regularize less: lower regularization.weightDecay (now 0.01)."
    )
    assert "freezing" not in result.suggestion


def test_underfitting_names_exactly_what_was_frozen() -> None:
    frozen = FreezingSpec(freeze_layers=4, head_only_epochs=1, frozen_modules=["*.bias"])

    result = judge_one_short_epoch(RunSetup(frozen))

    assert result.suggestion == (
        "Raise training.learningRate (e.g. 3x). Train more epochs (training.epochs). "
        "Train more of the model: lower freezing.freezeLayers (now 4), lower "
        "freezing.headOnlyEpochs (now 1) or remove patterns from freezing.frozenModules. "
        "Regularize less: lower regularization.weightDecay (now 0.01)."
    )
    assert "gradualUnfreezing" not in result.suggestion
    assert "freezeEmbeddings" not in result.suggestion


@pytest.mark.parametrize(
    ("gradual", "advice"),
    [
        (
            GradualUnfreezingSpec(every=1, groups_per_step=2),
            "unfreeze faster (freezing.gradualUnfreezing: a higher groupsPerStep (now 2))",
        ),
        (
            GradualUnfreezingSpec(every=50, unit="steps"),
            "unfreeze faster (freezing.gradualUnfreezing: a lower every (now 50 steps) "
            "or a higher groupsPerStep (now 1))",
        ),
    ],
)
def test_gradual_unfreezing_is_advised_only_where_it_can_go_faster(
    gradual: GradualUnfreezingSpec, advice: str
) -> None:
    result = judge_one_short_epoch(RunSetup(FreezingSpec(gradual_unfreezing=gradual)))

    assert f"Train more of the model: {advice}." in result.suggestion
    assert "freezeLayers" not in result.suggestion
    assert "headOnlyEpochs" not in result.suggestion


def test_underfitting_with_lora_advises_a_higher_rank() -> None:
    result = judge_one_short_epoch(RunSetup(lora=LoraSpec(rank=4)))

    assert (
        "Train more of the model: raise training.lora.rank (now 4) or leave out training.lora."
        in result.suggestion
    )
    assert "freezing" not in result.suggestion


def test_underfitting_under_max_steps_advises_more_steps() -> None:
    result = judge_one_short_epoch(RunSetup(max_steps=32))

    assert "Train longer: raise training.maxSteps (now 32) and training.epochs." in (
        result.suggestion
    )
    assert "Train more epochs" not in result.suggestion


@pytest.mark.parametrize(
    ("regularization", "advice"),
    [
        (RegularizationSpec(weight_decay=0.0), None),
        (
            RegularizationSpec(dropout=0.2, label_smoothing=0.1),
            "Regularize less: lower regularization.weightDecay (now 0.01), "
            "regularization.dropout (now 0.2) and regularization.labelSmoothing (now 0.1).",
        ),
    ],
)
def test_regularize_less_names_only_the_regularizers_in_use(
    regularization: RegularizationSpec, advice: str | None
) -> None:
    result = judge_one_short_epoch(RunSetup(regularization=regularization))

    if advice is None:
        assert "Regularize less" not in result.suggestion
    else:
        assert advice in result.suggestion
    assert "regularization.l1" not in result.suggestion


def test_overfitting_with_lora_advises_a_lower_rank_not_adding_lora() -> None:
    result = judge(wide_gap_run(), max_gap=0.1, setup=RunSetup(lora=LoraSpec(rank=16)))

    assert (
        "Train fewer parameters or see more examples: freeze more layers "
        "(freezing.freezeLayers) or lower training.lora.rank (now 16), and add or augment "
        "training data."
    ) in result.suggestion
    assert "train LoRA adapters" not in result.suggestion


def setup_of(example: str) -> RunSetup:
    job = FineTuneJob.model_validate(load_example(example))
    return RunSetup.of(job.spec.training_config())


def test_setup_of_a_manifest_carries_its_freezing_and_regularization() -> None:
    result = judge_one_short_epoch(setup_of("sentiment/every-section.yaml"))

    assert result.suggestion == (
        "Raise training.learningRate (e.g. 3x). Train more epochs (training.epochs). "
        "Train more of the model: lower freezing.freezeLayers (now 2), lower "
        "freezing.headOnlyEpochs (now 1), unfreeze faster (freezing.gradualUnfreezing: "
        "a higher groupsPerStep (now 2)) or set freezing.freezeEmbeddings to false. "
        "Regularize less: lower regularization.weightDecay (now 0.01), regularization.l1 "
        "(now 1e-06), regularization.dropout (now 0.15), regularization.attentionDropout "
        "(now 0.1) and regularization.labelSmoothing (now 0.05)."
    )
    assert "freezing" not in judge_one_short_epoch(setup_of("sentiment/job.yaml")).suggestion


# A perfect validation score is flagged, whatever the verdict

PERFECT_SCORE_ADVICE = (
    "Check the data before trusting a perfect validation score: it usually means leakage "
    "between the splits (the data.quality leakage rule drops only training rows whose "
    "normalised text equals a validation row's, not near-copies), labels that can be read "
    "off the text, or a task too easy to need the model."
)


def perfect_run(metric: str = "accuracy", final: float = 1.0) -> list[EvalPoint]:
    """Both curves improve together up to `final` validation `metric` at step 60."""
    return evaluations(
        {"loss": [0.30, 0.08, 0.02], metric: [0.95, 0.99, final]},
        {"loss": [0.35, 0.10, 0.03], metric: [0.93, 0.98, 1.0]},
    )


def test_perfect_validation_accuracy_is_healthy_but_flagged() -> None:
    result = judge(perfect_run())

    assert result.verdict == "Healthy"
    assert result.evidence == [
        "perfect validation accuracy: 1.000 at step 60 (epoch 3); the best possible is 1.000",
        "final validation metrics at step 60 (epoch 3): loss 0.020, accuracy 1.000",
        "training accuracy 1.000 vs validation 1.000 at step 60: a gap of 0.000",
        "lowest validation loss 0.020 at step 60; final 0.020 at step 60",
    ]
    assert result.suggestion == PERFECT_SCORE_ADVICE
    assert "No change needed" not in result.suggestion


@pytest.mark.parametrize(
    ("metric", "validation", "evidence"),
    [
        ("f1Macro", [0.91, 1.0], "perfect validation f1Macro: 1.000 at step 40 (epoch 2)"),
        ("rocAuc", [0.97, 0.9996], "perfect validation rocAuc: 1.000 at step 40 (epoch 2)"),
        ("loss", [0.05, 0.0003], "perfect validation loss: 0.0003 at step 40 (epoch 2); "),
        ("perplexity", [1.2, 1.0002], "perfect validation perplexity: 1.000 at step 40"),
    ],
)
def test_any_primary_metric_at_its_best_possible_value_is_flagged(
    metric: str, validation: list[float], evidence: str
) -> None:
    losses = {"loss": [0.05, 0.0003] if metric == "loss" else [0.05, 0.0002]}
    evals = evaluations({**losses, metric: validation}, {"loss": [0.06, 0.001]})

    result = judge(evals, metric=metric)

    assert result.evidence[0].startswith(evidence)
    assert result.suggestion == PERFECT_SCORE_ADVICE


@pytest.mark.parametrize(("metric", "final"), [("accuracy", 0.999), ("loss", 0.002)])
def test_a_near_perfect_score_is_not_flagged(metric: str, final: float) -> None:
    # Neither still improving (by 2% or more) nor a fall of accuracy while the loss falls.
    evals = evaluations(
        {
            "loss": [0.00202, 0.002] if metric == "loss" else [0.05, 0.01],
            "accuracy": [0.98, final if metric == "accuracy" else 0.99],
        },
        {"loss": [0.06, 0.003], "accuracy": [0.97, 0.999]},
    )

    result = judge(evals, metric=metric)

    assert result.verdict == "Healthy"
    assert result.suggestion.startswith("No change needed.")
    assert not any("perfect" in line for line in result.evidence)


def test_a_perfect_score_leads_the_advice_of_another_verdict() -> None:
    evals = evaluations(
        {"loss": [0.600, 0.450, 0.412, 0.440, 0.515], "accuracy": [0.90, 0.98, 1.0, 1.0, 1.0]},
        {"loss": [0.650, 0.500, 0.380, 0.200, 0.120], "accuracy": [0.88, 0.97, 1.0, 1.0, 1.0]},
    )

    result = judge(evals)

    assert result.verdict == "Overfitting"
    assert result.evidence[0].startswith("perfect validation accuracy: 1.000 at step 60")
    assert result.evidence[1].startswith("validation loss rose from 0.412 (step 60)")
    assert result.suggestion.startswith(PERFECT_SCORE_ADVICE + " Stop earlier:")


def test_a_perfect_score_with_leakage_kept_says_so() -> None:
    result = judge(perfect_run(), setup=RunSetup(leakage_mode="warn"))

    assert "(data.quality.leakage.mode is warn, which keeps training rows that repeat " in (
        result.suggestion
    )
    assert "validation rows: set it to drop)" in result.suggestion


def test_a_diverged_run_is_not_flagged_for_an_earlier_perfect_score() -> None:
    losses = [(1, 0.3), (2, math.nan)]

    result = judge(perfect_run(), losses=losses, diverged="training loss was nan at step 2")

    assert result.verdict == "Diverged"
    assert result.suggestion == DIVERGED_ADVICE


def test_divergence_wins_over_everything_and_names_the_last_good_loss() -> None:
    losses = [(1, 0.70), (2, 0.50), (3, 0.55), (4, math.nan)]

    result = judge(
        overfitting_run(), losses=losses, max_gap=0.01, diverged="training loss was nan at step 4"
    )

    assert result.verdict == "Diverged"
    assert result.evidence == [
        "training loss was nan at step 4",
        "last finite training loss 0.550 at step 3 (lowest 0.500 at step 2)",
    ]
    assert "training.learningRate 10x" in result.suggestion
    assert "warmupRatio" in result.suggestion
    assert "maxGradNorm" in result.suggestion


def test_divergence_before_any_evaluation_is_still_diverged() -> None:
    result = judge([], losses=[(1, math.inf)], diverged="training loss was inf at step 1")

    assert result.verdict == "Diverged"
    assert result.evidence[1] == "no finite training loss was recorded"


def test_no_evaluation_is_inconclusive() -> None:
    result = judge([], losses=falling_losses(50))

    assert result.verdict == "Inconclusive"
    assert result.evidence == [
        "no evaluation was recorded (50 training losses), so there is no validation curve to judge"
    ]


def test_one_evaluation_and_few_losses_is_inconclusive() -> None:
    result = judge(steady_run(0.7)[:1], losses=falling_losses(9))

    assert result.verdict == "Inconclusive"
    assert result.evidence == [
        "only 1 evaluation and 9 training losses were recorded; "
        "a trend needs 2 evaluations or 10 training losses"
    ]


def test_one_evaluation_and_enough_losses_is_judged() -> None:
    assert judge(steady_run(0.7)[:1], losses=falling_losses(10)).verdict == "Healthy"


def test_healthy_evidence_summarises_final_metrics_gap_and_best_loss() -> None:
    result = judge(steady_run(0.62))

    assert result.evidence == [
        "final validation metrics at step 60 (epoch 3): loss 0.660, accuracy 0.610",
        "training accuracy 0.620 vs validation 0.610 at step 60: a gap of 0.010",
        "lowest validation loss 0.660 at step 60; final 0.660 at step 60",
    ]


def test_evaluation_without_training_metrics_is_judged_without_them() -> None:
    evals = overfitting_run()
    evals[-1] = EvalPoint(evals[-1].step, evals[-1].epoch, evals[-1].metrics, {})

    result = judge(evals, max_gap=0.1)

    assert result.verdict == "Healthy"
    assert (
        "no training accuracy was recorded, so the generalization gap was not measured"
        in result.evidence
    )


def noisy_healthy_losses(steps: int = 1000) -> list[tuple[int, float]]:
    """A decaying loss with multiplicative noise and isolated spikes above 4x its start."""
    rng = random.Random(7)
    return [
        (
            step,
            3.5
            if step % 97 == 0
            else (0.3 + 0.4 * math.exp(-step / 150)) * rng.lognormvariate(0, 0.3),
        )
        for step in range(1, steps + 1)
    ]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_monitor_stops_at_the_first_non_finite_loss(bad: float) -> None:
    monitor = DivergenceMonitor(factor=4.0)

    reasons = [monitor.update(step, 0.7) for step in range(1, 7)]
    reason = monitor.update(7, bad)

    assert reasons == [None] * 6
    assert reason == f"training loss was {bad} at step 7"
    assert monitor.update(8, 0.5) == reason, "a diverged run stays diverged"


def test_monitor_detects_a_blow_up_of_the_smoothed_loss_at_the_exact_step() -> None:
    monitor = DivergenceMonitor(factor=4.0, window=10)
    losses = [(step, 1.0) for step in range(1, 11)] + [(step, 10.0) for step in range(11, 21)]

    reasons = {step: monitor.update(step, loss) for step, loss in losses}

    assert next(step for step, reason in reasons.items() if reason) == 14
    assert reasons[14] == (
        "smoothed training loss 4.600 (mean of the last 10) at step 14 "
        "is above 4 x its starting value 1.000"
    )


def test_monitor_writes_huge_losses_in_scientific_notation() -> None:
    monitor = DivergenceMonitor(factor=4.0, window=2)
    monitor.update(1, 1.0)
    monitor.update(2, 1.0)

    assert monitor.update(3, 2e9) == (
        "smoothed training loss 1e+09 (mean of the last 2) at step 3 "
        "is above 4 x its starting value 1.000"
    )


def test_noisy_but_healthy_curve_raises_no_alarm() -> None:
    losses = noisy_healthy_losses()
    monitor = DivergenceMonitor(factor=4.0)
    start = statistics.fmean(loss for _, loss in losses[:10])
    assert max(loss for _, loss in losses) > 4 * start, "the spikes alone would cross the factor"

    assert [step for step, loss in losses if monitor.update(step, loss)] == []
    evals = evaluations(
        {"loss": [0.62, 0.50, 0.44, 0.41, 0.40], "accuracy": [0.70, 0.76, 0.79, 0.81, 0.82]},
        {"loss": [0.60, 0.48, 0.41, 0.38, 0.36], "accuracy": [0.71, 0.78, 0.81, 0.83, 0.84]},
    )
    assert judge(evals, losses=losses, max_gap=0.1, majority_rate=0.5).verdict == "Healthy"


def every_verdict() -> list[Diagnosis]:
    return [
        judge(overfitting_run()),
        judge(steady_run(0.61), majority_rate=0.6),
        judge(steady_run(0.7)),
        judge(perfect_run()),
        judge([], losses=[(1, math.nan)], diverged="training loss was nan at step 1"),
        judge([]),
    ]


@pytest.mark.parametrize("result", every_verdict(), ids=lambda result: result.verdict)
def test_status_validates_against_the_operator_model(result: Diagnosis) -> None:
    status = DiagnosisStatus.model_validate(result.to_status(), by_name=False)

    assert status.verdict == result.verdict
    assert status.evidence == result.evidence
    assert status.suggestion == result.suggestion


def test_status_of_a_long_run_with_many_metrics_respects_the_limits() -> None:
    names = [f"perClassRecallOfAVeryLongLabelName{i}" for i in range(60)]
    evals = [
        EvalPoint(
            step=10 * i,
            epoch=i / 100,
            metrics={"loss": 1 / i, **dict.fromkeys(names, 0.5)},
            train_metrics={"loss": 1 / i, "accuracy": 0.9},
        )
        for i in range(1, 10_001)
    ]

    status = judge(evals, losses=falling_losses(100_000)).to_status()

    DiagnosisStatus.model_validate(status, by_name=False)
    assert status["verdict"] == "Healthy"
    assert len(status["evidence"][0]) == MAX_EVIDENCE_CHARS
    assert status["evidence"][0].endswith("…")


def test_status_clips_oversized_evidence_and_suggestion() -> None:
    result = Diagnosis("Overfitting", ["x" * 5000] * 100, "y" * 10_000)

    status = result.to_status()

    DiagnosisStatus.model_validate(status, by_name=False)
    assert len(status["evidence"]) == MAX_EVIDENCE_ITEMS
    assert {len(line) for line in status["evidence"]} == {MAX_EVIDENCE_CHARS}
    assert len(status["suggestion"]) == MAX_SUGGESTION_CHARS


def test_monitor_catches_a_blow_up_that_starts_at_the_second_step() -> None:
    # AdamW at learning rate 1.0 on the tiny BERT: the loss explodes from the second step,
    # so an average over a first window would already hold the explosion.
    monitor = DivergenceMonitor(factor=4.0, window=10)
    reasons = [monitor.update(step, loss) for step, loss in enumerate([0.69, 4.53, 6.7], 1)]
    assert reasons[:2] == [None, None]
    assert reasons[2] == (
        "smoothed training loss 3.973 (mean of the last 3) at step 3 "
        "is above 4 x its starting value 0.690"
    )


def preference_run(
    validation_margins: list[float], training_margins: list[float]
) -> list[EvalPoint]:
    """A dpo run whose DPO loss falls on both splits; only the reward margins vary."""
    count = len(validation_margins)
    falling = [0.69 - 0.05 * i for i in range(count)]
    return evaluations(
        {"loss": falling, "rewardMargin": validation_margins},
        {"loss": falling, "rewardMargin": training_margins},
    )


def test_a_validation_reward_margin_that_stops_growing_while_training_grows_is_overfitting() -> (
    None
):
    evals = preference_run([0.2, 0.6, 0.9, 0.85, 0.8], [0.2, 0.7, 1.2, 2.0, 3.1])
    result = judge(evals, "loss", setup=RunSetup(preference_beta=0.1))
    assert result.verdict == "Overfitting"
    assert result.evidence[0] == (
        "validation reward margin stopped growing: highest 0.900 at step 60, 0.800 at step "
        "100, while the training reward margin grew from 1.200 to 3.100"
    )
    assert "the validation reward margin was highest at epoch 3 (step 60)" in result.suggestion
    assert "evaluation.metric rewardMargin" in result.suggestion
    assert "raise training.preference.beta (now 0.1, e.g. 2x)" in result.suggestion


@pytest.mark.parametrize(
    ("validation", "training"),
    [
        ([0.2, 0.6, 0.9, 1.1, 1.3], [0.2, 0.7, 1.2, 2.0, 3.1]),  # both still growing
        ([0.2, 0.6, 0.9, 0.85, 0.8], [0.2, 0.7, 1.2, 1.25, 1.3]),  # training stalled too
    ],
    ids=["growing", "both-stalled"],
)
def test_reward_margins_growing_or_stalling_together_are_not_overfitting(
    validation: list[float], training: list[float]
) -> None:
    result = judge(
        preference_run(validation, training), "loss", setup=RunSetup(preference_beta=0.1)
    )
    assert result.verdict != "Overfitting"


# --- causal LMs, generation metrics, runs still improving --------------------------------


def language_model_run(rouge: list[float]) -> list[EvalPoint]:
    """A causal LM whose validation loss falls at every evaluation, with a generation metric."""
    return evaluations(
        {"loss": [2.10, 1.80, 1.62, 1.55], "perplexity": [8.17, 6.05, 5.05, 4.71], "rougeL": rouge},
        {"loss": [2.05, 1.70, 1.45, 1.30], "perplexity": [7.77, 5.47, 4.26, 3.67]},
    )


def test_a_generation_metric_that_falls_while_the_loss_falls_is_overfitting() -> None:
    result = judge(language_model_run([0.31, 0.42, 0.40, 0.36]), metric="loss")

    assert result.verdict == "Overfitting"
    assert result.evidence[0] == (
        "validation rougeL fell from 0.420 (step 40) to 0.360 (step 80) while validation "
        "loss fell from 1.800 to 1.550"
    )
    assert result.suggestion.startswith(  # rougeL can drive early stopping (evaluation.generation)
        "Stop earlier: validation rougeL was highest at epoch 2 (step 40); set "
        "training.epochs to 2, or enable evaluation.earlyStopping with evaluation.metric rougeL."
    )
    assert REGULARIZE_MORE in result.suggestion


def test_a_generation_metric_within_noise_or_rising_is_healthy() -> None:
    for rouge in ([0.31, 0.42, 0.41, 0.405], [0.31, 0.36, 0.40, 0.42]):
        assert judge(language_model_run(rouge), metric="loss").verdict == "Healthy"


def test_a_classifier_metric_falling_while_the_loss_falls_names_early_stopping() -> None:
    evals = evaluations(
        {"loss": [0.60, 0.50, 0.45], "f1Macro": [0.70, 0.80, 0.70]},
        {"loss": [0.55, 0.45, 0.40], "f1Macro": [0.72, 0.82, 0.88]},
    )

    result = judge(evals, metric="loss")

    assert result.verdict == "Overfitting"
    assert "evaluation.earlyStopping with evaluation.metric f1Macro" in result.suggestion


def test_a_language_models_loss_gap_is_judged_on_the_training_sample() -> None:
    evals = language_model_run([0.31, 0.36, 0.40, 0.42])

    result = judge(evals, metric="loss", max_gap=0.2)

    assert result.verdict == "Overfitting"
    assert result.evidence[0] == (
        "training loss 1.300 vs validation 1.550 at step 80: a gap of 0.250, more than "
        "maxGeneralizationGap 0.200"
    )
    assert (
        judge(evals, metric="perplexity", max_gap=1.0)
        .evidence[0]
        .startswith("training perplexity 3.670 vs validation 4.710 at step 80: a gap of 1.040")
    )


def test_a_run_still_improving_at_its_last_evaluation_is_told_more_epochs_may_help() -> None:
    evals = evaluations(
        {"loss": [0.60, 0.50, 0.42], "accuracy": [0.70, 0.76, 0.81]},
        {"loss": [0.58, 0.48, 0.40], "accuracy": [0.71, 0.77, 0.82]},
    )

    result = judge(evals)

    assert result.verdict == "Healthy"
    assert result.evidence[-1] == (
        "validation accuracy was still improving at the last evaluation: 0.810 at step 60, "
        "best before 0.760 at step 40"
    )
    assert result.suggestion == (
        "More epochs may help: the validation accuracy was still improving. "
        "Train more epochs (training.epochs)."
    )
    capped = judge(evals, setup=RunSetup(max_steps=60))
    assert "raise training.maxSteps (now 60)" in capped.suggestion


def test_a_run_whose_metric_levelled_off_needs_no_change() -> None:
    evals = evaluations(
        {"loss": [0.60, 0.50, 0.495], "accuracy": [0.70, 0.80, 0.81]},
        {"loss": [0.58, 0.48, 0.47], "accuracy": [0.71, 0.81, 0.82]},
    )

    for metric in ("accuracy", "loss"):
        result = judge(evals, metric=metric)
        assert result.verdict == "Healthy"
        assert result.suggestion == HEALTHY_ADVICE
