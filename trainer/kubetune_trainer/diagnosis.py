"""Over/underfitting and divergence verdicts from the training and validation curves.

A fine-tune that finishes is not necessarily a good one: the validation loss may have
turned up epochs ago, the model may do no better than predicting the majority class, or
the loss may have blown up. People read the job's status and report, not the pod logs, so
this module turns the recorded curves into a verdict, the observations behind it (with
their numbers and steps) and what to change in the manifest. The advice names only what
the run's config can change (`RunSetup`): "unfreeze" only when something was frozen,
"lower the label smoothing" only when there is some. A perfect validation score is judged
like any other, but flagged: it is far more often a flaw of the data than a perfect model.

The rules read the metrics by their direction, not by their task: a causal LM is judged on
its loss or perplexity like a classifier on its loss, and any higher-is-better validation
metric (accuracy, or a generated answer's exactMatch, tokenF1, rougeL) that fell while the
validation loss went on falling is overfitting: the model fits the tokens better and
answers worse. The training side of every gap is the metrics of a fixed sample of training
rows scored like the validation rows (training/loaders.py), so the gap does not depend on
how often the run evaluates. A healthy run whose primary metric was still improving at its
last evaluation is told that more epochs may help.

`DivergenceMonitor` watches the training loss step by step on rank 0, so that a diverged
run stops at once instead of burning GPU hours; `diagnose` judges the whole run at its end.
Both are pure Python: they run the same in the trainer, in tests and on saved curves.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from kubetune_trainer.config import (
    FreezingSpec,
    GradualUnfreezingSpec,
    LoraSpec,
    MetricName,
    RegularizationSpec,
    TrainingConfig,
    metric_direction,
)

# Overfitting: the validation loss must have risen this fraction above its minimum since
# its best evaluation; smaller rises are taken as evaluation noise.
VALIDATION_RISE_TOLERANCE = 0.10
# Overfitting of a preference run: since the validation reward margin peaked, the
# training reward margin must have grown by this fraction of its value at the peak.
MARGIN_GROWTH_TOLERANCE = 0.10
REWARD_MARGIN = "rewardMargin"
"""A dpo run's mean chosen-minus-rejected reward (training/preference_loss.py)."""
UNRANKED_METRICS = frozenset({"chosenReward", "rejectedReward", REWARD_MARGIN})
"""Validation metrics that are not simply better when higher (a preference run's rewards:
the margin has a rule of its own)."""
QUALITY_FALL_TOLERANCE = 0.05
"""Overfitting while the loss falls: a higher-is-better validation metric must have fallen
this fraction below its highest value; smaller falls are taken as evaluation noise."""
STILL_IMPROVING_TOLERANCE = 0.02
"""A primary metric whose last evaluation beat every earlier one by more than this fraction
was still improving when the run ended."""
# Underfitting: a training loss whose last window is less than this fraction below its
# first window is flat.
FLAT_LOSS_TOLERANCE = 0.05
# The windows compared for a flat training loss: this fraction of the logged losses...
LOSS_WINDOW_FRACTION = 0.1
# ...but at least this many, so that single noisy steps do not decide.
LOSS_WINDOW_MIN = 5
# With a single evaluation, the training curve alone must have two full windows.
MIN_TRAIN_LOSSES = 2 * LOSS_WINDOW_MIN
# Underfitting for accuracy without underfittingFloor: the final training accuracy must
# beat the majority-class rate by this much (absolute), or the model learnt little more
# than the class prior.
MAJORITY_MARGIN = 0.02
# Diverged: the factor by which to lower the learning rate.
MIN_SMOOTHED_LOSSES = 3
"""Losses averaged before a blow-up can be called: one bad batch is not a divergence."""
DIVERGED_LR_REDUCTION = 10
PERFECT_TOLERANCE = 5e-4
"""A validation value this close to its metric's best possible value (it prints as that
value at three decimals) is a perfect score."""
BEST_POSSIBLE: dict[str, float] = {"loss": 0.0, "perplexity": 1.0}
"""The best possible value of the metrics whose best is not 1.0 (accuracy, F1, ROC AUC)."""
# The limits of the status model (kubetune_operator.api.v1alpha1.Diagnosis).
MAX_EVIDENCE_ITEMS = 32
MAX_EVIDENCE_CHARS = 1024
MAX_SUGGESTION_CHARS = 2048

