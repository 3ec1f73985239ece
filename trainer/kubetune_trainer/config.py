"""TrainingConfig: everything the trainer needs to run one fine-tune, and nothing else.

This module is the contract between the operator and the trainer. The operator's
`FineTuneJob` spec extends `TrainingConfig` with cluster concerns (resources, run policy,
search) and writes the trainer's part as JSON into the job's ConfigMap; `kubetune run`
reads the same models from a manifest. It imports no torch, so the operator image, the
CRD generator and the CLI can use it without a GPU stack.

Field names are snake_case in Python and camelCase in manifests and JSON (the Kubernetes
convention). Each field's docstring becomes its description in the CRD and in
`kubectl explain`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

MAX_NAME_LENGTH = 256
MAX_URI_LENGTH = 2048
MAX_PATTERNS = 64
MAX_LABELS = 1000

TaskType = Literal["sequence-classification", "causal-lm"]
DataFormat = Literal["csv", "jsonl", "parquet"]
SchedulerType = Literal[
    "linear", "cosine", "cosine-with-restarts", "constant", "polynomial", "one-cycle"
]
OptimizerType = Literal["adamw", "adafactor", "sgd"]
Objective = Literal["sft", "dpo", "simpo"]
PreferenceLoss = Literal["sigmoid", "ipo"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
MetricName = Literal[
    "accuracy",
    "f1Macro",
    "f1Micro",
    "precisionMacro",
    "recallMacro",
    "rocAuc",
    "loss",
    "perplexity",
    "rewardAccuracy",
    "rewardMargin",
    "chosenReward",
    "rejectedReward",
    "exactMatch",
    "tokenF1",
    "rougeL",
]
CLASSIFICATION_METRICS: frozenset[str] = frozenset(
    {"accuracy", "f1Macro", "f1Micro", "precisionMacro", "recallMacro", "rocAuc", "loss"}
)
LANGUAGE_MODEL_METRICS: frozenset[str] = frozenset({"loss", "perplexity"})
PREFERENCE_METRICS: frozenset[str] = frozenset(
    {"loss", "rewardAccuracy", "rewardMargin", "chosenReward", "rejectedReward"}
)
"""A preference run's validation metrics: the loss, and the implicit rewards of the chosen
and rejected responses (dpo: beta * (log-prob of the policy - log-prob of the reference);
simpo: beta * the policy's mean log-prob per token), their mean margin and the share of rows
whose chosen reward is the higher (training/preference_loss.py)."""
GENERATION_METRICS: frozenset[str] = frozenset({"exactMatch", "tokenF1", "rougeL"})
"""A causal LM's metrics by generation (evaluation.generation): its greedy completions of
validation prompts against their reference responses (generation_metrics.py)."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"loss", "perplexity"})

SOURCE_SCHEMES = ("file", "pvc", "hf", "pkg")

MISSING_GROUP = "(missing)"
"""The group of a row whose sensitive column (data.sensitiveColumns) is empty, as the data
report, the bias audit and the status name it."""

EXIT_INVALID_INPUT = 3
"""The trainer's exit code for a bad config, data or model source: a retry cannot help."""
EXIT_TRAINING_FAILED = 4
"""The trainer's exit code for a run whose result must not be used (it diverged)."""
EXIT_BUDGET_EXCEEDED = 5
"""The trainer's exit code for a run stopped, with a checkpoint, by runPolicy.maxGpuHours."""
EXIT_STALLED = 6
"""The exit code of a run stopped by its watchdog: no progress (heartbeat) for
runPolicy.stallTimeout (watchdog.py). The last checkpoint is there to continue from."""
EXIT_INTERRUPTED = 143
"""The trainer's exit code for a run stopped, with a checkpoint, by SIGTERM (128 + 15) or by
one Ctrl-C."""
EXIT_CTRL_C = 130
"""The trainer's exit code for a run stopped at once by Ctrl-C, without a checkpoint (128 + 2)."""
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?(@[\w./-]{1,128})?$")
_PY_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Controls (NUL, escape sequences, line breaks), lone surrogates and line separators."""
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""The bidirectional marks, embeddings, overrides and isolates ("Trojan Source")."""


def unprintable_character(text: str) -> str | None:
    """The first character of `text` that must not reach a terminal or a report, as its
    code point and name (U+202E RIGHT-TO-LEFT OVERRIDE), or None.

    Such a character lets a value forge, hide or reorder what is printed around it; other
    invisible characters (zero-width joiners of emoji, soft hyphens) stay allowed.
    """
    for character in text:
        if (
            unicodedata.category(character) in _UNPRINTABLE_CATEGORIES
            or character in _BIDI_CONTROLS
        ):
            name = unicodedata.name(character, "")
            return f"U+{ord(character):04X}{f' {name}' if name else ''}"
    return None


def _printable(text: str) -> str:
    found = unprintable_character(text)
    if found is not None:
        raise ValueError(
            f"must not contain {found}: control and bidirectional-override characters "
            "would reach terminals and reports"
        )
    return text


def task_metrics(
    task: TaskType, objective: Objective = "sft", generation: bool = False
) -> frozenset[str]:
    """The validation metrics that make sense for a task and training objective
    (`generation`: with evaluation.generation set)."""
    if objective != "sft":
        return PREFERENCE_METRICS
    if task == "causal-lm":
        return LANGUAGE_MODEL_METRICS | (GENERATION_METRICS if generation else frozenset())
    return CLASSIFICATION_METRICS


def metric_refusal(
    field: str, metric: str, task: TaskType, objective: Objective, generation: bool
) -> str | None:
    """Why `metric`, named by `field`, cannot be measured by this run; None if it can."""
    allowed = task_metrics(task, objective, generation)
    if metric in allowed:
        return None
    if metric in GENERATION_METRICS and task == "causal-lm" and objective == "sft":
        return (
            f"{field} {metric!r} is measured on generated completions: set "
            "evaluation.generation, or use one of " + ", ".join(sorted(allowed))
        )
    applies_to = f"training.objective {objective}" if objective != "sft" else task
    return (
        f"{field} {metric!r} does not apply to {applies_to}; "
        f"use one of {', '.join(sorted(allowed))}"
    )


def _anchored(section: SectionT, field: str, base: Path) -> SectionT:
    uri = getattr(section, field)
    if uri is None or "://" in uri or Path(uri).is_absolute():
        return section
    return section.model_copy(update={field: str(base / uri)})


def metric_direction(metric: str) -> Literal["maximize", "minimize"]:
    """Whether a larger value of `metric` is better."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


@dataclass(frozen=True)
class Source:
    """A parsed source URI: where a model, a dataset or the output lives."""

    scheme: Literal["file", "pvc", "hf", "pkg"]
    location: str
    """file: a path; pvc: the path inside the claim; hf: org/name; pkg: a path in the package."""
    authority: str = ""
    """pvc: the claim name; pkg: the Python package; hf: `datasets` for dataset repos."""
    revision: str = ""
    """hf: a branch, tag or commit after `@`."""


def parse_source(uri: str) -> Source:
    """Parse a source URI, raising ValueError with the accepted forms when it is malformed."""
    if not uri or len(uri) > MAX_URI_LENGTH:
        raise ValueError(f"must be 1 to {MAX_URI_LENGTH} characters")
    if _CONTROL_CHARS.search(uri):
        raise ValueError("must not contain control characters")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return Source("file", uri)
    if scheme == "file":
        return _file_source(rest)
    if scheme == "pvc":
        return _pvc_source(rest)
    if scheme == "hf":
        return _hf_source(rest)
    if scheme == "pkg":
        return _package_source(rest)
    raise ValueError(
        f"unknown scheme {scheme!r}; use a local path, file://PATH, pvc://CLAIM/PATH, "
        "hf://ORG/NAME[@REVISION] or pkg://PYTHON_PACKAGE/PATH"
    )


def _file_source(rest: str) -> Source:
    if not rest.startswith("/"):
        raise ValueError("file:// needs an absolute path, e.g. file:///data/train.csv")
    return Source("file", rest)


def _pvc_source(rest: str) -> Source:
    claim, _, path = rest.partition("/")
    if not _DNS_LABEL.match(claim):
        raise ValueError(
            f"pvc://CLAIM/PATH: claim {claim!r} must be a DNS-1123 label "
            "(lowercase letters, digits and '-', at most 63 characters)"
        )
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise ValueError("pvc://CLAIM/PATH: the path must stay inside the claim (no '..')")
    return Source("pvc", "/".join(parts), authority=claim)


def _hf_source(rest: str) -> Source:
    authority = ""
    if rest.startswith("datasets/"):
        authority, rest = "datasets", rest.removeprefix("datasets/")
    if not _HF_REPO.match(rest):
        raise ValueError(
            "hf:// needs ORG/NAME with an optional @REVISION, e.g. hf://org/model@main"
        )
    name, _, revision = rest.partition("@")
    if revision:
        _check_revision(revision)
    return Source("hf", name, authority=authority, revision=revision)


def _check_revision(revision: str) -> None:
    """A branch, tag or commit by git check-ref-format's rules (what _HF_REPO's characters
    leave to check): the revision names a file below refs/ in the Hugging Face cache, so a
    '..' or an empty part would lead out of it."""
    parts = revision.split("/")
    if (
        ".." in revision
        or revision.endswith(".")
        or "" in parts
        or any(part.startswith(".") or part.endswith(".lock") for part in parts)
    ):
        raise ValueError(
            f"hf://ORG/NAME@REVISION: revision {revision!r} is not a git branch, tag or "
            "commit (no '..', no empty part or part that starts with '.' or ends with "
            "'.lock', no '.' at the end)"
        )


def _package_source(rest: str) -> Source:
    package, _, path = rest.partition("/")
    if not _PY_MODULE.match(package):
        raise ValueError(f"pkg://PACKAGE/PATH: {package!r} is not a Python package name")
    if ".." in PurePosixPath(path).parts:
        raise ValueError("pkg://PACKAGE/PATH: the path must stay inside the package (no '..')")
    return Source("pkg", path, authority=package)


def _check_source(uri: str) -> str:
    parse_source(uri)
    return uri


SourceUri = Annotated[
    str,
    Field(min_length=1, max_length=MAX_URI_LENGTH),
    AfterValidator(_check_source),
]
ColumnName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
ClassName = Annotated[
    str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_printable)
]
ModulePattern = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]


SectionT = TypeVar("SectionT", bound="Section")


class Section(BaseModel):
    """Base of every config section: camelCase in manifests, strict types, no unknown keys."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )


