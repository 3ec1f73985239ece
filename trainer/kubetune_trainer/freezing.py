"""Which parameters train when, and each layer group's learning-rate factor.

Fine-tuning a pre-trained network goes wrong when the randomly initialised head sends
large gradients into layers that already know the language: the lower layers forget
("catastrophic forgetting"). The remedies are freezing (embeddings, the lowest blocks),
training only the head first, unfreezing top-down as training goes (ULMFiT), and lower
learning rates for lower layers (discriminative rates). This module finds a model's
layer groups generically — its repeated blocks, not hard-coded BERT names — and turns a
`FreezingSpec` into a plan the training loop follows.

Two mechanisms, because DistributedDataParallel decides once which parameters it
synchronises: parameters frozen for the whole run get `requires_grad=False` before the
model is prepared (no compute, no communication); parameters frozen only for a while keep
`requires_grad=True` and have their gradients dropped before each optimizer step, so the
optimizer leaves them bit-identical until their turn comes.

A spec is checked against the model it is applied to, because a manifest cannot know the
model's parameter names or depth: a pattern that matches no parameter, a freezeLayers
deeper than the model, or a plan that leaves nothing to train is a `FreezingError` that
names the field, not a silently ignored setting or an optimizer with nothing to optimise.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from kubetune_trainer.config import FreezingSpec

HEAD = "head"
EMBEDDINGS = "embeddings"
SHOWN_NAMES = 3
"""A pattern that matches nothing is shown beside this many of the model's parameter names."""


class FreezingError(ValueError):
    """A freezing section that this model cannot follow (the message names the field)."""


@dataclass(frozen=True)
class LayerGroups:
    """A model's parameters by role: embeddings, repeated blocks (bottom to top), head."""

    embeddings: tuple[str, ...]
    blocks: tuple[tuple[str, ...], ...]
    head: tuple[str, ...]

    def named(self) -> dict[str, tuple[str, ...]]:
        """Every group by display name, e.g. 'block 3' for the fourth block from the bottom."""
        groups = {EMBEDDINGS: self.embeddings}
        groups.update({block_name(i): names for i, names in enumerate(self.blocks)})
        groups[HEAD] = self.head
        return groups

    def unfreezing_order(self) -> list[str]:
        """Group names in the order gradual unfreezing releases them: top block first."""
        return [block_name(i) for i in reversed(range(len(self.blocks)))] + [EMBEDDINGS]


def block_name(index: int) -> str:
    return f"block {index}"


def find_layer_groups(model: nn.Module) -> LayerGroups:
    """Split a model's parameters into embeddings, its repeated blocks, and the head."""
    names = [name for name, _ in model.named_parameters()]
    block_list = _repeated_blocks(model)
    blocks: list[tuple[str, ...]] = []
    if block_list is not None:
        prefix, count = block_list
        blocks = [_with_prefix(names, f"{prefix}.{i}.") for i in range(count)]
    in_blocks = {n for block in blocks for n in block}
    embedding_modules = _embedding_prefixes(model)
    embeddings = tuple(
        n
        for n in names
        if n not in in_blocks and ("embed" in n or n.rsplit(".", 1)[0] in embedding_modules)
    )
    head = tuple(n for n in names if n not in in_blocks and n not in embeddings)
    return LayerGroups(embeddings, tuple(blocks), head)


def _repeated_blocks(model: nn.Module) -> tuple[str, int] | None:
    """The ModuleList of same-type children holding the most parameters (the layer stack)."""
    best: tuple[str, int] | None = None
    best_size = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, len(module)), size
    return best


def _embedding_prefixes(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, nn.Embedding)}


def _with_prefix(names: Iterable[str], prefix: str) -> tuple[str, ...]:
    return tuple(n for n in names if n.startswith(prefix))


@dataclass(frozen=True)
class FreezingPlan:
    """The freezing spec applied to one model: what trains at each epoch and step."""

    groups: LayerGroups
    spec: FreezingSpec
    steps_per_epoch: int
    always_frozen: frozenset[str]
    always_trainable: frozenset[str]

    @property
    def is_scheduled(self) -> bool:
        """Whether some parameters are frozen only for a while (so gradients must be dropped)."""
        return self.spec.head_only_epochs > 0 or self.spec.gradual_unfreezing is not None

    def trainable_at(self, epoch: int, step: int) -> frozenset[str]:
        """Parameter names that may change at this (0-based) epoch and global optimizer step."""
        released = {HEAD, *self.unfrozen_groups(epoch, step)}
        named = self.groups.named()
        scheduled = {n for group in released for n in named[group]}
        return frozenset((scheduled - self.always_frozen) | self.always_trainable)

    def unfrozen_groups(self, epoch: int, step: int) -> list[str]:
        """The non-head groups that the schedule has released so far."""
        order = self.groups.unfreezing_order()
        if epoch < self.spec.head_only_epochs:
            return []
        gradual = self.spec.gradual_unfreezing
        if gradual is None:
            return order
        if gradual.unit == "epochs":
            elapsed = epoch - self.spec.head_only_epochs
        else:
            elapsed = step - self.spec.head_only_epochs * self.steps_per_epoch
        stage = elapsed // gradual.every + (1 if self.spec.head_only_epochs else 0)
        return order[: stage * gradual.groups_per_step]

    def learning_rate_scale(self, group: str) -> float:
        """The discriminative factor of a group: decay^depth counted down from the head."""
        order = self.groups.unfreezing_order()
        depth = 0 if group == HEAD else order.index(group) + 1
        return float(self.spec.layerwise_lr_decay**depth)

    def describe(self, epoch: int, step: int) -> dict[str, Any]:
        """What trains now, for the per-epoch freezing log of the report."""
        trainable = self.trainable_at(epoch, step)
        states = {
            group: _group_state(names, trainable) for group, names in self.groups.named().items()
        }
        return {
            "epoch": epoch + 1,
            "step": step,
            "trainable": [g for g, state in states.items() if state != "frozen"],
            "frozen": [g for g, state in states.items() if state == "frozen"],
            "partial": [g for g, state in states.items() if state == "partial"],
        }