Verdict = Literal["Healthy", "Overfitting", "Underfitting", "Diverged", "Inconclusive"]

DIVERGED_ADVICE = (
    f"Lower training.learningRate {DIVERGED_LR_REDUCTION}x, warm it up "
    "(training.warmupRatio 0.06) and clip gradients (regularization.maxGradNorm 1.0). "
    "Under fp16, bf16 or fp32 (training.precision) avoids overflow."
)
INCONCLUSIVE_ADVICE = (
    "Train longer or evaluate more often (evaluation.strategy steps with "
    "evaluation.everySteps), so that the curves have enough points to judge."
)
HEALTHY_ADVICE = "No change needed. For more, search the learning rate and epochs (spec.search)."
STILL_IMPROVING_ADVICE = "More epochs may help: the validation {metric} was still improving."
REGULARIZE_MORE = (
    "Regularize more: raise regularization.weightDecay (e.g. 0.01 to 0.1), "
    "regularization.dropout or regularization.labelSmoothing (e.g. 0.1)."
)
SHRINK_CAPACITY = (
    "Train fewer parameters or see more examples: freeze more layers "
    "(freezing.freezeLayers) or train LoRA adapters (training.lora), and add or augment "
    "training data."
)
LEARN_FASTER = "Raise training.learningRate (e.g. 3x)."
TRAIN_LONGER = "Train more epochs (training.epochs)."


@dataclass(frozen=True)
class RunSetup:
    """What the run's config set that the advice may tell to change.

    Advice that names a setting the run did not use sends people to the wrong field (lower
    freezing.freezeLayers when nothing was frozen), so each remedy is offered only where
    it applies. The defaults are a TrainingConfig's, so tests and saved curves give only
    what they vary.
    """

    freezing: FreezingSpec = field(default_factory=FreezingSpec)
    regularization: RegularizationSpec = field(default_factory=RegularizationSpec)
    lora: LoraSpec | None = None
    max_steps: int | None = None
    """training.maxSteps: the run may have ended there, before training.epochs."""
    leakage_mode: str = "drop"
    """data.quality.leakage.mode: warn keeps training rows that repeat validation rows."""
    preference_beta: float | None = None
    """training.preference.beta of a dpo run (None for sft): raising it holds the policy
    nearer the reference, the preference loss's own regularizer."""

    @classmethod
    def of(cls, config: TrainingConfig) -> RunSetup:
        """The setup of the run that `config` describes."""
        return cls(
            freezing=config.freezing,
            regularization=config.regularization,
            lora=config.training.lora,
            max_steps=config.training.max_steps,
            leakage_mode=config.data.quality.leakage.mode,
            preference_beta=config.training.preference.beta
            if config.training.objective == "dpo"
            else None,
        )


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation: the validation metrics and the training metrics since the last one."""

    step: int
    epoch: float
    metrics: dict[str, float]
    train_metrics: dict[str, float]


@dataclass(frozen=True)
class Diagnosis:
    """A verdict on the curves, the observations behind it, and what to try next."""

    verdict: Verdict
    evidence: list[str]
    suggestion: str

    def to_status(self) -> dict[str, Any]:
        """The job's `status.diagnosis`, clipped to the limits of the status model."""
        evidence = self.evidence[:MAX_EVIDENCE_ITEMS]
        return {
            "verdict": self.verdict,
            "evidence": [_clip(line, MAX_EVIDENCE_CHARS) for line in evidence],
            "suggestion": _clip(self.suggestion, MAX_SUGGESTION_CHARS),
        }