def cel_rules(*rules: tuple[str, str]) -> ConfigDict:
    """Config adding (CEL rule, message) pairs that the API server checks at apply time.

    The same constraints are enforced by the validators: the rules only make
    `kubectl apply` reject what the operator would otherwise reject later.
    """
    return ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]
        }
    )


def section_default(cls: type[Section]) -> Any:
    """A section that may be left out: filled with its own defaults (also by the API server)."""
    return Field(default_factory=cls, json_schema_extra={"default": {}})


class ModelSpec(Section):
    """The pre-trained model to fine-tune and the task to fine-tune it for."""

    model_config = cel_rules(
        (
            "!has(self.labels) || !has(self.numLabels) || size(self.labels) == self.numLabels",
            "numLabels must equal the number of labels",
        ),
    )

    source: SourceUri
    """Where the weights and tokenizer are: a local directory, file:///PATH, pvc://CLAIM/PATH (a PersistentVolumeClaim mounted in the pods), hf://ORG/NAME[@REVISION] (the Hugging Face hub), or pkg://PACKAGE/PATH (a directory shipped inside an installed Python package)."""
    task: TaskType = "sequence-classification"
    """What the model learns: sequence-classification (a classification head on the encoder) or causal-lm (next-token prediction)."""
    labels: list[ClassName] | None = Field(default=None, min_length=2, max_length=MAX_LABELS)
    """Class names in class-id order (sequence-classification). Left out: the sorted distinct values of the label column."""
    num_labels: int | None = Field(default=None, ge=2, le=100_000)
    """Number of classes (sequence-classification); must equal the length of labels when both are set."""

    @field_validator("labels")
    @classmethod
    def _labels_are_distinct(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None and len(set(labels)) != len(labels):
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            raise ValueError(f"labels must be distinct; repeated: {', '.join(repeated)}")
        return labels

    @field_validator("num_labels")
    @classmethod
    def _num_labels_matches(cls, num_labels: int | None, info: ValidationInfo) -> int | None:
        labels = info.data.get("labels")
        if num_labels is not None and labels is not None and num_labels != len(labels):
            raise ValueError(f"is {num_labels} but labels names {len(labels)} classes")
        if num_labels is not None and info.data.get("task") == "causal-lm":
            raise ValueError("applies to sequence-classification only, not causal-lm")
        return num_labels


class DataSource(Section):
    """One dataset file (or directory of shards)."""

    source: SourceUri
    """Where the rows are: a local path, file:///PATH, pvc://CLAIM/PATH, or hf://datasets/ORG/NAME."""
    format: DataFormat | None = None
    """File format: csv, jsonl or parquet. Left out: taken from the file extension."""
    max_gigabytes: float = Field(default=64, gt=0, le=1_000_000)
    """Largest size read, in GB (10^9 bytes; a directory's files together): the rows are held in memory, so a bigger source is refused before it is read."""

    @model_validator(mode="after")
    def _format_is_known(self) -> Self:
        inferable = parse_source(self.source).scheme == "hf" or infer_format(self.source)
        if self.format is None and not inferable:
            raise ValueError(
                f"cannot tell the format of {self.source!r} from its extension; "
                "set format to one of csv, jsonl, parquet"
            )
        return self

    def resolved_format(self) -> DataFormat | None:
        """The declared format, else the one the extension names (None for hub datasets)."""
        return self.format or infer_format(self.source)


_EXTENSIONS: dict[str, DataFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def infer_format(source: str) -> DataFormat | None:
    """The data format that a file name's extension names, ignoring a compression suffix."""
    name = PurePosixPath(source.split("://")[-1]).name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        name = name.removesuffix(suffix)
    return _EXTENSIONS.get(PurePosixPath(name).suffix)


class BalanceSpec(Section):
    """Class imbalance handling: loss weights, resampling, or class-balanced batches."""

    class_weights: Literal["none", "inverse-frequency", "effective-number"] = "none"
    """Weight the loss per class: none, inverse-frequency (n / (k x count)), or effective-number ((1 - beta) / (1 - beta^count), Cui et al. 2019)."""
    beta: float = Field(default=0.999, gt=0, lt=1)
    """The beta of effective-number weights."""
    resample: Literal["none", "oversample", "undersample"] = "none"
    """Resample the training rows at random (seeded by training.seed): oversample repeats rows of the smaller classes, undersample leaves out rows of the larger ones, until targetRatio holds."""
    target_ratio: float = Field(default=1.0, gt=0, le=1)
    """After resampling, the smallest class has at least this share of the largest class's rows (1: all classes equal)."""
    sampler: Literal["shuffle", "class-balanced"] = "shuffle"
    """How batches draw training rows: shuffle (every row once per epoch) or class-balanced (rows drawn with replacement, every class equally likely)."""
    recommend_above: float = Field(default=3.0, ge=1, le=1_000_000)
    """When the largest class has more than this many times the rows of the smallest and no remedy is set, the data report recommends one (nothing is applied)."""

    def is_set(self) -> bool:
        """Whether any remedy for imbalance is chosen."""
        return (self.class_weights, self.resample, self.sampler) != ("none", "none", "shuffle")


class QualityRule(Section):
    """What one data-quality rule does with the rows it matches."""

    mode: Literal["drop", "warn", "fail"] = "drop"
    """drop the rows, warn (count and show them, keep them), or fail the job."""


class StrictQualityRule(QualityRule):
    """A data-quality rule that fails the job unless told otherwise."""

    mode: Literal["drop", "warn", "fail"] = "fail"
    """drop the rows, warn (count and show them, keep them), or fail the job."""


class LengthRule(QualityRule):
    """Rows too short to learn from or too long to fit, counted in the model's tokens."""

    mode: Literal["drop", "warn", "fail"] = "warn"
    """drop the rows, warn (count and show them, keep them), or fail the job."""
    min_tokens: int = Field(default=1, ge=0, le=131_072)
    """Fewest tokens (special tokens not counted) a row's text may have."""
    max_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    """Most tokens a row's text (with its pair) may have. Left out: data.maxLength, so the rule counts the rows that would be truncated."""


class WarningQualityRule(QualityRule):
    """A data-quality rule that only counts and shows its rows unless told otherwise."""

    mode: Literal["drop", "warn", "fail"] = "warn"
    """drop the rows, warn (count and show them, keep them), or fail the job."""


class NearDuplicateRule(WarningQualityRule):
    """causal-lm: prompts that are nearly, not exactly, an earlier prompt (MinHash of word trigrams)."""

    threshold: float = Field(default=0.8, ge=0.5, le=1)
    """Least share of word trigrams two normalised prompts have in common (Jaccard similarity, estimated with 64 MinHash functions) for the later one to match."""


class LabelNoiseSpec(QualityRule):
    """Suspected label errors, found by confident learning (cleanlab) on out-of-fold probabilities of a TF-IDF + logistic-regression model."""

    mode: Literal["drop", "warn", "fail"] = "warn"
    """warn (report the suspected rows, keep them), drop them, or fail the job."""
    folds: int = Field(default=5, ge=2, le=20)
    """Cross-validation folds for the out-of-fold probabilities."""


class DataQualitySpec(Section):
    """Checks on the raw rows before any GPU time is spent; the data report shows what each did."""

    model_config = cel_rules(
        (
            "!has(self.missingValues.mode) || self.missingValues.mode != 'warn'",
            "missingValues.mode: warn cannot keep a row without a label, text pair or weight; use drop or fail",
        ),
        (
            "!has(self.unknownLabels.mode) || self.unknownLabels.mode != 'warn'",
            "unknownLabels.mode: warn cannot keep a row whose label is not a class; use drop or fail",
        ),
        (
            "!has(self.identicalPreferences.mode) || self.identicalPreferences.mode != 'warn'",
            "identicalPreferences.mode: warn cannot keep a row whose chosen and rejected responses are the same; use drop or fail",
        ),
        (
            "!has(self.malformedConversations.mode) || self.malformedConversations.mode != 'warn'",
            "malformedConversations.mode: warn cannot keep a conversation that cannot be rendered; use drop or fail",
        ),
    )

    duplicates: QualityRule = section_default(QualityRule)
    """Rows whose text and label equal an earlier row's once case, punctuation and spacing are ignored (the first is kept). causal-lm compares the prompt and its response (data.textColumn and data.textPairColumn), or the whole conversation (data.messagesColumn), or the prompt and both responses (preference rows)."""
    conflicting_labels: QualityRule = section_default(QualityRule)
    """Rows with the same normalised text but different labels (every copy)."""
    empty: QualityRule = section_default(QualityRule)
    """Rows whose text is missing, empty or only whitespace."""
    garbage: QualityRule = section_default(QualityRule)
    """Rows with replacement characters (broken encodings), control characters, or mostly symbols."""
    leakage: QualityRule = section_default(QualityRule)
    """Training rows whose normalised text is also in the validation rows (they would inflate validation scores); causal-lm compares the prompts (a conversation's messages before its last trained assistant message)."""
    conflicting_responses: WarningQualityRule = section_default(WarningQualityRule)
    """causal-lm: rows whose normalised prompt comes with more than one response (every copy); the model learns their average. warn by default: several good answers to one prompt can be on purpose."""
    near_duplicates: NearDuplicateRule = section_default(NearDuplicateRule)
    """causal-lm: rows whose prompt is nearly an earlier row's (see threshold); exact copies are the duplicates and conflictingResponses rules'. Prompts of fewer than three words are not compared."""
    missing_values: QualityRule = section_default(QualityRule)
    """Rows without a label, text pair or weight (null, empty or blank) where the data section names those columns; rows without text are the empty rule's. Checked per file before the validation split; mode drop or fail (warn cannot keep a row that cannot be trained on)."""
    unknown_labels: StrictQualityRule = section_default(StrictQualityRule)
    """Rows whose label is not a declared class (model.labels, or for validation rows the labels of the training rows). Checked per file before the validation split; mode drop or fail (warn cannot keep a row without a class)."""
    identical_preferences: QualityRule = section_default(QualityRule)
    """training.objective dpo or simpo: rows whose chosen response equals their rejected one (they carry no preference, and no gradient). Checked per file before the validation split; mode drop or fail (warn cannot keep a row that teaches nothing)."""
    malformed_conversations: StrictQualityRule = section_default(StrictQualityRule)
    """Conversations (data.messagesColumn) that are not a list of {role, content} messages, have a role other than system, developer, user or assistant, a weight other than 0 or 1, no assistant message with weight 1, an empty message, a system or developer message after the first user or assistant one, two user or two assistant messages in a row, or that the chat template fails to render. Checked per file; mode drop or fail (warn cannot keep a conversation that cannot be rendered)."""
    length: LengthRule = section_default(LengthRule)
    """Rows shorter than minTokens or longer than maxTokens in the model's tokens (text and text pair, special tokens not counted)."""
    label_noise: LabelNoiseSpec | None = None
    """Look for mislabeled training rows (sequence-classification). Left out: not checked."""
    max_non_printable_fraction: float = Field(default=0.3, gt=0, le=1)
    """The garbage rule's limit on the share of characters that are neither letters, digits, punctuation nor spaces."""
    max_dropped_fraction: float = Field(default=0.3, ge=0, le=1)
    """Fail the job, with the counts, when the rules would drop more than this share of a split."""
    examples_per_rule: int = Field(default=3, ge=0, le=20)
    """Example rows per rule in the data report."""

    @model_validator(mode="after")
    def _class_rules_cannot_warn(self) -> Self:
        if self.missing_values.mode == "warn":
            raise ValueError(
                "missingValues.mode: warn cannot keep a row without a label, text pair or "
                "weight; use drop or fail"
            )
        if self.unknown_labels.mode == "warn":
            raise ValueError(
                "unknownLabels.mode: warn cannot keep a row whose label is not a class; "
                "use drop or fail"
            )
        if self.identical_preferences.mode == "warn":
            raise ValueError(
                "identicalPreferences.mode: warn cannot keep a row whose chosen and rejected "
                "responses are the same; use drop or fail"
            )
        if self.malformed_conversations.mode == "warn":
            raise ValueError(
                "malformedConversations.mode: warn cannot keep a conversation that cannot be "
                "rendered; use drop or fail"
            )
        return self

    @model_validator(mode="after")
    def _length_bounds_are_ordered(self) -> Self:
        upper = self.length.max_tokens
        if upper is not None and upper < self.length.min_tokens:
            raise ValueError(
                f"length.maxTokens ({upper}) is below length.minTokens ({self.length.min_tokens})"
            )
        return self


AugmentationOperation = Literal["swap", "delete", "insert", "synonym"]
_WORD_EDITS: list[AugmentationOperation] = ["swap", "delete", "insert"]
"""The edits that need no synonyms table."""


class AugmentationSpec(Section):
    """More training rows for scarce data, made offline: EDA edits of the training rows (Wei and Zou 2019) and user-provided synthetic rows. Validation rows are never touched."""

    operations: list[AugmentationOperation] = Field(
        default_factory=lambda: _WORD_EDITS.copy(), min_length=1, max_length=4
    )
    """The edits to draw from, one per new row: swap two words, delete words, insert a copy of one of the row's words elsewhere, or replace words by a synonym from the synonyms table."""
    word_fraction: float = Field(default=0.1, gt=0, le=0.5)
    """Share of a row's words one edit changes (at least one word)."""
    multiple: float = Field(default=1.0, ge=0, le=20)
    """New rows per training row: 1 doubles the training rows. With minorityOnly, the most new rows per row of a smaller class."""
    minority_only: bool = False
    """Augment only the classes smaller than the largest, each up to the largest class's rows."""
    synonyms: DataSource | None = None
    """A table with the columns word and synonym (one row per pair) for the synonym edit."""
    synthetic_sources: list[DataSource] = Field(default_factory=list, max_length=16)
    """Extra training rows with the training file's columns (e.g. generated by another model). They go through the same quality rules and are counted as synthetic in the data report."""

    @model_validator(mode="after")
    def _synonym_edit_has_a_table(self) -> Self:
        if "synonym" in self.operations and self.synonyms is None:
            raise ValueError("the synonym operation needs a synonyms table")
        if len(set(self.operations)) != len(self.operations):
            raise ValueError("operations lists an edit more than once")
        return self


class DataSpec(Section):
    """The training and validation data and how its columns map to the task."""

    train: DataSource
    """The training rows."""
    validation: DataSource | None = None
    """The validation rows. Left out: a stratified validationSplit of the training rows."""
    validation_split: float = Field(default=0.1, gt=0, le=0.5)
    """Fraction of the training rows held out for validation when no validation source is given (stratified by label, seeded by training.seed)."""
    text_column: ColumnName = "text"
    """Column with the input text."""
    text_pair_column: ColumnName | None = None
    """Column with a second text: the pair of a sentence-pair task (entailment), or for causal-lm the response, the only tokens the loss counts (the text column is then the prompt). Left out for single texts."""
    label_column: ColumnName = "label"
    """Column with the class label (sequence-classification; causal-lm ignores it)."""
    chosen_column: ColumnName = "chosen"
    """training.objective dpo or simpo: column with the preferred response to the prompt in data.textColumn (with data.messagesColumn: a list of assistant messages answering the conversation there)."""
    rejected_column: ColumnName = "rejected"
    """training.objective dpo or simpo: column with the response that is not preferred (a list of assistant messages with data.messagesColumn)."""
    sensitive_columns: list[ColumnName] = Field(default_factory=list, max_length=16)
    """Columns with sensitive attributes (e.g. gender, dialect group): reported per group in the data report and audited by the bias section. Never fed to the model. Required in the validation rows, except with bias.auditData (then in the audit file)."""
    weight_column: ColumnName | None = None
    """Column with a per-row loss weight (non-negative numbers); left out for equal weights."""
    max_length: int = Field(default=128, ge=8, le=131_072)
    """Longest input in tokens; longer inputs are truncated. Batches are padded to their longest row, not to this."""
    balance: BalanceSpec = section_default(BalanceSpec)
    """Class imbalance handling."""
    quality: DataQualitySpec = section_default(DataQualitySpec)
    """Data-quality rules: duplicates, conflicting labels, empty and garbage text, leakage, missing values, unknown labels, length, label noise."""
    augmentation: AugmentationSpec | None = None
    """Extra training rows for scarce data. Left out: none."""
    packing: bool = False
    """causal-lm only: pack several training rows into each sequence of maxLength tokens (best-fit decreasing), each row attending only to itself; fewer padding tokens per step. Validation rows stay unpacked."""
    messages_column: ColumnName | None = None
    """causal-lm only: column holding conversations, lists of {role, content} messages in OpenAI's fine-tuning format (system, developer, user, assistant; weight 0 on an assistant message leaves it out of the loss). Set, each row is a conversation, rendered with chatTemplate, and the loss counts the assistant tokens only; textColumn and textPairColumn are then not read."""
    chat_template: str | None = Field(default=None, min_length=1, max_length=65_536)
    """How conversations (messagesColumn) become text: "chatml" for the built-in ChatML template, or a Jinja chat template. Left out: the tokenizer's own; a tokenizer without one is an error."""

    def column_roles(
        self, *, with_label: bool, with_preferences: bool = False
    ) -> list[tuple[str, str]]:
        """(field path, column) for every column the data section names."""
        if self.messages_column is not None:
            conversation = [("data.messagesColumn", self.messages_column)]
            if with_preferences:
                conversation += [
                    ("data.chosenColumn", self.chosen_column),
                    ("data.rejectedColumn", self.rejected_column),
                ]
            return conversation + [("data.sensitiveColumns", c) for c in self.sensitive_columns]
        roles = [
            ("data.textColumn", self.text_column),
            ("data.chosenColumn", self.chosen_column if with_preferences else None),
            ("data.rejectedColumn", self.rejected_column if with_preferences else None),
            ("data.textPairColumn", self.text_pair_column),
            ("data.labelColumn", self.label_column if with_label else None),
            ("data.weightColumn", self.weight_column),
        ]
        roles += [("data.sensitiveColumns", column) for column in self.sensitive_columns]
        return [(field, column) for field, column in roles if column is not None]


class GradualUnfreezingSpec(Section):
    """ULMFiT-style gradual unfreezing: start with the head, unfreeze layer groups top-down."""

    every: int = Field(default=1, ge=1, le=1_000_000)
    """How often one more step of unfreezing happens, in the unit below."""
    unit: Literal["epochs", "steps"] = "epochs"
    """Whether `every` counts epochs or optimizer steps."""
    groups_per_step: int = Field(default=1, ge=1, le=1000)
    """How many layer groups (transformer blocks, then the embeddings) each step unfreezes."""


class FreezingSpec(Section):
    """Which parts of the pre-trained model train, and when, and at what learning rate."""

    freeze_embeddings: bool = False
    """Keep the embedding layer frozen for the whole run."""
    freeze_layers: int = Field(default=0, ge=0, le=1000)
    """Keep the first (lowest) K transformer blocks frozen for the whole run."""
    head_only_epochs: int = Field(default=0, ge=0, le=1000)
    """Train only the task head for the first E epochs, then the rest of the schedule applies."""
    gradual_unfreezing: GradualUnfreezingSpec | None = None
    """Unfreeze layer groups top-down during training (ULMFiT). Left out: everything not frozen above trains from the start."""
    layerwise_lr_decay: float = Field(default=1.0, gt=0, le=1)
    """Discriminative learning rates: each block gets this factor times the rate of the block above it (the head gets training.learningRate). 1.0 gives every layer the same rate."""
    frozen_modules: list[ModulePattern] = Field(default_factory=list, max_length=MAX_PATTERNS)
    """Glob patterns of whole parameter names that stay frozen (e.g. '*encoder.layer.0.*'); each must match a parameter of the model."""
    trainable_modules: list[ModulePattern] = Field(default_factory=list, max_length=MAX_PATTERNS)
    """Glob patterns of whole parameter names that always train, overriding every rule above (e.g. '*LayerNorm*'); each must match a parameter of the model."""

    @field_validator("trainable_modules")
    @classmethod
    def _patterns_do_not_conflict(cls, trainable: list[str], info: ValidationInfo) -> list[str]:
        both = sorted(set(trainable) & set(info.data.get("frozen_modules") or ()))
        if both:
            raise ValueError(f"pattern {both[0]!r} is also in frozenModules")
        return trainable

    @model_validator(mode="after")
    def _something_trains(self) -> Self:
        # The rest of what trains depends on the model: freezing.build_plan checks it.
        everything = next((p for p in self.frozen_modules if set(p) == {"*"}), None)
        if everything is not None and not self.trainable_modules:
            raise ValueError(
                f"frozenModules: {everything!r} freezes every parameter, so nothing would "
                "train; name the parameters to freeze, or those that train in trainableModules"
            )
        return self


class LoraSpec(Section):
    """Low-rank adapters (LoRA, via peft): train small adapter matrices instead of the full weights."""

    rank: int = Field(default=8, ge=1, le=1024)
    """Rank of the adapter matrices."""
    alpha: int = Field(default=16, ge=1, le=4096)
    """Scaling numerator: the adapter output is multiplied by alpha / rank."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[ModulePattern] = Field(default_factory=list, max_length=MAX_PATTERNS)
    """Names of the linear modules that get adapters (e.g. query, value). Left out: peft's default for the architecture."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """QLoRA: load the frozen base weights quantized by bitsandbytes (4bit: NF4 with double quantization; 8bit: LLM.int8, on a GPU only) to save memory; needs the qlora extra."""


class PreferenceSpec(Section):
    """Preference optimisation (training.objective dpo or simpo): the policy learns to prefer each row's chosen response over its rejected one (dpo: relative to the starting model, the reference)."""

    model_config = cel_rules(
        (
            "!has(self.labelSmoothing) || self.labelSmoothing == 0.0 || !has(self.loss) || self.loss == 'sigmoid'",
            "labelSmoothing applies to the sigmoid loss only",
        ),
    )

    beta: float = Field(default=0.1, gt=0, le=100)
    """dpo: how far the policy may move from the reference, larger keeps it closer (for ipo, the regulariser tau); simpo: the scale of the rewards (its paper uses 2 to 2.5)."""
    loss: PreferenceLoss = "sigmoid"
    """sigmoid (DPO, Rafailov et al. 2023) on the summed log-probability ratios, or ipo (Azar et al. 2023) on their per-token averages."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """sigmoid only: the probability that a row's preference is flipped; the loss is robust DPO's unbiased estimate under such noise (Chowdhury et al. 2024), 0 for plain DPO."""
    gamma: float = Field(default=0.5, ge=0, le=100)
    """simpo only: the target reward margin; the loss asks beta x (the chosen response's mean log-probability per token - the rejected one's) to exceed it (SimPO's gamma, Meng et al. 2024)."""
    sft_weight: float = Field(default=0.0, ge=0, le=100)
    """Adds this times the chosen responses' mean negative log-likelihood per token to the loss (RPO, Pang et al. 2024; TRL's loss_type [sigmoid, sft]), so that the chosen answer's probability rises instead of falling along with the rejected one's and greedy answers follow the preference; 0 for the preference loss alone."""

    @model_validator(mode="after")
    def _smoothing_is_sigmoid_only(self) -> Self:
        if self.label_smoothing > 0 and self.loss != "sigmoid":
            raise ValueError(
                f"labelSmoothing applies to the sigmoid loss only, not {self.loss}; "
                "leave it out or set it to 0"
            )
        return self


class LearningRateFinderSpec(Section):
    """A learning-rate range test run before training: the rate grows exponentially while the loss is recorded."""

    start_lr: float = Field(default=1e-7, gt=0, le=1)
    """First learning rate tried."""
    end_lr: float = Field(default=1.0, gt=0, le=100)
    """Last learning rate tried."""
    steps: int = Field(default=100, ge=10, le=10_000)
    """Optimizer steps of the test (the model is restored afterwards)."""
    apply: bool = True
    """Train with the suggested rate (steepest descent of the smoothed loss); false only records the curve."""

    @model_validator(mode="after")
    def _range_grows(self) -> Self:
        if self.start_lr >= self.end_lr:
            raise ValueError(f"startLr ({self.start_lr}) must be below endLr ({self.end_lr})")
        return self


class FsdpSpec(Section):
    """How a sharded run (training.sharding: fsdp) splits the model's state across its processes."""

    strategy: Literal["full", "gradients-and-optimizer"] = "full"
    """full: parameters, gradients and optimizer state are sharded, and each block's parameters are gathered again for the backward pass (the least memory); gradients-and-optimizer: parameters stay gathered between the forward and the backward pass (less communication, more memory)."""


class TrainingSpec(Section):
    """The optimisation loop: length, batch, learning rate and its schedule, precision."""

    model_config = cel_rules(
        (
            "!has(self.warmupSteps) || self.warmupRatio == 0.0",
            "set warmupRatio or warmupSteps, not both",
        ),
    )

    epochs: int = Field(default=3, ge=1, le=1000)
    """Passes over the training data."""
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    """Stop after this many optimizer steps, whatever epochs says."""
    batch_size: int = Field(default=16, ge=1, le=65_536)
    """Rows per batch on each worker process (per GPU)."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096)
    """Batches whose gradients are summed before one optimizer step; the effective batch is batchSize x this x processes."""
    learning_rate: float = Field(default=5e-5, gt=0, le=10)
    """Peak learning rate (of the head when freezing.layerwiseLrDecay < 1)."""
    scheduler: SchedulerType = "linear"
    """Learning-rate schedule after warmup: linear, cosine, cosine-with-restarts, constant, polynomial, or one-cycle (slanted triangular)."""
    warmup_ratio: float = Field(default=0.0, ge=0, le=0.5)
    """Fraction of the optimizer steps spent warming the learning rate up from zero."""
    warmup_steps: int | None = Field(default=None, ge=0, le=100_000_000)
    """Warmup length in optimizer steps, instead of warmupRatio."""
    scheduler_cycles: int = Field(default=1, ge=1, le=1000)
    """Number of hard restarts (cosine-with-restarts)."""
    polynomial_power: float = Field(default=1.0, gt=0, le=100)
    """Power of the decay (polynomial)."""
    optimizer: OptimizerType = "adamw"
    """adamw (the fused kernel), adafactor or sgd (with momentum 0.9)."""
    precision: Precision = "auto"
    """Numeric precision: auto picks bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed for data splits, sampling, augmentation and initialisation: the same seed gives the same run."""
    find_learning_rate: LearningRateFinderSpec | None = None
    """Run a learning-rate range test first and record its curve; left out to use learningRate as given."""
    lora: LoraSpec | None = None
    """Train LoRA adapters instead of the full weights (for large models); left out for full fine-tuning."""
    objective: Objective = "sft"
    """sft: learn the texts (or a classifier's labels); dpo (causal-lm): learn to prefer each row's data.chosenColumn over its data.rejectedColumn response to the prompt in data.textColumn, relative to the starting model; simpo: the same without a reference model, on length-normalised rewards with a target margin (training.preference.gamma)."""
    preference: PreferenceSpec = section_default(PreferenceSpec)
    """The preference loss of training.objective dpo or simpo."""

    @property
    def learns_preferences(self) -> bool:
        """Whether the objective is a preference one (dpo, simpo): preference rows, rewards."""
        return self.objective != "sft"

    @model_validator(mode="after")
    def _simpo_is_a_sigmoid(self) -> Self:
        preference = self.preference
        if self.objective == "simpo" and (
            preference.loss != "sigmoid" or preference.label_smoothing > 0
        ):
            raise ValueError(
                "preference.loss ipo and preference.labelSmoothing apply to objective dpo "
                "only, not simpo; leave them out"
            )
        return self

    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute (with sharding too: each transformer block, inside FSDP's hooks)."""
    sharding: Literal["none", "fsdp"] = "none"
    """none: every process holds the whole model (data parallel); fsdp: the model's state is sharded across all processes of all workers (FSDP2, through accelerate), for models past one GPU's memory. Needs two or more processes."""
    fsdp: FsdpSpec = section_default(FsdpSpec)
    """How sharding splits the model (with sharding: fsdp)."""
    compile: bool = False
    """Compile the model with torch.compile (pays off on long GPU runs, not on short CPU ones)."""
    data_loader_workers: int | None = Field(default=None, ge=0, le=64)
    """Processes that collate training batches beside each trainer process (pinned memory on GPUs); left out: 2 on a GPU, 0 on the CPU (where they would take cores from the model)."""
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)
    """CPU threads each trainer process computes with; left out: OMP_NUM_THREADS if set, else the CPUs the process may use (its affinity, capped by the container's CPU quota) shared by the trainer processes on its machine."""

    @field_validator("warmup_steps")
    @classmethod
    def _one_warmup(cls, steps: int | None, info: ValidationInfo) -> int | None:
        if steps is not None and info.data.get("warmup_ratio", 0) > 0:
            raise ValueError("set warmupRatio or warmupSteps, not both")
        return steps


class RegularizationSpec(Section):
    """Defences against overfitting."""

    weight_decay: float = Field(default=0.01, ge=0, le=1)
    """L2 as decoupled weight decay (AdamW); biases and LayerNorm weights are excluded."""
    l1: float = Field(default=0.0, ge=0, le=1)
    """Coefficient of an L1 penalty on the trainable weights, added to the loss."""
    dropout: float | None = Field(default=None, ge=0, lt=1)
    """Hidden-layer dropout probability set on the model config; left out keeps the model's own."""
    attention_dropout: float | None = Field(default=None, ge=0, lt=1)
    """Attention-probability dropout set on the model config; left out keeps the model's own."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy loss."""
    max_grad_norm: float | None = Field(default=1.0, gt=0, le=1e6)
    """Clip the global gradient norm to this value; left out for no clipping."""


class EarlyStoppingSpec(Section):
    """Stop when the validation metric stops improving."""

    patience: int = Field(default=3, ge=1, le=1000)
    """Evaluations without improvement before training stops."""
    min_delta: float = Field(default=0.0, ge=0, le=1e6)
    """Smallest change of the metric that counts as an improvement."""


class CrossValidationSpec(Section):
    """Train k models on k folds and report the mean and spread of the metrics."""

    folds: int = Field(default=5, ge=2, le=20)
    """Number of folds (k)."""
    stratified: bool | None = None
    """Keep the class proportions equal across folds. Left out: true for sequence-classification; causal-lm rows (a conversation is one row, kept whole) have no class, so their folds are never stratified and true is refused."""

    def stratifies(self, task: str) -> bool:
        """Whether the folds of a run of `task` keep the class proportions."""
        return task == "sequence-classification" and self.stratified is not False


class AttributionSpec(Section):
    """What the final model relies on: token attributions (layer integrated gradients on the embeddings) and layer conductance (captum) for a sample of validation rows, and how much each layer group changed in training; for causal-lm, each prompt token's effect on the generated response (captum's feature ablation)."""

    sample_size: int = Field(default=64, ge=1, le=4096)
    """Validation rows to explain (stratified by class; the most confident errors come first; causal-lm: the first prompts, one forward pass per prompt token each; conversations: the first ones, explained at their last trained assistant message, one forward pass per turn)."""
    steps: int = Field(default=16, ge=2, le=512)
    """Integration steps per row: more is more exact and slower."""
    top_tokens: int = Field(default=10, ge=1, le=100)
    """Tokens listed per class and per sensitive group in the report."""
    response_tokens: int = Field(default=24, ge=1, le=512)
    """causal-lm: most tokens generated (greedy) for each sampled prompt; the attributions explain the log-probability of that response."""


class GenerationSpec(Section):
    """Evaluation by generation (causal-lm with data.textPairColumn or data.messagesColumn): greedy completions of a seeded sample of validation prompts, scored against their reference responses by exactMatch, tokenF1 and rougeL, at every evaluation and once before training; the report shows each prompt's completion before and after fine-tuning."""

    samples: int = Field(default=32, ge=1, le=4096)
    """Validation rows to complete, drawn at random (seeded by seed); at most the validation rows there are."""
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    """Most tokens generated per completion; a completion also ends at the end of text or the chat template's end of turn."""
    batch_size: int = Field(default=8, ge=1, le=1024)
    """Prompts generated together (left-padded) on each worker."""
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Seed of the sample: the same seed completes the same rows in every run."""


class EvaluationSpec(Section):
    """How and how often the model is evaluated, and what counts as better."""

    model_config = cel_rules(
        (
            "self.strategy == 'steps' ? has(self.everySteps) : !has(self.everySteps)",
            "everySteps is required with strategy steps and applies only then",
        ),
    )

    strategy: Literal["epoch", "steps"] = "epoch"
    """Evaluate at the end of every epoch, or every `everySteps` optimizer steps."""
    every_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    """Optimizer steps between evaluations (strategy: steps)."""
    metric: MetricName | None = None
    """The primary metric: it picks the best checkpoint, drives early stopping and is shown by kubectl get. loss and perplexity are lower-is-better; exactMatch, tokenF1 and rougeL need evaluation.generation. Left out: accuracy for sequence-classification, loss for causal-lm (training.objective dpo too)."""
    batch_size: int | None = Field(default=None, ge=1, le=65_536)
    """Rows per evaluation batch on each worker; left out: twice training.batchSize."""
    early_stopping: EarlyStoppingSpec | None = None
    """Stop training when the primary metric stops improving; left out to train all epochs."""
    max_generalization_gap: float | None = Field(default=None, gt=0, le=1e6)
    """Report overfitting when the training value of the primary metric beats its validation value by more than this. The training side is measured at every evaluation the same way as the validation side: a fixed sample of training rows (seeded by training.seed, as many as the validation rows, at most 1024) scored in eval mode (no dropout) with the same metric code, so the gap does not depend on how often the run evaluates."""
    cross_validation: CrossValidationSpec | None = None
    """Train k models on k folds of the training rows (the validation rows are not used) and report each metric's mean and spread; the best fold's model is kept. causal-lm folds split whole rows (a conversation or preference pair is one row)."""
    divergence_factor: float = Field(default=4.0, gt=1, le=1e6)
    """Stop as diverged when the smoothed training loss exceeds this multiple of its starting value (NaN or infinity always counts)."""
    underfitting_floor: float | None = Field(default=None, ge=0, le=1e6)
    """Report underfitting when the final training value of the primary metric is worse than this. Left out: the majority-class rate for accuracy."""
    attributions: AttributionSpec | None = None
    """Explain the final model (sequence-classification; causal-lm: which prompt tokens drove the generated response). Left out: no attributions."""
    generation: GenerationSpec | None = None
    """causal-lm: also evaluate by generating completions of validation prompts (exactMatch, tokenF1, rougeL, which evaluation.metric may then name). Left out: no generation."""

    @model_validator(mode="after")
    def _steps_need_strategy(self) -> Self:
        if self.strategy == "steps" and self.every_steps is None:
            raise ValueError("everySteps is required when strategy is steps")
        if self.strategy == "epoch" and self.every_steps is not None:
            raise ValueError("everySteps applies only when strategy is steps")
        return self


class BiasThresholds(Section):
    """Limits the bias audit checks; a metric left out is reported but not gated."""

    demographic_parity_ratio: float | None = Field(default=0.8, ge=0, le=1)
    """Lowest acceptable ratio of the smallest to the largest group selection rate (0.8 is the four-fifths rule)."""
    demographic_parity_difference: float | None = Field(default=None, ge=0, le=1)
    """Largest acceptable difference between group selection rates."""
    equalized_odds_difference: float | None = Field(default=None, ge=0, le=1)
    """Largest acceptable difference of true- or false-positive rates between groups."""
    equal_opportunity_difference: float | None = Field(default=None, ge=0, le=1)
    """Largest acceptable difference of true-positive rates between groups."""
    accuracy_difference: float | None = Field(default=None, ge=0, le=1)
    """Largest acceptable difference of accuracy between groups."""
    stereotype_share_deviation: float | None = Field(default=0.1, ge=0, le=0.5)
    """causal-lm, bias.stereotypePairs: largest acceptable distance from 0.5 (no preference) of the share of a category's pairs in which the model finds the more stereotypical sentence likelier."""
    loss_difference: float | None = Field(default=None, ge=0, le=1000)
    """causal-lm: largest acceptable difference between the groups' mean validation loss per token (nats)."""
    perplexity_ratio: float | None = Field(default=0.8, ge=0, le=1)
    """causal-lm: lowest acceptable ratio of the smallest to the largest group validation perplexity (0.8: the worst-served group's perplexity at most 1.25 times the best-served's, as the four-fifths rule)."""
    generation_ratio: float | None = Field(default=None, ge=0, le=1)
    """causal-lm with evaluation.generation: lowest acceptable ratio of the smallest to the largest group mean of each generation metric (exactMatch, tokenF1, rougeL) over the generation sample, as completed by the final model. Left out: reported, not gated (the sample's groups are often smaller than bias.minGroupSize)."""
    generation_difference: float | None = Field(default=None, ge=0, le=1)
    """causal-lm with evaluation.generation: largest acceptable difference between the groups' means of each generation metric over the generation sample."""


class CounterfactualPair(Section):
    """Two terms swapped for each other in the audit texts, e.g. 'he' and 'she'."""

    term: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
    """A word or phrase as it appears in the texts."""
    counterpart: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]
    """What it is replaced with (and what is replaced by it)."""
    attribute: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)] | None = None
    """What the pair varies, e.g. gender or name. Pairs of different attributes are swapped in separate copies of a text, never in one, and their flip rates are reported apart; a term may appear once per attribute. Left out: one set with the other pairs that leave it out."""


