"""The fine-tuning recipe: setup(), train(), evaluate(), save_checkpoint(), cleanup().

One recipe serves a laptop run and every pod of a distributed job: accelerate decides the
device, the precision and the process group; the recipe only uses its primitives
(`prepare`, `accumulate`, `backward`, `clip_grad_norm_`, `gather_for_metrics`,
`save_state` / `load_state`, `skip_first_batches`). A restarted pod finds the newest
checkpoint in the output directory and continues from the exact batch it stopped at.

Asked to stop (SIGTERM: a suspended, preempted, evicted or drained worker group; or Ctrl-C,
SIGINT, in a terminal), the run stops at its next logged step, every process at the same
one, saves a checkpoint there and ends as interrupted; the next group resumes from that
checkpoint. A signal handler runs between bytecodes of the main thread, so it only sets a
flag; the flag travels in the collective that already reduces the logged loss, so the
check costs no extra sync. After the last step (the final phase: loading the best
checkpoint, examining it, saving it) the processes agree on the flag before each part, and
a stop skips what is left: the checkpoint of the last step is there to resume from, and
the next start does the final phase again.
A SIGTERM that comes once the model is saved changes nothing. A second Ctrl-C in a run
without a launcher stops it at once (KeyboardInterrupt), losing the steps since the last
checkpoint; under a launcher the second SIGINT is torch's elastic agent passing the first
one on, so it only asks again.

A checkpoint save that finds the disk full ends the run as failed with one line (see
disk_space.py): the last complete checkpoint is kept, and report.json says why.

Rank 0 beats (heartbeat.py) from the code that makes progress, phase by phase: setup's
loads and data preparation, every optimizer step, every evaluation and examination batch,
every save. A phase beats as it begins and after each piece of its work, and training beats
again once a step's log, evaluation or save is done, so a stall names the phase the run was
in when it stopped moving, not the last one it finished. A run that stops beating for
runPolicy.stallTimeout is stuck, and is stopped (watchdog.py locally, the operator in a
cluster). The test hook of hang.py makes it hang for real, at the points its docstring
names.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import datasets
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from rich.console import Console
from torch.utils.data import DataLoader
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, PreTrainedModel
from transformers.utils import logging as transformers_logging

from kubetune_trainer import freezing, schedules
from kubetune_trainer.checkpoints import (
    CHECKPOINTS,
    checkpoint_name,
    latest_checkpoint,
    parse_checkpoint_step,
    saved_checkpoints,
)
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.cost import (
    LEDGER_FILE,
    Budget,
    BudgetError,
    GpuMeter,
    Ledger,
    RunCost,
    resumed_gpu_hours,
)
from kubetune_trainer.data import (
    IGNORED_LABEL,
    AuditRows,
    DataError,
    LengthGroupedSampler,
    PackedCollator,
    PreparedData,
    pack_rows,
    packing_summary,
    prepare_audit_rows,
    prepare_data,
)
from kubetune_trainer.data.balance import class_balanced_weights
from kubetune_trainer.data.cache import cached_prepare
from kubetune_trainer.data.report import failed_status
from kubetune_trainer.diagnosis import (
    Diagnosis,
    DivergenceMonitor,
    EvalPoint,
    RunSetup,
    diagnose,
)
from kubetune_trainer.disk_space import (
    DiskFullError,
    full_disk_message,
    is_out_of_space,
    state_bytes,
)
from kubetune_trainer.examine.audit import BiasAudit, positive_classes
from kubetune_trainer.examine.final_model import FinalModel, examine_final_model, predict
from kubetune_trainer.examine.interpret import LayerSnapshot, snapshot_layer_groups
from kubetune_trainer.file_modes import publish
from kubetune_trainer.flops import (
    ModelShape,
    Throughput,
    ThroughputCounts,
    device_peak,
    shape_from_config,
)
from kubetune_trainer.hang import HangHook
from kubetune_trainer.heartbeat import HEARTBEAT_FILE, Heartbeat
from kubetune_trainer.metrics import classification_metrics, is_better, language_model_metrics
from kubetune_trainer.modeling import load_model, load_tokenizer
from kubetune_trainer.report.progress import (
    EvalRecord,
    NullReporter,
    Outcome,
    Phase,
    Reporter,
    RunInfo,
    StepRecord,
    build_reporter,
    plain_console,
)
from kubetune_trainer.report.summary import REPORT_HTML, REPORT_JSON, build_report, write_reports
from kubetune_trainer.schedules import (
    build_optimizer,
    build_scheduler,
    run_range_test,
    warmup_steps,
)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""What asks a run to stop with a checkpoint: Kubernetes stopping a pod, Ctrl-C in a terminal."""
PARTIAL_PREFIX = ".partial-"
"""A checkpoint being written: hidden, and never matching CHECKPOINT_PREFIX."""
MODEL_DIR = "model"
CACHE_DIR = "cache"
"""Under the output folder: the prepared data of the last start (data_cache)."""
MAX_LOGS_PER_RUN = 200
"""Logging reduces the loss across processes (a host sync): keep it to a few hundred times a run."""


@dataclass
class TrainingState:
    """What a resumed run needs besides weights, optimizer and RNGs; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_checkpoint: str = ""
    evaluations_without_improvement: int = 0
    train_losses: list[list[float]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    freezing_log: list[dict[str, Any]] = field(default_factory=list)
    range_test: dict[str, Any] | None = None
    learning_rates: list[list[float]] = field(default_factory=list)
    """[step, the highest group's learning rate] at every logged step."""
    layer_grad_norms: list[list[Any]] = field(default_factory=list)
    """[step, {layer group: gradient norm before clipping}] at every logged step."""
    gpu_hours: float = 0.0
    """GPU-hours of the run when the checkpoint was saved, earlier starts included."""

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)


@dataclass(frozen=True)
class RunResult:
    """How a run ended and where its outputs are."""

    succeeded: bool
    message: str
    output_dir: Path
    metrics: dict[str, float]
    diagnosis: Diagnosis
    report: dict[str, Any]
    budget_exceeded: bool = False
    """Stopped by runPolicy.maxGpuHours (with a checkpoint to resume from)."""
    interrupted: bool = False
    """Stopped by SIGTERM or Ctrl-C (with a checkpoint to resume from); neither failed nor
    done."""

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.succeeded, self.budget_exceeded, self.interrupted)


def outcome_of(succeeded: bool, budget_exceeded: bool, interrupted: bool) -> Outcome:
    """A stop that leaves a checkpoint to continue from is neither a success nor a failure."""
    if budget_exceeded:
        return "budgetExceeded"
    if interrupted:
        return "interrupted"
    return "succeeded" if succeeded else "failed"