def _group_state(names: tuple[str, ...], trainable: frozenset[str]) -> str:
    inside = sum(1 for n in names if n in trainable)
    if inside == 0:
        return "frozen"
    return "trainable" if inside == len(names) else "partial"


def build_plan(model: nn.Module, spec: FreezingSpec, steps_per_epoch: int) -> FreezingPlan:
    """Turn the spec into a plan for this model (patterns match parameter names); a
    FreezingError when the model cannot follow it or it would train nothing."""
    groups = find_layer_groups(model)
    names = [n for n, _ in model.named_parameters()]
    _check_fits(spec, groups, names)
    already_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    frozen = set(already_frozen) | set(_matching(names, spec.frozen_modules))
    if spec.freeze_embeddings:
        frozen |= set(groups.embeddings)
    for block in groups.blocks[: spec.freeze_layers]:
        frozen |= set(block)
    trainable = set(_matching(names, spec.trainable_modules)) - already_frozen
    plan = FreezingPlan(
        groups, spec, max(steps_per_epoch, 1), frozenset(frozen - trainable), frozenset(trainable)
    )
    _check_trains_something(plan, len(names))
    return plan


def _check_fits(spec: FreezingSpec, groups: LayerGroups, names: list[str]) -> None:
    """Every pattern matches a parameter and freezeLayers is within the model's depth."""
    for field, patterns in (
        ("frozenModules", spec.frozen_modules),
        ("trainableModules", spec.trainable_modules),
    ):
        for pattern in patterns:
            if not any(_matching(names, [pattern])):
                raise FreezingError(f"freezing.{field}: {_matches_nothing(pattern, names)}")
    depth = len(groups.blocks)
    if spec.freeze_layers > depth:
        raise FreezingError(
            f"freezing.freezeLayers: {spec.freeze_layers} is deeper than the model, which has "
            f"{depth} blocks; at most {depth} freezes them all"
        )


def _matches_nothing(pattern: str, names: list[str]) -> str:
    """Why `pattern` matched nothing: patterns match whole names, from their first letter."""
    anywhere = f"*{pattern}"
    if any(_matching(names, [anywhere])):
        return (
            f"{pattern!r} matches no parameter of the model (a pattern matches whole "
            f"parameter names); {anywhere!r} would match"
        )
    shown = ", ".join(repr(n) for n in names[:SHOWN_NAMES])
    return f"{pattern!r} matches no parameter of the model, whose names are like {shown}"


def _check_trains_something(plan: FreezingPlan, parameters: int) -> None:
    """Refuse a plan under which no parameter would ever train, or none at the start."""
    spec = plan.spec
    if len(plan.always_frozen) == parameters:
        raise FreezingError(
            f"{_freezing_fields(spec)}: all {parameters} parameter tensors of the model would "
            "be frozen, so nothing would train; freeze less, or name what trains in "
            "freezing.trainableModules"
        )
    if not plan.trainable_at(0, 0):
        schedule = "headOnlyEpochs" if spec.head_only_epochs else "gradualUnfreezing"
        raise FreezingError(
            f"{_freezing_fields(spec)}: the whole head would be frozen, and "
            f"freezing.{schedule} trains only the head at first, so nothing would train "
            "then; leave part of the head unfrozen"
        )


def _freezing_fields(spec: FreezingSpec) -> str:
    """The fields that freeze parameters for the whole run, e.g. 'freezing.freezeLayers'."""
    settings = (
        ("frozenModules", spec.frozen_modules),
        ("freezeLayers", spec.freeze_layers),
        ("freezeEmbeddings", spec.freeze_embeddings),
    )
    return ", ".join(f"freezing.{field}" for field, value in settings if value) or "freezing"


def _matching(names: Iterable[str], patterns: list[str]) -> Iterator[str]:
    return (n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def freeze_permanently(model: nn.Module, plan: FreezingPlan) -> int:
    """Switch off gradients of the parameters that never train; return how many were frozen."""
    count = 0
    for name, parameter in model.named_parameters():
        if name in plan.always_frozen and parameter.requires_grad:
            parameter.requires_grad_(False)
            count += 1
    return count


def drop_frozen_gradients(model: nn.Module, trainable: frozenset[str]) -> None:
    """Clear gradients of parameters the schedule holds frozen, so the optimizer skips them."""
    for name, parameter in model.named_parameters():
        if parameter.grad is not None and name not in trainable:
            parameter.grad = None