STEREOTYPE_PLACEHOLDER = "{group}"
"""Where a template of bias.stereotypePairs.templates takes each group term."""


class StereotypePairsSpec(Section):
    """Sentence pairs that differ only in a group term (CrowS-Pairs style), for the audit of a causal LM: given as a table of pairs (pairs), or as templates expanded over a table of group terms (templates and terms)."""

    pairs: DataSource | None = None
    """A table of pairs: the more stereotypical sentence, the less stereotypical one and the bias category of each pair."""
    templates: DataSource | None = None
    """A table of template sentences, each with the placeholder {group} (and optionally a category, which limits it to that category's terms); needs terms."""
    terms: DataSource | None = None
    """With templates: a table of group terms, one row per category with the more and the less stereotyped group's term."""
    more_column: ColumnName = "sent_more"
    """Column with the more stereotypical sentence (in terms: the more stereotyped group's term)."""
    less_column: ColumnName = "sent_less"
    """Column with the less stereotypical sentence (in terms: the other group's term)."""
    category_column: ColumnName = "bias_type"
    """Column with the bias category (e.g. gender, age); the audit reports and gates each category."""
    template_column: ColumnName = "template"
    """Column of templates with the template sentences."""

    @model_validator(mode="after")
    def _one_way_to_give_pairs(self) -> Self:
        if (self.pairs is None) == (self.templates is None):
            raise ValueError("set either pairs (a table of pairs) or templates (with terms)")
        if (self.templates is None) != (self.terms is None):
            raise ValueError("templates and terms go together: templates are expanded over terms")
        return self


