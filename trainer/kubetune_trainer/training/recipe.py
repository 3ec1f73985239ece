"""The fine-tuning recipe: setup(), train(), evaluate(), save_checkpoint(), cleanup().

One recipe serves a laptop run and every pod of a distributed job: accelerate decides the
device, the precision and the process group; the recipe only uses its primitives
(`prepare`, `accumulate`, `backward`, `clip_grad_norm_`, `gather_for_metrics`,
`save_state` / `load_state`, `skip_first_batches`). A restarted pod finds the newest
checkpoint in the output directory and continues from the exact batch it stopped at.

Asked to stop (SIGTERM: a suspended, preempted, evicted or drained worker group; or Ctrl-C,
SIGINT, in a terminal), the run stops at its next logged step, every process at the same
one (stop_guard.py), saves a checkpoint there and ends as interrupted; the next group
resumes from that checkpoint. After the last step (the final phase: loading the best
checkpoint, examining it, saving it) the processes agree on the flag before each part, and
a stop skips what is left: the checkpoint of the last step is there to resume from, and
the next start does the final phase again. A SIGTERM that comes once the model is saved
changes nothing. A second Ctrl-C in a run without a launcher stops it at once, losing the
steps since the last checkpoint.

The recipe holds small collaborators, each in a module of its own: the stop guard
(stop_guard.py: the signal and budget flags), the running loss (running_loss.py), the
throughput meter (throughput.py), the layer gradient norms (layer_grad_norms.py), the
freezing tracker (freezing_tracker.py), the GPU-hour ledger (cost_ledger.py), the
checkpoint store (checkpoint_store.py: atomic saves, rotation, a full disk), the training
state (training_state.py), and at the end the saved model (model_export.py: with LoRA the
adapter, and the merged model if asked), the outcome and its message (outcome.py) and the
report (report/run.py). Optimizers, their per-group rates and schedules are built in
schedules.py, the loaders in loaders.py, the losses and metrics in losses.py and
evaluation.py.

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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from rich.console import Console
from transformers.utils import logging as transformers_logging

from kubetune_trainer import freezing, schedules
from kubetune_trainer.checkpoints import CHECKPOINTS, checkpoint_name, parse_checkpoint_step
from kubetune_trainer.config import TrainingConfig
from kubetune_trainer.cost import LEDGER_FILE, Budget, GpuMeter, RunCost
from kubetune_trainer.data import (
    AuditRows,
    DataError,
    PreparedData,
    prepare_audit_rows,
    prepare_data,
)
from kubetune_trainer.data.cache import cached_prepare
from kubetune_trainer.data.report import failed_status
from kubetune_trainer.diagnosis import Diagnosis, DivergenceMonitor
from kubetune_trainer.disk_space import DiskFullError, state_bytes
from kubetune_trainer.examine.audit import check_positive_labels
from kubetune_trainer.examine.final_model import FinalModel, ModelAudit, examine_final_model
from kubetune_trainer.examine.interpret import LayerSnapshot, snapshot_layer_groups
from kubetune_trainer.examine.lm_examine import StartingPairs, score_starting_pairs
from kubetune_trainer.hang import HangHook
from kubetune_trainer.heartbeat import HEARTBEAT_FILE, Heartbeat
from kubetune_trainer.modeling import load_model, load_tokenizer, state_load_options
from kubetune_trainer.report.files import REPORT_JSON
from kubetune_trainer.report.progress import (
    EvalRecord,
    NullReporter,
    Outcome,
    Phase,
    Reporter,
    StepRecord,
    build_reporter,
    plain_console,
)
from kubetune_trainer.report.run import RunEnd, RunReport
from kubetune_trainer.training import sharding
from kubetune_trainer.training.checkpoint_store import CheckpointStore
from kubetune_trainer.training.cost_ledger import CostLedger
from kubetune_trainer.training.evaluation import classifier_evaluation, language_model_evaluation
from kubetune_trainer.training.freezing_tracker import FreezingTracker, TrainableSet
from kubetune_trainer.training.generation import generation_evaluation
from kubetune_trainer.training.loaders import (
    build_loaders,
    endless_batches,
    steps_per_epoch,
    training_rows,
)
from kubetune_trainer.training.losses import classification_loss, l1_penalty
from kubetune_trainer.training.model_export import MERGED_DIR, MODEL_DIR, export_model, run_export
from kubetune_trainer.training.outcome import (
    Ending,
    best_evaluation,
    diagnose_run,
    outcome_of,
    run_message,
)
from kubetune_trainer.training.preferences import preference_objective
from kubetune_trainer.training.running_loss import RunningLoss
from kubetune_trainer.training.stop_guard import StopGuard
from kubetune_trainer.training.throughput import ThroughputMeter, mfu_basis
from kubetune_trainer.training.token_losses import mean_token_loss
from kubetune_trainer.training.training_state import TrainingState

CACHE_DIR = "cache"
"""Under the output folder: the prepared data of the last start (data_cache)."""
MAX_LOGS_PER_RUN = 200
"""Logging reduces the loss across processes (a host sync): keep it to a few hundred times a run."""


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


def mixed_precision(precision: str) -> str:
    """accelerate's mixed-precision mode for the configured precision on this machine."""
    if precision == "fp32" or not torch.cuda.is_available():
        return "no"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