class DivergenceMonitor:
    """Watches the training loss, step by step, for divergence.

    A NaN or infinite loss diverges at once. Otherwise the moving average of the last
    `window` losses (from the third loss on) is compared with the first logged loss, the
    loss of the barely-trained model: above `factor` times that, the run has diverged.
    The reference is the very first loss because a blow-up often starts at the second
    step, and an average over the first window would already contain it; the moving
    average keeps single noisy batches from stopping a healthy run.
    """

    def __init__(self, factor: float, window: int = 10) -> None:
        self.factor = factor
        self.window = window
        self._recent: deque[float] = deque(maxlen=window)
        self._start: float | None = None
        self._reason: str | None = None

    def update(self, step: int, loss: float) -> str | None:
        """Record the loss of `step`: the reason once the run has diverged (from then on)."""
        if self._reason is None:
            self._reason = self._check(step, loss)
        return self._reason

    def _check(self, step: int, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"training loss was {loss} at step {step}"
        self._recent.append(loss)
        if self._start is None:
            self._start = loss
        if len(self._recent) < min(MIN_SMOOTHED_LOSSES, self.window):
            return None
        smoothed = statistics.fmean(self._recent)
        if smoothed <= self.factor * self._start:
            return None
        return (
            f"smoothed training loss {_number(smoothed)} (mean of the last "
            f"{len(self._recent)}) at step {step} is above {self.factor:g} x its starting "
            f"value {_number(self._start)}"
        )


@dataclass(frozen=True)
class _Finding:
    """One observation behind a verdict and the advice that it supports."""

    evidence: str
    advice: tuple[str, ...]


def diagnose(
    train_losses: Sequence[tuple[int, float]],
    evals: Sequence[EvalPoint],
    primary_metric: str,
    *,
    setup: RunSetup,
    max_gap: float | None,
    underfitting_floor: float | None,
    majority_rate: float | None,
    diverged: str | None,
) -> Diagnosis:
    """Judge a run from its curves; Diverged wins over Overfitting over Underfitting.

    `train_losses` are (optimizer step, loss) pairs in step order; `diverged` is the
    reason a `DivergenceMonitor` gave, if it stopped the run; `majority_rate` is the share
    of the most common class in the training data (sets the floor for accuracy when
    `underfitting_floor` is left out); `setup` is what the run's config set, so that the
    advice names only remedies that apply to it. A perfect validation score of the primary
    metric keeps its verdict but leads the evidence and the advice with a warning.
    """
    if diverged is not None:
        return _diverged(diverged, train_losses)
    floor = _floor(primary_metric, underfitting_floor, majority_rate)
    judged = _judge(train_losses, evals, primary_metric, setup, max_gap, floor)
    perfect = _perfect_evaluation(evals, primary_metric)
    return judged if perfect is None else _suspicious(judged, perfect, primary_metric, setup)


def _judge(
    train_losses: Sequence[tuple[int, float]],
    evals: Sequence[EvalPoint],
    metric: str,
    setup: RunSetup,
    max_gap: float | None,
    floor: tuple[float, str] | None,
) -> Diagnosis:
    if not evals or (len(evals) < 2 and len(train_losses) < MIN_TRAIN_LOSSES):
        return _inconclusive(len(evals), len(train_losses))
    context = _final_metrics(evals[-1])
    overfitting = _overfitting(evals, metric, max_gap, setup)
    if overfitting:
        return _from_findings("Overfitting", overfitting, context)
    underfitting = _underfitting(train_losses, evals[-1], metric, floor, setup)
    if underfitting:
        return _from_findings("Underfitting", underfitting, context)
    return _healthy(evals, metric, max_gap, context, setup)


def _diverged(reason: str, train_losses: Sequence[tuple[int, float]]) -> Diagnosis:
    return Diagnosis("Diverged", [reason, _last_good_loss(train_losses)], DIVERGED_ADVICE)


def _last_good_loss(train_losses: Sequence[tuple[int, float]]) -> str:
    finite = [(step, loss) for step, loss in train_losses if math.isfinite(loss)]
    if not finite:
        return "no finite training loss was recorded"
    step, loss = finite[-1]
    lowest_step, lowest = min(finite, key=lambda point: point[1])
    return (
        f"last finite training loss {_number(loss)} at step {step} "
        f"(lowest {_number(lowest)} at step {lowest_step})"
    )


def _inconclusive(evaluations: int, losses: int) -> Diagnosis:
    why = (
        f"no evaluation was recorded ({losses} training losses), so there is no "
        "validation curve to judge"
        if evaluations == 0
        else f"only {evaluations} evaluation and {losses} training losses were recorded; "
        f"a trend needs 2 evaluations or {MIN_TRAIN_LOSSES} training losses"
    )
    return Diagnosis("Inconclusive", [why], INCONCLUSIVE_ADVICE)


def _from_findings(verdict: Verdict, findings: list[_Finding], context: str) -> Diagnosis:
    evidence = [finding.evidence for finding in findings] + [context]
    advice = dict.fromkeys(line for finding in findings for line in finding.advice)
    return Diagnosis(verdict, evidence, " ".join(advice))


def _overfitting(
    evals: Sequence[EvalPoint], metric: str, max_gap: float | None, setup: RunSetup
) -> list[_Finding]:
    findings = [
        _validation_loss_rise(evals),
        *(_quality_fell(evals, name) for name in _ranked_metrics(evals[-1])),
        _reward_margin_stalled(evals, setup),
        _gap_too_wide(evals[-1], metric, max_gap, setup),
    ]
    return [finding for finding in findings if finding is not None]


def _ranked_metrics(last: EvalPoint) -> list[str]:
    """The last evaluation's higher-is-better metrics."""
    return [
        name
        for name in last.metrics
        if metric_direction(name) == "maximize" and name not in UNRANKED_METRICS
    ]


def _quality_fell(evals: Sequence[EvalPoint], name: str) -> _Finding | None:
    """A higher-is-better validation metric that fell from its peak while the validation
    loss went on falling: the model fits the tokens better but does the task worse."""
    points = [p for p in evals if name in p.metrics and "loss" in p.metrics]
    if len(points) < 2:
        return None
    peak, last = max(points, key=lambda p: p.metrics[name]), points[-1]
    high, now = peak.metrics[name], last.metrics[name]
    fell = high - now > QUALITY_FALL_TOLERANCE * abs(high)
    if peak is last or not fell or last.metrics["loss"] >= peak.metrics["loss"]:
        return None
    return _Finding(
        f"validation {name} fell from {_number(high)} (step {peak.step}) to {_number(now)} "
        f"(step {last.step}) while validation loss fell from {_number(peak.metrics['loss'])} "
        f"to {_number(last.metrics['loss'])}",
        (_stop_at_peak(name, peak), REGULARIZE_MORE),
    )


def _stop_at_peak(name: str, peak: EvalPoint) -> str:
    early = (
        f"enable evaluation.earlyStopping with evaluation.metric {name}"
        if name in get_args(MetricName)
        else f"keep the checkpoint of step {peak.step}"
    )
    return (
        f"Stop earlier: validation {name} was highest at epoch {_epoch(peak.epoch)} "
        f"(step {peak.step}); set training.epochs to {max(1, math.ceil(peak.epoch))}, or "
        f"{early}."
    )


def _validation_loss_rise(evals: Sequence[EvalPoint]) -> _Finding | None:
    best, last = _best_validation_loss(evals), evals[-1]
    best_loss, last_loss = best.metrics["loss"], last.metrics["loss"]
    # An evaluation with no training step since the one before has no training loss.
    best_train, last_train = best.train_metrics.get("loss"), last.train_metrics.get("loss")
    rose = last_loss - best_loss > VALIDATION_RISE_TOLERANCE * best_loss
    if not rose or best_train is None or last_train is None or last_train >= best_train:
        return None
    return _Finding(
        f"validation loss rose from {_number(best_loss)} (step {best.step}) to "
        f"{_number(last_loss)} (step {last.step}) while training loss fell from "
        f"{_number(best_train)} to {_number(last_train)}",
        (_stop_earlier(best), REGULARIZE_MORE),
    )


def _reward_margin_stalled(evals: Sequence[EvalPoint], setup: RunSetup) -> _Finding | None:
    """A preference run whose validation reward margin stopped growing (it peaked before
    the last evaluation) while the training margin went on growing: the policy learns the
    training pairs, not the preference."""
    points = [p for p in evals if REWARD_MARGIN in p.metrics and REWARD_MARGIN in p.train_metrics]
    if len(points) < 2:
        return None
    peak, last = max(points, key=lambda p: p.metrics[REWARD_MARGIN]), points[-1]
    peak_train, last_train = peak.train_metrics[REWARD_MARGIN], last.train_metrics[REWARD_MARGIN]
    if peak is last or last_train - peak_train <= MARGIN_GROWTH_TOLERANCE * abs(peak_train):
        return None
    return _Finding(
        f"validation reward margin stopped growing: highest "
        f"{_number(peak.metrics[REWARD_MARGIN])} at step {peak.step}, "
        f"{_number(last.metrics[REWARD_MARGIN])} at step {last.step}, while the training "
        f"reward margin grew from {_number(peak_train)} to {_number(last_train)}",
        (_stop_at_margin_peak(peak), _hold_nearer_the_reference(setup.preference_beta)),
    )


def _stop_at_margin_peak(peak: EvalPoint) -> str:
    return (
        f"Stop earlier: the validation reward margin was highest at epoch "
        f"{_epoch(peak.epoch)} (step {peak.step}); set training.epochs to "
        f"{max(1, math.ceil(peak.epoch))}, or enable evaluation.earlyStopping with "
        "evaluation.metric rewardMargin."
    )


def _hold_nearer_the_reference(beta: float | None) -> str:
    if beta is None:
        return REGULARIZE_MORE
    return (
        f"Hold the policy nearer the reference: raise training.preference.beta (now "
        f"{beta:g}, e.g. 2x), or add preference pairs."
    )


def _stop_earlier(best: EvalPoint) -> str:
    return (
        f"Stop earlier: validation loss was lowest at epoch {_epoch(best.epoch)} "
        f"(step {best.step}); set training.epochs to {max(1, math.ceil(best.epoch))} or "
        "enable evaluation.earlyStopping."
    )


def _gap_too_wide(
    last: EvalPoint, metric: str, max_gap: float | None, setup: RunSetup
) -> _Finding | None:
    gap = _gap(last, metric)
    if max_gap is None or gap is None or gap <= max_gap:
        return None
    return _Finding(
        f"{_gap_text(last, metric, gap)}, more than maxGeneralizationGap {_number(max_gap)}",
        (REGULARIZE_MORE, _shrink_capacity(setup.lora)),
    )


def _shrink_capacity(lora: LoraSpec | None) -> str:
    if lora is None:
        return SHRINK_CAPACITY
    return (
        "Train fewer parameters or see more examples: freeze more layers "
        f"(freezing.freezeLayers) or lower training.lora.rank (now {lora.rank}), and add or "
        "augment training data."
    )


def _underfitting(
    train_losses: Sequence[tuple[int, float]],
    last: EvalPoint,
    metric: str,
    floor: tuple[float, str] | None,
    setup: RunSetup,
) -> list[_Finding]:
    findings = [
        _below_floor(last, metric, floor, setup),
        _flat_training_loss(train_losses, setup),
    ]
    return [finding for finding in findings if finding is not None]


def _floor(
    metric: str, underfitting_floor: float | None, majority_rate: float | None
) -> tuple[float, str] | None:
    """The floor of the primary metric's final training value, and where it comes from."""
    if underfitting_floor is not None:
        return underfitting_floor, f"underfittingFloor {_number(underfitting_floor)}"
    if metric != "accuracy" or majority_rate is None:
        return None
    floor = majority_rate + MAJORITY_MARGIN
    return floor, (
        f"{_number(floor)} (the majority-class rate {_number(majority_rate)} "
        f"plus {_number(MAJORITY_MARGIN)})"
    )


def _below_floor(
    last: EvalPoint, metric: str, floor: tuple[float, str] | None, setup: RunSetup
) -> _Finding | None:
    value = last.train_metrics.get(metric)
    if floor is None or value is None or not _worse(metric, value, floor[0]):
        return None
    return _Finding(
        f"final training {metric} {_number(value)} (step {last.step}) is worse than {floor[1]}",
        _advice(
            LEARN_FASTER,
            _train_longer(setup.max_steps),
            _train_more_of_the_model(setup),
            _regularize_less(setup.regularization),
        ),
    )


def _flat_training_loss(
    train_losses: Sequence[tuple[int, float]], setup: RunSetup
) -> _Finding | None:
    if len(train_losses) < MIN_TRAIN_LOSSES:
        return None
    size = max(LOSS_WINDOW_MIN, int(len(train_losses) * LOSS_WINDOW_FRACTION))
    first, last = train_losses[:size], train_losses[-size:]
    start, end = _mean_loss(first), _mean_loss(last)
    if start - end >= FLAT_LOSS_TOLERANCE * start:
        return None
    return _Finding(
        f"training loss fell by less than {FLAT_LOSS_TOLERANCE:.0%}: mean {_number(start)} "
        f"over steps {first[0][0]}-{first[-1][0]}, {_number(end)} over steps "
        f"{last[0][0]}-{last[-1][0]}",
        _advice(LEARN_FASTER, _train_more_of_the_model(setup)),
    )


def _advice(*remedies: str | None) -> tuple[str, ...]:
    """The remedies that apply to the run (None: one that does not)."""
    return tuple(remedy for remedy in remedies if remedy is not None)


def _train_longer(max_steps: int | None) -> str:
    if max_steps is None:
        return TRAIN_LONGER
    return f"Train longer: raise training.maxSteps (now {max_steps}) and training.epochs."


def _train_more_of_the_model(setup: RunSetup) -> str | None:
    """Unfreeze what the run froze, or give LoRA more room; None when all weights trained."""
    ways = _unfreezing(setup.freezing) + _more_lora(setup.lora)
    return f"Train more of the model: {_one_of(ways)}." if ways else None


def _unfreezing(freezing: FreezingSpec) -> list[str]:
    ways = []
    if freezing.freeze_layers:
        ways.append(f"lower freezing.freezeLayers (now {freezing.freeze_layers})")
    if freezing.head_only_epochs:
        ways.append(f"lower freezing.headOnlyEpochs (now {freezing.head_only_epochs})")
    if freezing.gradual_unfreezing is not None:
        ways.append(_faster_unfreezing(freezing.gradual_unfreezing))
    if freezing.freeze_embeddings:
        ways.append("set freezing.freezeEmbeddings to false")
    if freezing.frozen_modules:
        ways.append("remove patterns from freezing.frozenModules")
    return ways


def _faster_unfreezing(gradual: GradualUnfreezingSpec) -> str:
    ways = [f"a higher groupsPerStep (now {gradual.groups_per_step})"]
    if gradual.every > 1:
        ways.insert(0, f"a lower every (now {gradual.every} {gradual.unit})")
    return f"unfreeze faster (freezing.gradualUnfreezing: {_one_of(ways)})"


def _more_lora(lora: LoraSpec | None) -> list[str]:
    if lora is None:
        return []
    return [f"raise training.lora.rank (now {lora.rank}) or leave out training.lora"]


def _regularize_less(regularization: RegularizationSpec) -> str | None:
    """Lower the regularizers the run used; None when it used none."""
    knobs = [
        f"regularization.{name} (now {value:g})"
        for name, value in (
            ("weightDecay", regularization.weight_decay),
            ("l1", regularization.l1),
            ("dropout", regularization.dropout),
            ("attentionDropout", regularization.attention_dropout),
            ("labelSmoothing", regularization.label_smoothing),
        )
        if value
    ]
    return f"Regularize less: lower {_all_of(knobs)}." if knobs else None


def _one_of(items: Sequence[str]) -> str:
    return _listed(items, "or")


def _all_of(items: Sequence[str]) -> str:
    return _listed(items, "and")


def _listed(items: Sequence[str], conjunction: str) -> str:
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def _healthy(
    evals: Sequence[EvalPoint],
    metric: str,
    max_gap: float | None,
    context: str,
    setup: RunSetup,
) -> Diagnosis:
    best, last = _best_validation_loss(evals), evals[-1]
    lowest = (
        f"lowest validation loss {_number(best.metrics['loss'])} at step {best.step}; "
        f"final {_number(last.metrics['loss'])} at step {last.step}"
    )
    evidence = [context, _gap_summary(last, metric, max_gap), lowest]
    improving = _still_improving(evals, metric)
    if improving is None:
        return Diagnosis("Healthy", evidence, HEALTHY_ADVICE)
    advice = f"{STILL_IMPROVING_ADVICE.format(metric=metric)} {_train_longer(setup.max_steps)}"
    return Diagnosis("Healthy", [*evidence, improving], advice)


def _still_improving(evals: Sequence[EvalPoint], metric: str) -> str | None:
    """Why the primary metric was still improving at the last evaluation (it beat every
    earlier one by more than STILL_IMPROVING_TOLERANCE), or None."""
    points = [p for p in evals if metric in p.metrics]
    if len(points) < 2:
        return None
    last, earlier = points[-1], points[:-1]
    best = min(earlier, key=lambda p: _signed(metric, p.metrics[metric]))
    value, before = last.metrics[metric], best.metrics[metric]
    gain = _signed(metric, before) - _signed(metric, value)
    if gain <= STILL_IMPROVING_TOLERANCE * abs(before):
        return None
    return (
        f"validation {metric} was still improving at the last evaluation: {_number(value)} at "
        f"step {last.step}, best before {_number(before)} at step {best.step}"
    )


def _signed(metric: str, value: float) -> float:
    """`value` such that lower is better, whatever the metric's direction."""
    return value if metric_direction(metric) == "minimize" else -value


def _perfect_evaluation(evals: Sequence[EvalPoint], metric: str) -> EvalPoint | None:
    """The first evaluation whose primary metric reached its best possible value."""
    best = _best_possible(metric)
    return next(
        (
            point
            for point in evals
            if metric in point.metrics and abs(point.metrics[metric] - best) <= PERFECT_TOLERANCE
        ),
        None,
    )


def _best_possible(metric: str) -> float:
    return BEST_POSSIBLE.get(metric, 1.0)


def _suspicious(judged: Diagnosis, perfect: EvalPoint, metric: str, setup: RunSetup) -> Diagnosis:
    """The verdict, led by the warning that a perfect validation score is seldom real."""
    evidence = (
        f"perfect validation {metric}: {_number(perfect.metrics[metric])} at step "
        f"{perfect.step} (epoch {_epoch(perfect.epoch)}); the best possible is "
        f"{_best_possible(metric):.3f}"
    )
    warning = _perfect_score_advice(setup.leakage_mode)
    # "No change needed" is the one piece of advice a suspicious score contradicts.
    rest = "" if judged.verdict == "Healthy" else f" {judged.suggestion}"
    return Diagnosis(judged.verdict, [evidence, *judged.evidence], warning + rest)


def _perfect_score_advice(leakage_mode: str) -> str:
    leakage = (
        "data.quality.leakage.mode is warn, which keeps training rows that repeat validation "
        "rows: set it to drop"
        if leakage_mode == "warn"
        else "the data.quality leakage rule drops only training rows whose normalised text "
        "equals a validation row's, not near-copies"
    )
    return (
        "Check the data before trusting a perfect validation score: it usually means leakage "
        f"between the splits ({leakage}), labels that can be read off the text, or a task "
        "too easy to need the model."
    )


def _gap_summary(last: EvalPoint, metric: str, max_gap: float | None) -> str:
    gap = _gap(last, metric)
    if gap is None:
        return f"no training {metric} was recorded, so the generalization gap was not measured"
    within = "" if max_gap is None else f", within maxGeneralizationGap {_number(max_gap)}"
    return _gap_text(last, metric, gap) + within


def _gap(point: EvalPoint, metric: str) -> float | None:
    """How much worse the validation value is than the training value (negative: better)."""
    train, validation = point.train_metrics.get(metric), point.metrics.get(metric)
    if train is None or validation is None:
        return None
    return validation - train if metric_direction(metric) == "minimize" else train - validation


def _gap_text(point: EvalPoint, metric: str, gap: float) -> str:
    return (
        f"training {metric} {_number(point.train_metrics[metric])} vs validation "
        f"{_number(point.metrics[metric])} at step {point.step}: a gap of {_number(gap)}"
    )


def _final_metrics(last: EvalPoint) -> str:
    values = ", ".join(f"{name} {_number(value)}" for name, value in last.metrics.items())
    return f"final validation metrics at step {last.step} (epoch {_epoch(last.epoch)}): {values}"


def _best_validation_loss(evals: Sequence[EvalPoint]) -> EvalPoint:
    return min(evals, key=lambda point: point.metrics["loss"])


def _worse(metric: str, value: float, reference: float) -> bool:
    return value > reference if metric_direction(metric) == "minimize" else value < reference


def _mean_loss(points: Sequence[tuple[int, float]]) -> float:
    return statistics.fmean(loss for _, loss in points)


def _number(value: float) -> str:
    """Three decimals, or three significant digits for values too small or large for that."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.3f}"
    return f"{value:.3g}"


def _epoch(epoch: float) -> str:
    return f"{round(epoch, 2):g}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