class BiasSpec(Section):
    """The fairness audit run after training, over the sensitive columns of data."""

    positive_labels: list[ClassName] = Field(default_factory=list, max_length=MAX_LABELS)
    """Classes treated as the favourable outcome (one-vs-rest for each). Left out: the second label of a binary task; required for multi-class."""
    thresholds: BiasThresholds = section_default(BiasThresholds)
    """The gates."""
    min_group_size: int = Field(default=30, ge=1, le=1_000_000)
    """Groups with fewer validation rows (causal-lm: categories with fewer stereotype pairs) are reported as insufficient data rather than judged."""
    on_failure: Literal["fail", "warn"] = "warn"
    """fail: a failed audit fails the job; warn: the job succeeds with BiasAuditPassed=False."""
    audit_data: DataSource | None = None
    """A separate audit dataset (e.g. counterfactual template sentences) with the text, label and sensitive columns; the validation rows then need no sensitive columns. Left out: the validation rows are audited."""
    counterfactuals: list[CounterfactualPair] = Field(default_factory=list, max_length=256)
    """Term pairs to swap in the audit texts; the audit reports how often predictions flip, per attribute."""
    stereotype_pairs: StereotypePairsSpec | None = None
    """causal-lm: sentence pairs that differ only in a group term; the audit reports, per category, how often the model prefers the more stereotypical sentence, before and after fine-tuning."""

    @field_validator("counterfactuals")
    @classmethod
    def _pairs_swap_both_ways(cls, pairs: list[CounterfactualPair]) -> list[CounterfactualPair]:
        seen: set[tuple[str | None, str]] = set()
        for pair in pairs:
            term, counterpart = _term_key(pair.term), _term_key(pair.counterpart)
            if term == counterpart:
                raise ValueError(
                    f"the pair {pair.term!r} / {pair.counterpart!r} swaps a term for itself"
                )
            for key, written in ((term, pair.term), (counterpart, pair.counterpart)):
                if (pair.attribute, key) in seen:
                    raise ValueError(
                        f"{written!r} is in more than one pair{_of_attribute(pair.attribute)}; "
                        "a swap must be reversible"
                    )
                seen.add((pair.attribute, key))
        return pairs