class Recipe:
    """One fine-tuning run of one TrainingConfig into one output directory."""

    _grad_norm: torch.Tensor | None
    """The gradient norm of the last clipped step, on the device (read at the next log)."""
    _log_every: int
    snapshot: LayerSnapshot | None
    audit_rows: AuditRows | None
    starting_pairs: StartingPairs | None

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
        self.resumed_from: Path | None = None
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
        budget = Budget.from_env(self.env)
        plugin = sharding.fsdp_plugin(training)
        self.accelerator = Accelerator(
            fsdp_plugin=plugin,
            mixed_precision=mixed_precision(training.precision),
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            dynamo_backend="inductor" if training.compile else "no",
            # Pinned batches are copied to the GPU while the previous step still runs.
            dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        )
        sharding.shard_on_cpu(self.accelerator, plugin)
        self.processes = int(self.accelerator.num_processes)
        sharding.check_processes(training, self.processes)
        self.run_report = RunReport(
            self.config,
            self.job_name,
            self.output_dir,
            self.output_dir / MODEL_DIR,
            self.output_dir / MERGED_DIR,
            self.processes,
            writer=self.accelerator.is_main_process,
        )
        self.cost_ledger = CostLedger(
            GpuMeter(self.gpus, started=meter_started, others=self.others_gpu_hours),
            budget,
            self.output_dir / LEDGER_FILE,
            writer=self.accelerator.is_main_process,
        )
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
        check_positive_labels(self.config, self.data.labels)
        self.generation = generation_evaluation(
            self.config, self.data, self.tokenizer, self.accelerator, self._evaluation_batch_done
        )
        self._beat("PreparingData")
        self.audit_rows = prepare_audit_rows(self.config, self.tokenizer, self.data.labels)
        self._say(f"loading the model {self.config.model.source}")
        self._build_model_and_loaders()
        self.starting_pairs = score_starting_pairs(
            self.config, self.tokenizer, self.model, self.accelerator
        )
        self._maybe_find_learning_rate()
        self._build_scheduler()
        self.accelerator.register_for_checkpointing(self.state)
        self._resume_from_latest_checkpoint()
        self.cost_ledger.resume(self.state.gpu_hours)
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

    def _build_model_and_loaders(self) -> None:
        assert self.data is not None
        self._beat("LoadingModel")
        model = load_model(self.config, self.data.labels)
        self._beat("LoadingModel")
        self.preferences = preference_objective(self.config, model, self.accelerator, self.data)
        self.train_rows = training_rows(self.config, self.data, self.accelerator.device)
        self.steps_per_epoch = steps_per_epoch(self.config, len(self.train_rows), self.processes)
        self.plan = freezing.build_plan(model, self.config.freezing, self.steps_per_epoch)
        freezing.freeze_permanently(model, self.plan)
        groups = schedules.optimizer_groups(
            model,
            self.plan,
            self.config.training.learning_rate,
            self.config.regularization.weight_decay,
        )
        optimizer = schedules.build_optimizer(self.config.training, groups)
        self.snapshot = self._initial_weights(model)
        self.layer_grad_norms = sharding.layer_grad_norms(model, self.accelerator)
        loaders = build_loaders(
            self.config, self.tokenizer, self.data, self.train_rows, self.accelerator.device
        )
        sharding.wrap_blocks(self.accelerator, model)
        (
            self.model,
            self.optimizer,
            self.train_loader,
            self.eval_loader,
            self.train_sample_loader,
        ) = self.accelerator.prepare(model, optimizer, *loaders)
        peak_flops, shape = mfu_basis(
            model, self.accelerator.device, causal_lm=self.is_language_model
        )
        self.throughput = ThroughputMeter(self.processes, self.gpus, peak_flops, shape)
        # L1, like weight decay, spares biases and norms.
        l1_parameters = schedules.decaying_parameters(model, groups)
        self.freezing_tracker = FreezingTracker(self.plan, l1_parameters)
        self.class_weights = (
            None
            if self.data.class_weights is None
            else torch.tensor(self.data.class_weights, device=self.accelerator.device)
        )

    def _initial_weights(self, model: torch.nn.Module) -> LayerSnapshot | None:
        """The pre-trained weights per layer group, on rank 0, when the run explains its model
        (taken before a resume restores trained weights)."""
        wanted = self.config.evaluation.attributions is not None and not self.is_language_model
        return snapshot_layer_groups(model) if wanted and self.accelerator.is_main_process else None

    @property
    def total_steps(self) -> int:
        planned = self.steps_per_epoch * self.config.training.epochs
        return self.config.training.max_steps or planned

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def _build_scheduler(self) -> None:
        scheduler = schedules.build_process_scheduler(
            self.optimizer, self.config.training, self.total_steps, self.processes
        )
        self.scheduler = self.accelerator.prepare(scheduler)

    def _maybe_find_learning_rate(self) -> None:
        finder = self.config.training.find_learning_rate
        if finder is None or self.checkpoints.latest() is not None:
            return
        result = schedules.find_learning_rate(
            finder,
            self.accelerator,
            self.model,
            self.optimizer,
            self._loss,
            endless_batches(self.train_loader),
            lambda: self._beat("Training"),
        )
        self.state.range_test = result.to_report()
        if finder.apply:
            schedules.set_base_rate(self.optimizer, result.suggestion)

    # --- training ----------------------------------------------------------------------------

    def train(self) -> RunResult:
        """Train to the end (or an early stop), then save the best model and the report;
        a SIGTERM or a Ctrl-C stops the run at its next logged step with a checkpoint; the
        signal handler stays through the final checkpoint, so a second SIGTERM cannot
        interrupt a save."""
        self.stop_guard = StopGuard(self.accelerator, self.env, self._say)
        with self.stop_guard.flagging_signals():
            try:
                return self._train()
            except DiskFullError as error:
                return self._end_on_full_disk(str(error))

    def _train(self) -> RunResult:
        started = time.perf_counter()
        namespace = self.env.get("KUBETUNE_JOB_NAMESPACE")
        self.reporter.started(
            self.run_report.run_info(namespace, self.epochs, self.total_steps, self.steps_per_epoch)
        )
        self.monitor = DivergenceMonitor(self.config.evaluation.divergence_factor)
        for step, loss in self.state.train_losses:  # a resumed run keeps its starting loss
            self.monitor.update(int(step), float(loss))
        self._start_windows()
        self.generation.before(self.model, self.state)  # the starting model's completions
        self.model.train()  # from_pretrained hands the model over in eval mode (no dropout)
        diverged = None
        stop = self.stop_guard
        while self.state.epoch < self.epochs and diverged is None and not self._stopped():
            diverged = self._train_epoch()
            if diverged is not None or stop.stopping_early:  # the epoch is not done
                break
            # Count the epoch as done before its checkpoint, so a resume starts the next one.
            self.state.epoch += 1
            self.state.batches_in_epoch = 0
            if self._evaluates_each_epoch():
                self._evaluate_and_checkpoint()
        if diverged is None and not stop.stopping_early and self._needs_final_evaluation():
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
            with self.accelerator.accumulate(self.model):
                loss = self._loss(batch)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self._prepare_gradients()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            self.state.batches_in_epoch += 1
            self.losses.add(loss)
            self.throughput.add_batch(int(rows), int(width))
            if not self.accelerator.sync_gradients:
                continue
            self.state.step += 1
            self.hang.at_optimizer_step(self.state.step, self.process_index, self.processes)
            reason = self._after_optimizer_step()
            self._beat("Training")  # after its log, evaluation or save: training goes on
            if reason is not None or self._stopped():
                return reason
        return None

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch."""
        if self.preferences is not None:  # its rewards are tracked by training/preferences.py
            return self._with_l1(self.preferences.loss(self.model, batch))
        if self.is_language_model:  # the labelled tokens' mean loss
            return self._with_l1(mean_token_loss(self.model, self.accelerator, batch))
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
        return self._with_l1(loss)

    def _with_l1(self, loss: torch.Tensor) -> torch.Tensor:
        if self.config.regularization.l1 > 0:
            active = self._trainable().l1_parameters
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

    def _trainable(self) -> TrainableSet:
        return self.freezing_tracker.trainable(self.state.epoch, self.state.step)

    def _prepare_gradients(self) -> None:
        """Drop gradients of layers the schedule still holds frozen, then clip."""
        if self.plan.is_scheduled:
            trainable = self._trainable().names
            if self.freezing_tracker.released_since_logged():  # mid-epoch (unfreezing by steps)
                self._log_freezing()
            freezing.drop_frozen_gradients(self.accelerator.unwrap_model(self.model), trainable)
        if self._logs_at(self.state.step + 1):
            self.layer_grad_norms.measure()
        max_norm = self.config.regularization.max_grad_norm
        if max_norm is not None:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
            if norm is not None:
                self._grad_norm = norm.detach()

    def _logs_at(self, step: int) -> bool:
        """Whether the optimizer step `step` is logged (the loss reduced across processes)."""
        return step % self._log_every == 0 or step == self.total_steps

    def _start_windows(self) -> None:
        """The loss and throughput windows of the first logged step."""
        self.losses = RunningLoss(self.accelerator.device, self.preferences)
        self.throughput.open_window()
        self._grad_norm = None
        self._log_every = max(1, self.total_steps // MAX_LOGS_PER_RUN)

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
        cost = self.cost_ledger.cost()
        loss = self.stop_guard.reduce_logged_loss(
            self.losses.close_log_window(), self.cost_ledger.exceeded(cost)
        )
        throughput = self.throughput.close_window()
        grad_norm = None if self._grad_norm is None else float(self._grad_norm.item())
        learning_rate = float(self.scheduler.get_last_lr()[-1])
        self.state.record_log(loss, learning_rate, self.layer_grad_norms.take())
        self.cost_ledger.write()
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
                metrics=self.losses.close_extra_log_window(),
            )
        )
        self.throughput.open_window()
        return self.monitor.update(self.state.step, loss)

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
        return (
            patience_over or self.stop_guard.stopping_early or self.state.step >= self.total_steps
        )

    def _log_freezing(self) -> None:
        """Log what trains at the start of each epoch and whenever that changes."""
        entry = self.freezing_tracker.note(
            self.state.freezing_log,
            self.state.epoch,
            self.state.step,
            schedules.peak_rates(self.optimizer),
        )
        if entry is not None:
            self.reporter.section("freezing", entry)

    # --- evaluation and checkpoints -------------------------------------------------------

    def evaluate(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Validation metrics, class probabilities and labels over the whole validation set
        (for a language model: its loss and perplexity, and empty arrays)."""
        self._beat("Evaluating")
        return self._score(self.eval_loader)

    def _score(self, loader: Any) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """evaluate() over `loader`: the validation rows, or the training sample (the gap's
        training side, loaders.training_sample)."""
        parts = (self.model, self.accelerator, loader, self._evaluation_batch_done)
        if self.is_language_model:  # a preference run's loss and rewards: preferences.py
            evaluate = self.preferences.evaluate if self.preferences else language_model_evaluation
            metrics = evaluate(*parts) | self.generation.metrics(self.model)
            return metrics, np.empty((0, 0)), np.empty(0)
        return classifier_evaluation(*parts)

    def _evaluation_batch_done(self) -> None:
        self.hang.after_evaluation_batch()
        self._beat("Evaluating")

    def _evaluate_and_checkpoint(self) -> None:
        started = time.perf_counter()
        metrics, _, _ = self.evaluate()
        train_metrics = self._score(self.train_sample_loader)[0]
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
        self.generation.keep_if_best(self.state)
        self.timings["evaluationSeconds"] = (
            self.timings.get("evaluationSeconds", 0.0) + time.perf_counter() - started
        )
        self.save_checkpoint()

    def _track_best(self, metrics: dict[str, float]) -> None:
        metric = self.config.primary_metric()
        early = self.config.evaluation.early_stopping
        min_delta = early.min_delta if early else 0.0
        self.state.track_best(metric, metrics.get(metric, math.nan), min_delta)

    @cached_property
    def checkpoints(self) -> CheckpointStore:
        """The run's checkpoints (checkpoint_store.py: atomic saves, rotation, a full disk)."""
        return CheckpointStore(
            self.accelerator,
            self.output_dir / CHECKPOINTS,
            keep=self.config.output.keep_checkpoints,
            state_bytes=self._state_bytes,
        )

    def save_checkpoint(self) -> Path:
        """Save everything needed to resume, atomically; keep the best and the newest few."""
        self._beat("Saving")
        self.state.gpu_hours = self.cost_ledger.own_gpu_hours()
        self.cost_ledger.write()
        saved = self.checkpoints.save(
            checkpoint_name(self.state.step), best=self.state.best_checkpoint
        )
        self._beat("Saving")
        return saved

    def _state_bytes(self) -> int:
        return state_bytes(self.accelerator.unwrap_model(self.model), self.optimizer)

    def _resume_from_latest_checkpoint(self) -> None:
        latest = self.checkpoints.latest()
        if latest is None:
            return
        self._beat("LoadingModel")
        self.accelerator.load_state(str(latest), **state_load_options(self.config))
        self._beat("LoadingModel")
        self.resumed_from = latest
        self.console.print(
            f"Resuming from {latest} (epoch {self.state.epoch + 1}, step {self.state.step})",
            markup=False,
        )

    # --- the end ---------------------------------------------------------------------------

    def _finish(self, diverged: str | None) -> RunResult:
        stop = self.stop_guard
        if stop.stopping_early:
            self._checkpoint_unless_saved()
        diagnosis = self._diagnose(diverged)
        if not stop.resumable_interruption:  # no verdict on curves to be continued
            self.reporter.section("diagnosis", diagnosis.to_status())
        sections: dict[str, Any] = {}
        bias_audit = None
        if diverged is None and not stop.stopping_early:
            sections, bias_audit = self._final_phase()
        cost = self.cost_ledger.cost()
        self.cost_ledger.write()
        succeeded, message = run_message(self._ending(diverged, cost), self.config, bias_audit)
        interrupted = stop.resumable_interruption
        end = RunEnd(
            outcome_of(succeeded, stop.budget_spent, interrupted),
            best_evaluation(self.state.evaluations, self.state.best_checkpoint),
            diagnosis.to_status(),
            cost,
            sections,
        )
        report = self._report(end)
        self.run_report.write(report)  # report.json and report.html
        self._report_end(end, message)
        return RunResult(
            succeeded,
            message,
            self.output_dir,
            end.best_metrics,
            diagnosis,
            report,
            budget_exceeded=stop.budget_spent,
            interrupted=interrupted,
        )

    def _ending(self, diverged: str | None, cost: RunCost) -> Ending:
        stop = self.stop_guard
        return Ending(
            step=self.state.step,
            total_steps=self.total_steps,
            latest_checkpoint=self.checkpoints.latest(),
            best_metric=self.state.best_metric,
            evaluations_without_improvement=self.state.evaluations_without_improvement,
            over_budget=self.cost_ledger.exceeded_message(cost) if stop.budget_spent else None,
            interrupted=stop.interrupted,
            stop_signal=stop.signal,
            diverged=diverged,
        )

    def _diagnose(self, diverged: str | None) -> Diagnosis:
        return diagnose_run(
            self.config,
            self.state.train_losses,
            self.state.evaluations,
            majority_rate=None
            if self.is_language_model or not self.data
            else self.data.majority_rate,
            diverged=diverged,
        )

    def _end_on_full_disk(self, message: str) -> RunResult:
        """A save found the disk full: the run fails with `message`, and report.json says so
        where the disk still takes it (the next run continues from the checkpoint kept)."""
        diagnosis = self._diagnose(None)
        end = RunEnd(
            "failed",
            best_evaluation(self.state.evaluations, self.state.best_checkpoint),
            diagnosis.to_status(),
            self.cost_ledger.cost(),
            {"message": message},
        )
        report = self._report(end)
        try:
            self.run_report.write(report)
        except OSError as error:
            self.console.print(f"{REPORT_JSON} not written either: {error.strerror}")
        self._report_end(end, message)
        return RunResult(False, message, self.output_dir, end.best_metrics, diagnosis, report)

    def _final_phase(self) -> tuple[dict[str, Any], ModelAudit | None]:
        """Load the best checkpoint, examine it and save it, unless a SIGTERM comes first:
        it skips what is left (examine.py checks between its parts), and the checkpoint of
        the last step, saved with the last evaluation, is where the next start resumes."""
        if self.stop_guard.stop_agreed():
            return {}, None
        self._load_best_checkpoint()
        sections, bias_audit = self._examine_final_model()
        if self.config.output.save_model and not self.stop_guard.stop_agreed():
            self._save_model()
        return sections, bias_audit

    def _checkpoint_unless_saved(self) -> None:
        """A checkpoint of the step the run stopped at, for a run that is to continue."""
        latest = self.checkpoints.latest()
        if latest is None or parse_checkpoint_step(latest.name) != self.state.step:
            self.save_checkpoint()

    def _load_best_checkpoint(self) -> None:
        """The model of the best evaluation, the one that is audited and saved."""
        if self.state.best_checkpoint:
            # load_state also rewinds the registered TrainingState: keep the run's own.
            finished = copy.deepcopy(self.state.state_dict())
            self._beat("Examining")
            best = self.checkpoints.root / self.state.best_checkpoint
            self.accelerator.load_state(str(best), **state_load_options(self.config))
            self._beat("Examining")
            self.state.load_state_dict(finished)

    def _examine_final_model(self) -> tuple[dict[str, Any], ModelAudit | None]:
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
                stop_requested=self.stop_guard.stop_agreed,
                beat=lambda: self._beat("Examining"),
                starting_pairs=self.starting_pairs,
                generation=self.state.generation,
            )
        )

    def _save_model(self) -> None:
        """model/ (and merged/), written by the main process: model_export.py; a sharded
        model's full weights are gathered first, by every process."""
        assert self.data is not None
        state_dict = sharding.full_state_dict(self.accelerator, self.model)
        if self.accelerator.is_main_process:
            beat = partial(self._beat, "Saving")
            export = run_export(
                self.config, self.output_dir, self.tokenizer, self.data.labels, beat
            )
            export_model(export, self.accelerator.unwrap_model(self.model), state_dict)
        self.accelerator.wait_for_everyone()

    def _report(self, end: RunEnd) -> dict[str, Any]:
        assert self.data is not None
        return self.run_report.build(
            end,
            data=self.data,
            state=self.state.state_dict(),
            throughput=self.throughput.run_throughput(),
            timings=self.timings,
            latest_checkpoint=self.checkpoints.latest(),
        )

    def _report_end(self, end: RunEnd, message: str) -> None:
        """The status's last sections and the finished event (rank 0's reporter)."""
        self.reporter.section("artifacts", self.run_report.artifacts(self.checkpoints.latest()))
        self.reporter.section("cost", end.cost.to_status())
        self.reporter.finished(end.outcome, message)

    def cleanup(self) -> None:
        """Release the reporter's servers (the process group lives on: folds reuse it)."""
        reporter = getattr(self, "reporter", None)
        if reporter is not None:
            reporter.close()