class TrainingFailedError(Exception):
    """Training ran but its result must not be used (diverged)."""


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy averaged with class and row weights: sum(w * ce) / sum(w)."""
    if class_weights is None and row_weights is None:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    per_row = F.cross_entropy(
        logits.float(), labels, label_smoothing=label_smoothing, reduction="none"
    )
    weights = torch.ones_like(per_row) if class_weights is None else class_weights[labels]
    if row_weights is not None:
        weights = weights * row_weights.float()
    return (per_row * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed next-token loss and the number of tokens it covers."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    per_token = F.cross_entropy(
        shifted_logits.flatten(0, 1),
        shifted_labels.flatten(),
        ignore_index=IGNORED_LABEL,
        reduction="none",
    ).view(shifted_labels.shape)
    return per_token.sum(dim=1), (shifted_labels != IGNORED_LABEL).sum(dim=1)


def l1_penalty(parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    """Sum of absolute values of the given weights."""
    return torch.stack([p.abs().sum() for p in parameters]).sum()


def mixed_precision(precision: str) -> str:
    """accelerate's mixed-precision mode for the configured precision on this machine."""
    if precision == "fp32" or not torch.cuda.is_available():
        return "no"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


class Recipe:
    """One fine-tuning run of one TrainingConfig into one output directory."""

    # Running sums kept on the device between logs and evaluations (see _reset_windows).
    _loss_sum: torch.Tensor
    _loss_batches: int
    _interval_loss_sum: torch.Tensor
    _interval_batches: int
    _interval_predictions: list[torch.Tensor]
    _interval_labels: list[torch.Tensor]
    _window: ThroughputCounts
    _run_counts: ThroughputCounts
    """This start's logged windows together: the report's mean tokens/s and MFU."""
    _batch_shape: tuple[int, int]
    """Rows and padded width of the batch in training."""
    _window_started: float
    _grad_norm: torch.Tensor | None
    _log_every: int
    _budget_spent: bool
    _interrupted: bool
    """Some process was asked to stop (SIGTERM, Ctrl-C): every process stops at this logged
    step (or part of the final phase)."""
    _stop_signal: str | None
    """The signal that asked this process to stop, SIGTERM or SIGINT (set by the signal
    handler, read at the next logged step); None until one comes."""
    snapshot: LayerSnapshot | None
    layer_parameters: dict[str, list[torch.nn.Parameter]]
    audit_rows: AuditRows | None
    _attempts: int
    """Starts of the run, this one included (from rank 0's ledger)."""

    def __init__(
        self,
        config: TrainingConfig,
        output_dir: Path,
        *,
        job_name: str,
        env: Mapping[str, str] = os.environ,
        console: Console | None = None,
        data: PreparedData | None = None,
        others_gpu_hours: float = 0.0,
    ) -> None:
        """`others_gpu_hours`: GPU-hours of the runs before this one under the same budget
        (a cross-validation's earlier folds)."""
        self.config = config
        self.output_dir = output_dir
        self.job_name = job_name
        self.env = env
        self.console = console or plain_console()
        self.data = data
        self.others_gpu_hours = others_gpu_hours
        self._attempts = 1  # until the ledger of earlier starts is read (_resume_gpu_count)
        self.resumed_from: Path | None = None
        self._trainable_cache: tuple[Any, frozenset[str], list[torch.nn.Parameter]] = (
            None,
            frozenset(),
            [],
        )
        self._logged_stage: tuple[str, ...] | None = None
        self.state = TrainingState()
        self.timings: dict[str, float] = {}
        self.heartbeat = Heartbeat(
            output_dir / HEARTBEAT_FILE, NullReporter(), lambda: 0, enabled=False
        )
        """Silent until setup knows the rank and the reporter (_start_heartbeat)."""
        self.hang = HangHook.from_env(env, output_dir)
        """The test hook of hang.py (inert unless a test sets it)."""

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Load data and model, build optimizer and schedule, prepare, resume if possible."""
        started = time.perf_counter()
        meter_started = time.monotonic()
        training = self.config.training
        self.budget = Budget.from_env(self.env)
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision(training.precision),
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            dynamo_backend="inductor" if training.compile else "no",
            # Pinned batches are copied to the GPU while the previous step still runs.
            dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        )
        self.processes = int(self.accelerator.num_processes)
        self.meter = GpuMeter(self.gpus, started=meter_started, others=self.others_gpu_hours)
        set_seed(training.seed)
        if not self.console.is_terminal:  # progress bars in a log file are noise
            datasets.disable_progress_bars()
            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.reporter: Reporter = build_reporter(
            rank_zero=self.accelerator.is_main_process,
            output_dir=self.output_dir,
            env=self.env,
            console=self.console,
        )
        self._start_heartbeat()
        with self.accelerator.main_process_first():
            self._beat("LoadingModel")
            self.tokenizer = load_tokenizer(self.config)
            if self.data is None:
                self._say("preparing data: reading, checking and tokenizing the rows")
                self.data = self._prepare_data()
        self.reporter.section("dataValidation", self.data.report.to_status())
        self._check_bias_settings()
        self._beat("PreparingData")
        self.audit_rows = prepare_audit_rows(self.config, self.tokenizer, self.data.labels)
        self._say(f"loading the model {self.config.model.source}")
        self._build_model_and_loaders()
        self._maybe_find_learning_rate()
        self._build_scheduler()
        self.accelerator.register_for_checkpointing(self.state)
        self._resume_from_latest_checkpoint()
        self._resume_gpu_count()
        self.timings["setupSeconds"] = time.perf_counter() - started

    def _start_heartbeat(self) -> None:
        """Rank 0's heartbeat, to its reporter and heartbeat.json."""
        self.heartbeat = Heartbeat(
            self.output_dir / HEARTBEAT_FILE,
            self.reporter,
            lambda: self.state.step,
            enabled=self.accelerator.is_main_process,
        )
        self._beat("Starting")

    def _beat(self, phase: Phase) -> None:
        """Progress in `phase` (rank 0 only: the others' heartbeat is off)."""
        self.heartbeat.beat(phase)

    def _say(self, line: str) -> None:
        """What setup does now, on rank 0: its phases take seconds to minutes."""
        if self.accelerator.is_main_process:
            self.console.print(line, markup=False)

    def _resume_gpu_count(self) -> None:
        """Continue the GPU-hours of the earlier starts from the checkpoint's count or rank 0's
        ledger, whichever is larger (cost.py says why), and count this start in the ledger."""
        ledger = self._read_ledger_everywhere()
        self.meter.resume(resumed_gpu_hours(self.state.gpu_hours, ledger))
        self._attempts = ledger.attempts + 1
        self._write_ledger()

    def _read_ledger_everywhere(self) -> Ledger:
        """Rank 0's ledger, on every process: a malformed one stops them all with its message
        instead of rank 0 alone, with the others left waiting at the next collective."""
        read: list[Ledger | str] = [Ledger()]
        if self.accelerator.is_main_process:
            try:
                read = [Ledger.read(self.ledger_path)]
            except BudgetError as error:
                read = [str(error)]
        broadcast_object_list(read)
        if isinstance(read[0], str):
            raise BudgetError(read[0])
        return read[0]

    @property
    def ledger_path(self) -> Path:
        return self.output_dir / LEDGER_FILE

    def _write_ledger(self) -> None:
        """Rank 0 records the run's own GPU-hours so far, for a start after a crash."""
        if self.accelerator.is_main_process:
            Ledger(self.meter.own_gpu_hours(), self._attempts).write(self.ledger_path)

    def _prepare_data(self) -> PreparedData:
        """The data from the cache of an earlier start, or prepared now; failures go to status."""
        self._beat("PreparingData")
        try:
            data, cached = cached_prepare(
                self.config,
                self.tokenizer,
                self.output_dir / CACHE_DIR,
                lambda config, tokenizer: prepare_data(
                    config, tokenizer, lambda: self._beat("PreparingData")
                ),
            )
        except DataError as error:
            self.reporter.section("dataValidation", failed_status(str(error)))
            raise
        if cached:
            self.console.print(
                f"Data: prepared rows read from {self.output_dir / CACHE_DIR}", markup=False
            )
        return data

    def _check_bias_settings(self) -> None:
        """Refuse, before any training, a bias section that the data's classes cannot audit."""
        spec = self.config.bias
        if spec is None or self.data is None or self.is_language_model:
            return
        try:
            positive_classes(self.data.labels, spec)
        except ValueError as error:
            raise DataError(f"bias.positiveLabels: {error}") from None

    def _build_model_and_loaders(self) -> None:
        assert self.data is not None
        self._beat("LoadingModel")
        model = load_model(self.config, self.data.labels)
        self._beat("LoadingModel")
        self.train_rows = self._training_rows()
        self.steps_per_epoch = self._steps_per_epoch(len(self.train_rows))
        self.plan = freezing.build_plan(model, self.config.freezing, self.steps_per_epoch)
        freezing.freeze_permanently(model, self.plan)
        groups = schedules.optimizer_groups(
            model,
            self.plan,
            self.config.training.learning_rate,
            self.config.regularization.weight_decay,
        )
        optimizer = build_optimizer(self.config.training, groups)
        self.snapshot = self._initial_weights(model)
        parameters = dict(model.named_parameters())
        self.layer_parameters = {
            group: [parameters[name] for name in names]
            for group, names in freezing.find_layer_groups(model).named().items()
            if names
        }
        self._layer_grad_norms: torch.Tensor | None = None
        self.model, self.optimizer, self.train_loader, self.eval_loader = self.accelerator.prepare(
            model, optimizer, *self._loaders()
        )
        self._peak_flops, self._flops_shape = self._mfu_basis(model)
        decaying = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        self.l1_parameters = [
            (name, p) for name, p in model.named_parameters() if id(p) in decaying
        ]
        self.class_weights = (
            None
            if self.data.class_weights is None
            else torch.tensor(self.data.class_weights, device=self.accelerator.device)
        )

    def _mfu_basis(self, model: torch.nn.Module) -> tuple[float | None, ModelShape | None]:
        """The device's peak and the model's shape, both needed for MFU: known on a GPU in
        flops.py's table for a model whose config names its sizes, else (None, None), and
        MFU is never estimated (flops.py says what the count leaves out, LoRA among it)."""
        device = self.accelerator.device
        peak = device_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        if peak is None:
            return None, None
        try:  # a LoRA model hands its base model's config on
            shape = shape_from_config(
                getattr(model, "config", None), causal_lm=self.is_language_model
            )
        except ValueError:
            return None, None
        return peak.bf16_flops, shape

    def _initial_weights(self, model: torch.nn.Module) -> LayerSnapshot | None:
        """The pre-trained weights per layer group, on rank 0, when the run explains its model
        (taken before a resume restores trained weights)."""
        wanted = self.config.evaluation.attributions is not None and not self.is_language_model
        return snapshot_layer_groups(model) if wanted and self.accelerator.is_main_process else None

    def _training_rows(self) -> datasets.Dataset:
        """The rows the training loader draws: with data.packing the training rows packed
        into sequences of data.maxLength tokens (the data report gets the packing's numbers),
        else the training rows as prepared. Validation rows are never packed."""
        assert self.data is not None
        if not self.config.data.packing:
            return self.data.train
        packed = pack_rows(self.data.train, self.config.data.max_length)
        training = self.config.training
        self.data.report.packing = packing_summary(
            packed, self.data.train["length"][:], training.batch_size, training.seed
        )
        return packed.rows

    def _loaders(self) -> tuple[DataLoader[Any], DataLoader[Any]]:
        assert self.data is not None
        collator: Any = (
            DataCollatorForSeq2Seq(
                self.tokenizer, label_pad_token_id=IGNORED_LABEL, pad_to_multiple_of=8
            )
            if self.is_language_model
            else DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=8)
        )
        # Packed sequences bring position_ids and no attention_mask; what pads them is
        # never attended to, so a tokenizer without a pad token may pad with id 0.
        train_collator = (
            PackedCollator(self.tokenizer.pad_token_id or 0)
            if self.config.data.packing
            else collator
        )
        columns = [c for c in self.train_rows.column_names if c != "length"]
        training = self.config.training
        workers = self._data_loader_workers()
        loading: dict[str, Any] = {
            "num_workers": workers,
            "pin_memory": self.accelerator.device.type == "cuda",
            "persistent_workers": workers > 0,
        }
        sampler = LengthGroupedSampler(
            self.train_rows["length"],
            training.batch_size,
            training.seed,
            weights=self._draw_weights(),
        )
        # Loaders draw their worker seeds from their own generator, not the global one that
        # dropout uses: otherwise the extra loader of a resumed epoch shifts every dropout mask.
        train = DataLoader(
            self.train_rows.select_columns(columns).with_format("torch"),
            batch_size=training.batch_size,
            sampler=sampler,
            collate_fn=train_collator,
            generator=torch.Generator().manual_seed(training.seed),
            **loading,
        )
        eval_columns = [c for c in self.data.validation.column_names if c not in ("length",)]
        validation = DataLoader(
            self.data.validation.select_columns(eval_columns).with_format("torch"),
            batch_size=self.config.evaluation.batch_size or 2 * training.batch_size,
            collate_fn=collator,
            generator=torch.Generator().manual_seed(training.seed),
            **loading,
        )
        return train, validation

    def _data_loader_workers(self) -> int:
        """training.dataLoaderWorkers, else 2 beside a GPU and none on the CPU."""
        configured = self.config.training.data_loader_workers
        if configured is not None:
            return configured
        return 2 if self.accelerator.device.type == "cuda" else 0

    def _draw_weights(self) -> npt.NDArray[np.float64] | None:
        """Per-row draw probabilities for data.balance.sampler class-balanced, else None."""
        assert self.data is not None
        if self.config.data.balance.sampler != "class-balanced":
            return None
        labels = np.asarray(self.data.train["labels"][:], dtype=np.int64)
        return class_balanced_weights(labels, len(self.data.labels))

    def _steps_per_epoch(self, rows: int) -> int:
        """Optimizer steps per epoch on each process (batches are sharded across processes)."""
        batches = math.ceil(rows / self.config.training.batch_size)
        per_process = math.ceil(batches / self.processes)
        return math.ceil(per_process / self.config.training.gradient_accumulation_steps)

    @property
    def total_steps(self) -> int:
        planned = self.steps_per_epoch * self.config.training.epochs
        return self.config.training.max_steps or planned

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def _build_scheduler(self) -> None:
        # A prepared scheduler steps once per process for each optimizer step.
        processes = self.processes
        scaled = self.config.training.model_copy(
            update={
                "warmup_steps": warmup_steps(self.config.training, self.total_steps) * processes
            }
        )
        scheduler = build_scheduler(self.optimizer, scaled, self.total_steps * processes)
        self.scheduler = self.accelerator.prepare(scheduler)

    # --- learning-rate range test ----------------------------------------------------------

    def _maybe_find_learning_rate(self) -> None:
        finder = self.config.training.find_learning_rate
        if finder is None or self._latest_checkpoint() is not None:
            return
        model_state = copy.deepcopy(self.accelerator.unwrap_model(self.model).state_dict())
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        batches = self._endless_batches()
        result = run_range_test(finder, lambda rate: self._range_test_step(rate, next(batches)))
        self.accelerator.unwrap_model(self.model).load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        self.state.range_test = result.to_report()
        if finder.apply:
            schedules.set_base_rate(self.optimizer, result.suggestion)

    def _endless_batches(self) -> Any:
        epoch = 0
        while True:
            self.train_loader.set_epoch(epoch)
            yield from self.train_loader
            epoch += 1

    def _range_test_step(self, rate: float, batch: dict[str, torch.Tensor]) -> float:
        schedules.set_base_rate(self.optimizer, rate)
        loss = self._loss(batch)[0]
        self.accelerator.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._beat("Training")
        return float(self.accelerator.reduce(loss.detach(), "mean").item())

    # --- training ----------------------------------------------------------------------------

    def train(self) -> RunResult:
        """Train to the end (or an early stop), then save the best model and the report;
        a SIGTERM or a Ctrl-C stops the run at its next logged step with a checkpoint."""
        self._stop_signal = None
        with self._flag_stop_signals():
            try:
                return self._train()
            except DiskFullError as error:
                return self._end_on_full_disk(str(error))

    @contextmanager
    def _flag_stop_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT only set a flag while training (the previous handlers come back
        after). The flag handler stays through the final checkpoint, so a second SIGTERM
        cannot interrupt a save; signal handlers can only be set in the main thread."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self._on_stop_signal) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        ctrl_c = signum == signal.SIGINT
        if ctrl_c and self._stop_signal == "SIGINT" and "LOCAL_RANK" not in self.env:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        first = self._stop_signal is None
        self._stop_signal = signal.Signals(signum).name
        if ctrl_c and first and self.accelerator.is_main_process:
            self.console.print(
                "Ctrl-C: stopping at the next logged step with a checkpoint "
                "(Ctrl-C again to stop at once, without one)"
            )

    @property
    def _stop_asked(self) -> bool:
        return self._stop_signal is not None

    def _train(self) -> RunResult:
        started = time.perf_counter()
        self.reporter.started(self._run_info())
        self.monitor = DivergenceMonitor(self.config.evaluation.divergence_factor)
        for step, loss in self.state.train_losses:  # a resumed run keeps its starting loss
            self.monitor.update(int(step), float(loss))
        self._reset_windows()
        self.model.train()  # from_pretrained hands the model over in eval mode (no dropout)
        diverged = None
        while self.state.epoch < self.epochs and diverged is None and not self._stopped():
            diverged = self._train_epoch()
            if diverged is not None or self._stopping_early:  # the epoch is not done
                break
            # Count the epoch as done before its checkpoint, so a resume starts the next one.
            self.state.epoch += 1
            self.state.batches_in_epoch = 0
            if self._evaluates_each_epoch():
                self._evaluate_and_checkpoint()
        if diverged is None and not self._stopping_early and self._needs_final_evaluation():
            self._evaluate_and_checkpoint()
        self.timings["trainSeconds"] = time.perf_counter() - started
        return self._finish(diverged)

    def _train_epoch(self) -> str | None:
        """One epoch (or what is left of it after a resume); a divergence reason stops it."""
        self._beat("Training")
        self._log_freezing()
        self.train_loader.set_epoch(self.state.epoch)
        batches = self.accelerator.skip_first_batches(
            self.train_loader, self.state.batches_in_epoch
        )
        for batch in self.hang.training_batches(batches):
            rows, width = batch["input_ids"].shape
            self._batch_shape = (int(rows), int(width))
            with self.accelerator.accumulate(self.model):
                loss, predictions, labels = self._loss(batch)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self._prepare_gradients()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            self.state.batches_in_epoch += 1
            self._track(loss, predictions, labels)
            if not self.accelerator.sync_gradients:
                continue
            self.state.step += 1
            self.hang.at_optimizer_step(self.state.step, self.process_index, self.processes)
            reason = self._after_optimizer_step()
            self._beat("Training")  # after its log, evaluation or save: training goes on
            if reason is not None or self._stopped():
                return reason
        return None

    def _loss(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The training loss, and for classification the predictions and labels to track."""
        if self.is_language_model:  # the model shifts the labels and skips masked tokens
            return self._with_l1(self.model(**batch).loss), None, None
        labels = batch.pop("labels")
        row_weights = batch.pop("weight", None)
        logits = self.model(**batch).logits
        loss = classification_loss(
            logits,
            labels,
            class_weights=self.class_weights,
            row_weights=row_weights,
            label_smoothing=self.config.regularization.label_smoothing,
        )
        return self._with_l1(loss), logits.detach().argmax(dim=-1), labels

    def _with_l1(self, loss: torch.Tensor) -> torch.Tensor:
        if self.config.regularization.l1 > 0:
            active = self._l1_active()
            if active:
                return loss + self.config.regularization.l1 * l1_penalty(active)
        return loss

    @property
    def process_index(self) -> int:
        return int(self.accelerator.process_index)

    @property
    def gpus(self) -> int:
        """The GPUs the run holds: one per process, none when it runs on the CPU."""
        return 0 if self.accelerator.device.type == "cpu" else self.processes

    @property
    def is_language_model(self) -> bool:
        return self.config.model.task == "causal-lm"

    def _trainable_now(self) -> frozenset[str]:
        """The schedule's trainable set, recomputed only when a group is released."""
        stage = tuple(self.plan.unfrozen_groups(self.state.epoch, self.state.step))
        if self._trainable_cache[0] != stage:
            trainable = self.plan.trainable_at(self.state.epoch, self.state.step)
            active = [p for name, p in self.l1_parameters if name in trainable]
            self._trainable_cache = (stage, trainable, active)
        return self._trainable_cache[1]

    def _l1_active(self) -> list[torch.nn.Parameter]:
        self._trainable_now()
        return self._trainable_cache[2]

    def _prepare_gradients(self) -> None:
        """Drop gradients of layers the schedule still holds frozen, then clip."""
        if self.plan.is_scheduled:
            trainable = self._trainable_now()
            if self._trainable_cache[0] != self._logged_stage:  # released mid-epoch (by steps)
                self._log_freezing()
            freezing.drop_frozen_gradients(self.accelerator.unwrap_model(self.model), trainable)
        if self._logs_at(self.state.step + 1):
            self._layer_grad_norms = self._norms_per_layer_group()
        max_norm = self.config.regularization.max_grad_norm
        if max_norm is not None:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
            if norm is not None:
                self._grad_norm = norm.detach()

    def _logs_at(self, step: int) -> bool:
        """Whether the optimizer step `step` is logged (the loss reduced across processes)."""
        return step % self._log_every == 0 or step == self.total_steps

    def _norms_per_layer_group(self) -> torch.Tensor:
        """Each layer group's gradient norm, on the device (read at the next log, not now)."""
        zero = torch.zeros((), device=self.accelerator.device)
        norms = []
        for parameters in self.layer_parameters.values():
            grads = [p.grad for p in parameters if p.grad is not None]
            norms.append(torch.nn.utils.get_total_norm(grads).float() if grads else zero)
        return torch.stack(norms)

    def _track(
        self, loss: torch.Tensor, predictions: torch.Tensor | None, labels: torch.Tensor | None
    ) -> None:
        """Accumulate on the device; nothing here waits for the GPU."""
        self._loss_sum = self._loss_sum + loss.detach().float()
        self._loss_batches += 1
        self._interval_loss_sum = self._interval_loss_sum + loss.detach().float()
        self._interval_batches += 1
        if predictions is not None and labels is not None:
            self._interval_predictions.append(predictions)
            self._interval_labels.append(labels)
        self._window.add_batch(*self._batch_shape, self._flops_shape)

    def _reset_windows(self) -> None:
        device = self.accelerator.device
        self._loss_sum = torch.zeros((), device=device)
        self._loss_batches = 0
        self._interval_loss_sum = torch.zeros((), device=device)
        self._interval_batches = 0
        self._interval_predictions = []
        self._interval_labels = []
        self._window = ThroughputCounts()
        self._run_counts = ThroughputCounts()
        self._batch_shape = (0, 0)
        self._window_started = time.perf_counter()
        self._grad_norm = None
        self._log_every = max(1, self.total_steps // MAX_LOGS_PER_RUN)
        self._budget_spent = False
        self._interrupted = False

    def _after_optimizer_step(self) -> str | None:
        reason = None
        if self._logs_at(self.state.step):
            reason = self._log_step()
        if reason is None and self._evaluates_now():
            self._evaluate_and_checkpoint()
        elif reason is None and self._checkpoints_now():
            self.save_checkpoint()
        return reason

    def _log_step(self) -> str | None:
        cost = self.budget.cost(self.meter.gpu_hours())
        loss, self._budget_spent, self._interrupted = self._reduce_loss_and_stop_flags(
            self.budget.exceeded(cost.gpu_hours), self._stop_asked
        )
        throughput = self._window_throughput()
        grad_norm = None if self._grad_norm is None else float(self._grad_norm.item())
        learning_rate = float(self.scheduler.get_last_lr()[-1])
        self.state.train_losses.append([self.state.step, loss])
        self.state.learning_rates.append([self.state.step, learning_rate])
        if self._layer_grad_norms is not None:
            norms = self._layer_grad_norms.tolist()
            self.state.layer_grad_norms.append(
                [self.state.step, dict(zip(self.layer_parameters, norms, strict=True))]
            )
            self._layer_grad_norms = None
        self._write_ledger()
        self.reporter.logged(
            StepRecord(
                step=self.state.step,
                epoch=self._fractional_epoch(),
                loss=loss,
                learning_rate=learning_rate,
                grad_norm=grad_norm,
                samples_per_second=throughput.samples_per_second,
                tokens_per_second=throughput.tokens_per_second,
                mfu=throughput.mfu,
                cost=cost,
            )
        )
        self._loss_sum = torch.zeros((), device=self.accelerator.device)
        self._loss_batches = 0
        self._window = ThroughputCounts()
        self._window_started = time.perf_counter()
        return self.monitor.update(self.state.step, loss)

    def _window_throughput(self) -> Throughput:
        """All processes' speed since the last log (counted into the run's totals)."""
        self._window.seconds = time.perf_counter() - self._window_started
        self._run_counts.add(self._window)
        return self._window.throughput(self.processes, self._peak_flops, self.gpus)

    def run_throughput(self) -> dict[str, float | None]:
        """This start's mean tokens/s and MFU over its logged windows, for the report; None
        for both when it logged no step (a start that found the training done)."""
        if self._run_counts.tokens == 0:
            return {"tokensPerSecond": None, "mfu": None}
        throughput = self._run_counts.throughput(self.processes, self._peak_flops, self.gpus)
        return {"tokensPerSecond": throughput.tokens_per_second, "mfu": throughput.mfu}

    def _reduce_loss_and_stop_flags(
        self, over_budget_here: bool, sigterm_here: bool
    ) -> tuple[float, bool, bool]:
        """The mean loss since the last log over every process, and whether any process
        found the budget spent or got SIGTERM: one collective, so that all processes stop
        at one step."""
        flags = torch.tensor(
            [float(over_budget_here), float(sigterm_here)], device=self.accelerator.device
        )
        local = torch.cat([(self._loss_sum / max(self._loss_batches, 1)).reshape(1), flags])
        loss, over_budget_share, sigterm_share = self.accelerator.reduce(local, "mean").tolist()
        return float(loss), over_budget_share > 0, sigterm_share > 0

    def _fractional_epoch(self) -> float:
        return self.state.epoch + self.state.batches_in_epoch / max(len(self.train_loader), 1)

    def _evaluates_each_epoch(self) -> bool:
        return self.config.evaluation.strategy == "epoch"

    def _evaluates_now(self) -> bool:
        every = self.config.evaluation.every_steps
        return every is not None and self.state.step % every == 0

    def _checkpoints_now(self) -> bool:
        every = self.config.output.checkpoint_every_steps
        return every is not None and self.state.step % every == 0

    def _needs_final_evaluation(self) -> bool:
        evaluated = self.state.evaluations[-1]["step"] if self.state.evaluations else -1
        return evaluated != self.state.step

    def _stopped(self) -> bool:
        early = self.config.evaluation.early_stopping
        patience_over = early is not None and (
            self.state.evaluations_without_improvement >= early.patience
        )
        return patience_over or self._stopping_early or self.state.step >= self.total_steps

    @property
    def _stopping_early(self) -> bool:
        """Stopped by the budget or by SIGTERM: the run is to continue from a checkpoint."""
        return self._budget_spent or self._interrupted

    def _log_freezing(self) -> None:
        """Log what trains at the start of each epoch and whenever that changes."""
        self._logged_stage = tuple(self.plan.unfrozen_groups(self.state.epoch, self.state.step))
        entry = self.plan.describe(self.state.epoch, self.state.step)
        entry["learningRates"] = self._group_learning_rates(entry["trainable"])
        entry["message"] = freezing_summary(entry)
        last = self.state.freezing_log[-1] if self.state.freezing_log else None
        if last is None or any(
            last[key] != entry[key] for key in ("epoch", "trainable", "partial")
        ):
            self.state.freezing_log.append(entry)
            self.reporter.section("freezing", entry)

    def _group_learning_rates(self, trainable: list[str]) -> dict[str, float]:
        """Each trainable group's peak rate (the schedule scales them all alike)."""
        rates = schedules.peak_rates(self.optimizer)
        return {group: rates[group] for group in trainable if group in rates}

    # --- evaluation and checkpoints -------------------------------------------------------

    def evaluate(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Validation metrics, class probabilities and labels over the whole validation set
        (for a language model: its loss and perplexity, and empty arrays)."""
        self._beat("Evaluating")
        if self.is_language_model:
            return self._evaluate_language_model(), np.empty((0, 0)), np.empty(0)
        logits, labels = predict(
            self.model, self.accelerator, self.eval_loader, self._evaluation_batch_done
        )
        loss = float(F.cross_entropy(logits, labels).item())
        probabilities = torch.softmax(logits, dim=-1).numpy()
        return (
            classification_metrics(labels.numpy(), probabilities, loss),
            probabilities,
            labels.numpy(),
        )

    def _evaluate_language_model(self) -> dict[str, float]:
        """Mean loss per predicted token over the validation rows, and its perplexity."""
        self.model.eval()
        sums, counts = [], []
        for batch in self.eval_loader:
            labels = batch.pop("labels")
            with torch.no_grad():
                logits = self.model(**batch).logits
            row_sums, row_counts = token_losses(logits, labels)
            row_sums, row_counts = self.accelerator.gather_for_metrics((row_sums, row_counts))
            sums.append(row_sums.cpu())
            counts.append(row_counts.cpu())
            self._evaluation_batch_done()
        self.model.train()
        loss = float(torch.cat(sums).sum() / torch.cat(counts).sum().clamp_min(1))
        return language_model_metrics(loss)

    def _evaluation_batch_done(self) -> None:
        self.hang.after_evaluation_batch()
        self._beat("Evaluating")

    def _train_interval_metrics(self) -> dict[str, float]:
        """Running training metrics since the last evaluation, over every process."""
        loss = self.accelerator.reduce(
            self._interval_loss_sum / max(self._interval_batches, 1), "mean"
        )
        if self.is_language_model:
            return language_model_metrics(float(loss.item()))
        predictions = self._gather_uneven(torch.cat(self._interval_predictions))
        labels = self._gather_uneven(torch.cat(self._interval_labels))
        keep = labels >= 0
        predictions, labels = predictions[keep], labels[keep]
        classes = len(self.data.labels) if self.data else int(labels.max()) + 1
        one_hot = np.eye(classes)[predictions]
        metrics = classification_metrics(labels, one_hot, float(loss.item()))
        metrics.pop("rocAuc", None)
        return metrics

    def _gather_uneven(self, values: torch.Tensor) -> np.ndarray:
        """Gather 1-d tensors whose lengths differ between processes (padding with -1)."""
        padded = self.accelerator.pad_across_processes(values, pad_index=-1)
        gathered: torch.Tensor = self.accelerator.gather(padded)
        return gathered.cpu().numpy()

    def _evaluate_and_checkpoint(self) -> None:
        started = time.perf_counter()
        metrics, _, _ = self.evaluate()
        train_metrics = self._train_interval_metrics() if self._interval_batches else {}
        self._interval_loss_sum = torch.zeros((), device=self.accelerator.device)
        self._interval_batches = 0
        self._interval_predictions, self._interval_labels = [], []
        self.state.evaluations.append(
            {
                "step": self.state.step,
                "epoch": self._fractional_epoch(),
                "metrics": metrics,
                "trainMetrics": train_metrics,
            }
        )
        self.reporter.evaluated(EvalRecord(self.state.step, self._fractional_epoch(), metrics))
        self._track_best(metrics)
        self.timings["evaluationSeconds"] = (
            self.timings.get("evaluationSeconds", 0.0) + time.perf_counter() - started
        )
        self.save_checkpoint()

    def _track_best(self, metrics: dict[str, float]) -> None:
        metric = self.config.primary_metric()
        early = self.config.evaluation.early_stopping
        min_delta = early.min_delta if early else 0.0
        value = metrics.get(metric, math.nan)
        if is_better(metric, value, self.state.best_metric, min_delta):
            self.state.best_metric = value
            self.state.best_checkpoint = checkpoint_name(self.state.step)
            self.state.evaluations_without_improvement = 0
        else:
            self.state.evaluations_without_improvement += 1

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / CHECKPOINTS

    def save_checkpoint(self) -> Path:
        """Save everything needed to resume, atomically; keep the best and the newest few.

        The state is written into a hidden folder that `latest_checkpoint` never picks, then
        renamed into place (readable as the umask allows: file_modes.publish): a checkpoint
        folder that exists is complete, whenever the process is killed. A hidden folder left
        by a killed save is removed first, so no stale file of it joins the new checkpoint.
        """
        self._beat("Saving")
        final = self.checkpoint_root / checkpoint_name(self.state.step)
        partial = self.checkpoint_root / f"{PARTIAL_PREFIX}{final.name}"
        self.state.gpu_hours = self.meter.own_gpu_hours()
        self._write_ledger()
        if self.accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)
        self.accelerator.wait_for_everyone()
        saved = self._save_state(partial)
        if self._on_any_process(not saved):
            raise self._disk_full(partial, final)
        if self.accelerator.is_main_process:
            publish(partial, final)
            self._rotate_checkpoints()
        self.accelerator.wait_for_everyone()
        self._beat("Saving")
        return final

    def _save_state(self, partial: Path) -> bool:
        """accelerate's save_state into `partial`; False when the disk was full."""
        try:
            self.accelerator.save_state(str(partial))
        except Exception as error:  # each writer raises its own type (see disk_space.py)
            if not is_out_of_space(error, self.checkpoint_root, self._state_bytes()):
                raise
            return False
        return True

    def _state_bytes(self) -> int:
        return state_bytes(self.accelerator.unwrap_model(self.model), self.optimizer)

    def _on_any_process(self, flag: bool) -> bool:
        """Whether `flag` is true on any process: a collective, so every process must ask."""
        total = self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device))
        return bool(total.item() > 0)

    def _disk_full(self, partial: Path, final: Path) -> DiskFullError:
        """The error of a save that found the disk full, after removing what it wrote."""
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return DiskFullError(
            full_disk_message(
                self.checkpoint_root,
                f"checkpoint {final.name}",
                self._state_bytes(),
                self._latest_checkpoint(),
            )
        )

    def _rotate_checkpoints(self) -> None:
        keep = self.config.output.keep_checkpoints
        for old in saved_checkpoints(self.checkpoint_root)[:-keep]:
            if old.name != self.state.best_checkpoint:
                shutil.rmtree(old)

    def _latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoint_root)

    def _resume_from_latest_checkpoint(self) -> None:
        latest = self._latest_checkpoint()
        if latest is None:
            return
        self._beat("LoadingModel")
        self.accelerator.load_state(str(latest))
        self._beat("LoadingModel")
        self.resumed_from = latest
        self.console.print(
            f"Resuming from {latest} (epoch {self.state.epoch + 1}, step {self.state.step})",
            markup=False,
        )

    # --- the end ---------------------------------------------------------------------------

    def _finish(self, diverged: str | None) -> RunResult:
        if self._stopping_early:
            self._checkpoint_unless_saved()
        diagnosis = self._diagnose(diverged)
        if not self._interrupted or self._budget_spent:  # no verdict on curves to be continued
            self.reporter.section("diagnosis", diagnosis.to_status())
        best = self._best_evaluation()
        sections: dict[str, Any] = {}
        bias_audit = None
        if diverged is None and not self._stopping_early:
            sections, bias_audit = self._final_phase()
        cost = self.budget.cost(self.meter.gpu_hours())
        self._write_ledger()
        succeeded, message = self._outcome(diverged, bias_audit, cost)
        interrupted = self._interrupted and not self._budget_spent  # the budget's stop is final
        outcome = outcome_of(succeeded, self._budget_spent, interrupted)
        report = self._write_report(diagnosis, best, outcome, sections, cost)
        self.reporter.section("artifacts", self._artifacts())
        self.reporter.section("cost", cost.to_status())
        self.reporter.finished(outcome, message)
        return RunResult(
            succeeded,
            message,
            self.output_dir,
            best,
            diagnosis,
            report,
            budget_exceeded=self._budget_spent,
            interrupted=interrupted,
        )

    def _diagnose(self, diverged: str | None) -> Diagnosis:
        return diagnose(
            [(int(s), float(v)) for s, v in self.state.train_losses],
            [self._eval_point(e) for e in self.state.evaluations],
            self.config.primary_metric(),
            setup=RunSetup.of(self.config),
            max_gap=self.config.evaluation.max_generalization_gap,
            underfitting_floor=self.config.evaluation.underfitting_floor,
            majority_rate=None
            if self.is_language_model or not self.data
            else self.data.majority_rate,
            diverged=diverged,
        )

    def _end_on_full_disk(self, message: str) -> RunResult:
        """A save found the disk full: the run fails with `message`, and report.json says so
        where the disk still takes it (the next run continues from the checkpoint kept)."""
        diagnosis = self._diagnose(None)
        best = self._best_evaluation()
        cost = self.budget.cost(self.meter.gpu_hours())
        report = self._build_report(diagnosis, best, "failed", {"message": message}, cost)
        if self.accelerator.is_main_process:
            try:
                write_reports(self.output_dir, report)
            except OSError as error:
                self.console.print(f"{REPORT_JSON} not written either: {error.strerror}")
        self.reporter.section("artifacts", self._artifacts())
        self.reporter.section("cost", cost.to_status())
        self.reporter.finished("failed", message)
        return RunResult(False, message, self.output_dir, best, diagnosis, report)

    def _final_phase(self) -> tuple[dict[str, Any], BiasAudit | None]:
        """Load the best checkpoint, examine it and save it, unless a SIGTERM comes first:
        it skips what is left (examine.py checks between its parts), and the checkpoint of
        the last step, saved with the last evaluation, is where the next start resumes."""
        if self._stop_agreed():
            return {}, None
        self._load_best_checkpoint()
        sections, bias_audit = self._examine_final_model()
        if self.config.output.save_model and not self._stop_agreed():
            self._save_model()
        return sections, bias_audit

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop; once true it stays true. A collective: every
        process asks at the same points of the final phase."""
        if not self._interrupted:
            flag = torch.tensor(float(self._stop_asked), device=self.accelerator.device)
            self._interrupted = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        return self._interrupted

    def _checkpoint_unless_saved(self) -> None:
        """A checkpoint of the step the run stopped at, for a run that is to continue."""
        latest = self._latest_checkpoint()
        if latest is None or parse_checkpoint_step(latest.name) != self.state.step:
            self.save_checkpoint()

    @staticmethod
    def _eval_point(evaluation: dict[str, Any]) -> EvalPoint:
        return EvalPoint(
            step=int(evaluation["step"]),
            epoch=float(evaluation["epoch"]),
            metrics=dict(evaluation["metrics"]),
            train_metrics=dict(evaluation["trainMetrics"]),
        )

    def _best_evaluation(self) -> dict[str, float]:
        best_step = parse_checkpoint_step(self.state.best_checkpoint)
        for evaluation in self.state.evaluations:
            if evaluation["step"] == best_step:
                return dict(evaluation["metrics"])
        return dict(self.state.evaluations[-1]["metrics"]) if self.state.evaluations else {}

    def _outcome(
        self, diverged: str | None, bias_audit: BiasAudit | None, cost: RunCost
    ) -> tuple[bool, str]:
        """Whether the result may be used, and the run's last line."""
        if self._budget_spent:
            return False, (
                f"{self.budget.exceeded_message(cost.gpu_hours)}; stopped at step "
                f"{self.state.step} of {self.total_steps}, checkpoint {self._latest_checkpoint()}"
            )
        if self._interrupted:
            latest = self._latest_checkpoint()
            return False, (
                f"stopped by {self._stop_signal or 'SIGTERM'} at step {self.state.step} of "
                f"{self.total_steps}; "
                f"checkpoint {latest.name if latest else '(none)'} saved"
            )
        if diverged:
            latest = self._latest_checkpoint()
            kept = (
                f"the last good checkpoint is {latest}"
                if latest
                else "no checkpoint was saved before it"
            )
            return False, f"training diverged at step {self.state.step}: {diverged}; {kept}"
        best = f"best {self.config.primary_metric()}={self.state.best_metric:.4f}"
        best += self._early_stop_note()
        bias = self.config.bias
        if bias_audit is None or bias is None or bias_audit.verdict != "Failed":
            return True, best
        if bias.on_failure == "fail":
            return (
                False,
                f"{best}; the bias audit failed (bias.onFailure: fail): {bias_audit.message}",
            )
        return True, f"{best}; the bias audit failed (bias.onFailure: warn): {bias_audit.message}"

    def _early_stop_note(self) -> str:
        """Why the run ended before its last step, when early stopping ended it."""
        early = self.config.evaluation.early_stopping
        waited = self.state.evaluations_without_improvement
        if early is None or waited < early.patience or self.state.step >= self.total_steps:
            return ""
        evaluations = "evaluation" if waited == 1 else "evaluations"
        return (
            f"; stopped early at step {self.state.step} of {self.total_steps}: "
            f"{self.config.primary_metric()} did not improve by more than {early.min_delta:g} "
            f"in {waited} {evaluations} (evaluation.earlyStopping)"
        )

    def _load_best_checkpoint(self) -> None:
        """The model of the best evaluation, the one that is audited and saved."""
        if self.state.best_checkpoint:
            # load_state also rewinds the registered TrainingState: keep the run's own.
            finished = copy.deepcopy(self.state.state_dict())
            self._beat("Examining")
            self.accelerator.load_state(str(self.checkpoint_root / self.state.best_checkpoint))
            self._beat("Examining")
            self.state.load_state_dict(finished)

    def _examine_final_model(self) -> tuple[dict[str, Any], BiasAudit | None]:
        """The report sections and bias audit of the loaded model (examine.py)."""
        assert self.data is not None
        return examine_final_model(
            FinalModel(
                model=self.model,
                accelerator=self.accelerator,
                tokenizer=self.tokenizer,
                config=self.config,
                data=self.data,
                eval_loader=self.eval_loader,
                audit_rows=self.audit_rows,
                snapshot=self.snapshot,
                reporter=self.reporter,
                stop_requested=self._stop_agreed,
                beat=lambda: self._beat("Examining"),
            )
        )

    def _save_model(self) -> None:
        model: PreTrainedModel = self.accelerator.unwrap_model(self.model)
        merge = getattr(model, "merge_and_unload", None)  # LoRA: fold adapters into weights
        if callable(merge):
            model = merge()
        final = self.output_dir / MODEL_DIR
        partial = self.output_dir / f"{PARTIAL_PREFIX}{MODEL_DIR}"
        if self.accelerator.is_main_process:
            if partial.exists():  # left by a save that was killed: none of it may stay
                shutil.rmtree(partial)
            self._beat("Saving")
            model.save_pretrained(partial, save_function=self.accelerator.save)
            self.tokenizer.save_pretrained(partial)
            publish(partial, final)
            self._beat("Saving")
        self.accelerator.wait_for_everyone()

    def _write_report(
        self,
        diagnosis: Diagnosis,
        best: dict[str, float],
        outcome: Outcome,
        sections: dict[str, Any],
        cost: RunCost,
    ) -> dict[str, Any]:
        report = self._build_report(diagnosis, best, outcome, sections, cost)
        if self.accelerator.is_main_process:
            write_reports(self.output_dir, report)  # report.json and report.html
        return report

    def _build_report(
        self,
        diagnosis: Diagnosis,
        best: dict[str, float],
        outcome: Outcome,
        sections: dict[str, Any],
        cost: RunCost,
    ) -> dict[str, Any]:
        assert self.data is not None
        return build_report(
            config=self.config,
            job_name=self.job_name,
            data=self.data,
            state=self.state.state_dict(),
            best_metrics=best,
            diagnosis=diagnosis.to_status(),
            sections={
                **sections,
                "cost": cost.to_status(),
                "outcome": outcome,
                "throughput": self.run_throughput(),
            },
            timings=self.timings,
            succeeded=outcome == "succeeded",
            processes=self.processes,
            artifacts=self._artifacts(),
        )

    def _artifacts(self) -> dict[str, str]:
        latest = self._latest_checkpoint()
        model = self.output_dir / MODEL_DIR
        return {
            "outputUri": str(self.output_dir),
            "model": str(model) if model.exists() else "",
            "report": str(self.output_dir / REPORT_JSON),
            "reportHtml": str(self.output_dir / REPORT_HTML),
            "lastCheckpoint": str(latest) if latest else "",
        }

    def _run_info(self) -> RunInfo:
        return RunInfo(
            job_name=self.job_name,
            namespace=self.env.get("KUBETUNE_JOB_NAMESPACE"),
            epochs=self.epochs,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            output_dir=self.output_dir,
            num_processes=self.processes,
            primary_metric=self.config.primary_metric(),
        )

    def cleanup(self) -> None:
        """Release the reporter's servers (the process group lives on: folds reuse it)."""
        reporter = getattr(self, "reporter", None)
        if reporter is not None:
            reporter.close()


def freezing_summary(entry: dict[str, Any]) -> str:
    """One line for the console: what trains this epoch and at which peak rates."""
    rates = entry["learningRates"]
    trained = ", ".join(f"{g} ({rates[g]:.2g})" if g in rates else g for g in entry["trainable"])
    frozen = ", ".join(entry["frozen"]) or "nothing"
    return f"epoch {entry['epoch']} trains {trained}; frozen: {frozen}"