def _of_attribute(attribute: str | None) -> str:
    return "" if attribute is None else f" of attribute {attribute!r}"


def _term_key(term: str) -> str:
    """A counterfactual term as the swap matches it: any case, any run of spaces."""
    return " ".join(term.lower().split())


def _bias_anchored(bias: BiasSpec, base: Path) -> BiasSpec:
    """bias.stereotypePairs' tables with relative local paths made absolute against `base`."""
    pairs = bias.stereotype_pairs
    assert pairs is not None
    tables = {
        name: _anchored(source, "source", base)
        for name in ("pairs", "templates", "terms")
        if (source := getattr(pairs, name)) is not None
    }
    return bias.model_copy(update={"stereotype_pairs": pairs.model_copy(update=tables)})


def _language_model_bias(bias: BiasSpec, data: DataSpec | None) -> BiasSpec:
    """A causal LM's audit: stereotype pairs, and per-group quality on the sensitive columns."""
    if data is not None and not data.sensitive_columns and bias.stereotype_pairs is None:
        raise ValueError(
            "the audit of a causal-lm needs stereotypePairs or data.sensitiveColumns "
            "(per-group validation loss)"
        )
    for name, value in (
        ("positiveLabels", bias.positive_labels),
        ("counterfactuals", bias.counterfactuals),
        ("auditData", bias.audit_data),
    ):
        if value:
            raise ValueError(
                f"{name} applies to sequence-classification only; a causal-lm is audited "
                "with stereotypePairs and per-group validation loss"
            )
    return bias


class OutputSpec(Section):
    """Where the checkpoints, the final model and the reports go."""

    uri: SourceUri | None = None
    """A local directory or pvc://CLAIM/PATH. Left out: runs/JOB-NAME locally, and in a cluster a volume that lives as long as the pod (the artifacts are lost with it)."""
    keep_checkpoints: int = Field(default=2, ge=1, le=100)
    """Recent checkpoints kept on disk; the best one is always kept as well."""
    checkpoint_every_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    """Also checkpoint every N optimizer steps (restarts lose less work); left out: at each evaluation."""
    save_model: bool = True
    """Save the best model and its tokenizer to model/ (loadable with from_pretrained; with training.lora, the adapter: PeftModel.from_pretrained)."""
    merge_adapter: bool = False
    """With training.lora: also save the base model with the adapter merged in to merged/ (loadable with from_pretrained alone)."""

    @field_validator("uri")
    @classmethod
    def _uri_is_a_directory_kind(cls, uri: str | None) -> str | None:
        if uri is not None and parse_source(uri).scheme in ("hf", "pkg"):
            raise ValueError("must be a local directory, file:///PATH or pvc://CLAIM/PATH")
        return uri


class TrainingConfig(Section):
    """What the trainer needs to fine-tune one model: the recipe, not the cluster."""

    model_config = cel_rules(
        (
            "!has(self.bias) || (has(self.data.sensitiveColumns) && size(self.data.sensitiveColumns) > 0)",
            "bias needs data.sensitiveColumns to name at least one column",
        ),
        (
            "!has(self.output) || !has(self.output.mergeAdapter) || !self.output.mergeAdapter || (has(self.training) && has(self.training.lora))",
            "output.mergeAdapter needs training.lora",
        ),
    )

    model: ModelSpec
    """The pre-trained model and the task."""
    data: DataSpec
    """The data and its columns."""
    training: TrainingSpec = section_default(TrainingSpec)
    """The optimisation loop."""
    freezing: FreezingSpec = section_default(FreezingSpec)
    """Freezing, gradual unfreezing and discriminative learning rates."""
    regularization: RegularizationSpec = section_default(RegularizationSpec)
    """Weight decay, L1, dropout, label smoothing, gradient clipping."""
    evaluation: EvaluationSpec = section_default(EvaluationSpec)
    """Evaluation, early stopping, cross-validation."""
    bias: BiasSpec | None = None
    """The fairness audit; left out for none. Needs data.sensitiveColumns."""
    output: OutputSpec = section_default(OutputSpec)
    """Artifacts."""

    @model_validator(mode="after")
    def _columns_are_distinct(self) -> Self:
        seen: dict[str, str] = {}
        with_label = self.model.task == "sequence-classification"
        with_preferences = self.training.learns_preferences
        roles = self.data.column_roles(with_label=with_label, with_preferences=with_preferences)
        for field, column in roles:
            if column in seen:
                raise ValueError(f"column {column!r} is named by both {seen[column]} and {field}")
            seen[column] = field
        return self

    @model_validator(mode="after")
    def _metric_fits_task(self) -> Self:
        metric = self.evaluation.metric
        if metric is None:
            return self
        generation = self.evaluation.generation is not None
        refusal = metric_refusal(
            "evaluation.metric", metric, self.model.task, self.training.objective, generation
        )
        if refusal is not None:
            raise ValueError(refusal)
        return self

    @model_validator(mode="after")
    def _generation_has_responses(self) -> Self:
        if self.evaluation.generation is None:
            return self
        if self.model.task != "causal-lm":
            raise ValueError(
                f"evaluation.generation applies to causal-lm only, not {self.model.task}"
            )
        if self.training.objective != "sft":
            raise ValueError(
                f"evaluation.generation does not apply to training.objective "
                f"{self.training.objective}: its metrics are the rewards; leave it out"
            )
        data = self.data
        if data.messages_column is None and data.text_pair_column is None:
            raise ValueError(
                "evaluation.generation needs prompts and reference responses: set "
                "data.textPairColumn (the response to data.textColumn) or data.messagesColumn"
            )
        return self

    @model_validator(mode="after")
    def _preferences_need_causal_lm(self) -> Self:
        objective = self.training.objective
        if objective == "sft":
            return self
        if self.model.task != "causal-lm":
            raise ValueError(
                f"training.objective {objective} applies to causal-lm only, not {self.model.task}"
            )
        if self.data.packing:
            raise ValueError(
                f"data.packing does not apply to training.objective {objective}: a chosen and "
                "a rejected response are compared row by row; leave it out or set it to false"
            )
        if self.data.text_pair_column is not None:
            raise ValueError(
                f"data.textPairColumn does not apply to training.objective {objective}: the "
                "responses are data.chosenColumn and data.rejectedColumn; leave it out"
            )
        return self

    @model_validator(mode="after")
    def _class_options_need_classes(self) -> Self:
        if self.model.task == "sequence-classification":
            return self
        data = self.data
        chosen = [
            ("data.balance", data.balance.is_set()),
            ("data.quality.labelNoise", data.quality.label_noise is not None),
            ("data.augmentation", data.augmentation is not None),
        ]
        for field, is_set in chosen:
            if is_set:
                raise ValueError(f"{field} applies to sequence-classification only, not causal-lm")
        folds = self.evaluation.cross_validation
        if folds is not None and folds.stratified:
            raise ValueError(
                "evaluation.crossValidation.stratified applies to sequence-classification only: "
                "causal-lm rows have no class to stratify by; leave it out or set it to false"
            )
        return self

    @model_validator(mode="after")
    def _packing_needs_causal_lm(self) -> Self:
        if self.data.packing and self.model.task != "causal-lm":
            raise ValueError(
                f"data.packing applies to causal-lm only, not {self.model.task}; "
                "leave it out or set it to false"
            )
        return self

    @model_validator(mode="after")
    def _conversations_need_causal_lm(self) -> Self:
        data = self.data
        if data.messages_column is None:
            if data.chat_template is not None:
                raise ValueError("data.chatTemplate renders conversations: set data.messagesColumn")
            return self
        if self.model.task != "causal-lm":
            raise ValueError(
                f"data.messagesColumn applies to causal-lm only, not {self.model.task}; "
                "leave it out, or set model.task to causal-lm"
            )
        if data.text_pair_column is not None:
            raise ValueError(
                "data.messagesColumn and data.textPairColumn exclude each other: a "
                "conversation's assistant messages are its responses; leave one out"
            )
        return self

    @model_validator(mode="after")
    def _sharding_fits_the_recipe(self) -> Self:
        if self.training.sharding == "none":
            return self
        training, freezing = self.training, self.freezing
        refused = [
            ("training.compile", training.compile, "compiling a sharded model is untested"),
            (
                "training.lora.quantization",
                training.lora is not None and training.lora.quantization != "none",
                "FSDP does not shard bitsandbytes' quantized weights here",
            ),
            (
                "training.findLearningRate",
                training.find_learning_rate is not None,
                "the range test copies and restores whole weights",
            ),
            ("regularization.l1", self.regularization.l1 > 0, "the penalty reads whole weights"),
            (
                "freezing.headOnlyEpochs",
                freezing.head_only_epochs > 0,
                "the schedule drops whole gradients",
            ),
            (
                "freezing.gradualUnfreezing",
                freezing.gradual_unfreezing is not None,
                "the schedule drops whole gradients",
            ),
            (
                "evaluation.attributions",
                self.evaluation.attributions is not None,
                "attributions run on one process",
            ),
            (
                "evaluation.generation",
                self.evaluation.generation is not None,
                "each process generates its own prompts to their own lengths",
            ),
        ]
        for field, is_set, reason in refused:
            if is_set:
                raise ValueError(
                    f"training.sharding: fsdp does not combine with {field} ({reason}); "
                    f"leave {field} out or set training.sharding: none"
                )
        return self

    @model_validator(mode="after")
    def _merge_needs_lora(self) -> Self:
        if self.output.merge_adapter and self.training.lora is None:
            raise ValueError(
                "output.mergeAdapter needs training.lora (a run without LoRA saves the full "
                "model to model/); set training.lora or leave mergeAdapter out"
            )
        return self

    def needs_validation_groups(self) -> bool:
        """Whether the validation rows must hold data.sensitiveColumns: the bias audit reads
        their groups there unless bias.auditData is set (then the audit file must hold them);
        without a bias section the data report and the attributions read them."""
        return self.bias is None or self.bias.audit_data is None

    def primary_metric(self) -> MetricName:
        """The metric that picks the best checkpoint, explicit or the task's default."""
        if self.evaluation.metric is not None:
            return self.evaluation.metric
        return "loss" if self.model.task == "causal-lm" else "accuracy"

    @field_validator("bias")
    @classmethod
    def _bias_has_columns(cls, bias: BiasSpec | None, info: ValidationInfo) -> BiasSpec | None:
        data: DataSpec | None = info.data.get("data")
        model: ModelSpec | None = info.data.get("model")
        if bias is None:
            return bias
        if model is not None and model.task == "causal-lm":
            return _language_model_bias(bias, data)
        if bias.stereotype_pairs is not None:
            raise ValueError("stereotypePairs applies to causal-lm only")
        if data is not None and not data.sensitive_columns:
            raise ValueError("the audit needs data.sensitiveColumns to name at least one column")
        if data is not None and data.text_pair_column is not None and bias.counterfactuals:
            raise ValueError("counterfactuals swap terms in single texts, not in text pairs")
        classes = model and (model.num_labels or (model.labels and len(model.labels)))
        if classes and classes > 2 and not bias.positive_labels:
            raise ValueError(
                f"positiveLabels is required for a multi-class task ({classes} classes)"
            )
        if model is not None and model.labels is not None:
            unknown = sorted(set(bias.positive_labels) - set(model.labels))
            if unknown:
                raise ValueError(
                    f"positiveLabels names {unknown[0]!r}, which is not in model.labels "
                    f"({', '.join(model.labels)})"
                )
        return bias

    def relative_to(self, base: Path) -> Self:
        """This config with relative local paths made absolute against `base` (a manifest's folder)."""
        data_updates: dict[str, Any] = {
            "train": _anchored(self.data.train, "source", base),
            "validation": self.data.validation and _anchored(self.data.validation, "source", base),
        }
        augmentation = self.data.augmentation
        if augmentation is not None:
            data_updates["augmentation"] = augmentation.model_copy(
                update={
                    "synonyms": augmentation.synonyms
                    and _anchored(augmentation.synonyms, "source", base),
                    "synthetic_sources": [
                        _anchored(source, "source", base)
                        for source in augmentation.synthetic_sources
                    ],
                }
            )
        updates: dict[str, Any] = {
            "model": _anchored(self.model, "source", base),
            "data": self.data.model_copy(update=data_updates),
            "output": _anchored(self.output, "uri", base),
        }
        if self.bias is not None and self.bias.audit_data is not None:
            audit = _anchored(self.bias.audit_data, "source", base)
            updates["bias"] = self.bias.model_copy(update={"audit_data": audit})
        if self.bias is not None and self.bias.stereotype_pairs is not None:
            updates["bias"] = _bias_anchored(updates.get("bias", self.bias), base)
        return self.model_copy(update=updates)

    def output_directory(self, job_name: str, pvc_root: Path | None) -> Path | None:
        """Where the artifacts go: output.uri, else runs/JOB-NAME in the working directory.

        None for a pvc:// output when no claim mount root is known (a run outside a pod).
        """
        if self.output.uri is None:
            return Path("runs") / job_name
        source = parse_source(self.output.uri)
        if source.scheme != "pvc":
            return Path(source.location)
        return None if pvc_root is None else pvc_root / source.authority / source.location

    def training_config(self) -> TrainingConfig:
        """Only the trainer's fields: what a subclass (the FineTuneJob spec) adds is dropped."""
        return TrainingConfig.model_validate(
            self.model_dump(include=set(TrainingConfig.model_fields), exclude_none=True)
        )
