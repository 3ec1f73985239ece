"""A checkpoint save that runs out of disk space: one line saying what is kept.

A checkpoint is written into a hidden folder and renamed into place, so a save that finds
the disk full loses nothing: the last complete checkpoint stays, and a resume ignores the
partial folder. The errors the writers raise say none of that, and not all of them even
say the disk is full: safetensors raises a SafetensorError whose text holds "No space left
on device", pickling an OSError with ENOSPC, and torch.save a RuntimeError ("unexpected
pos") that hides it. So a save error counts as a full disk when its errno or text says so,
or, for torch's, when the disk has less room than the state being written; the message
names the directory, the size of the state and the space free, and the checkpoint kept.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch

OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
OUT_OF_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded")
"""What the writers that raise no OSError (safetensors) put in their message instead."""
MB = 10**6


class DiskFullError(Exception):
    """A save that found no space; the message says what was kept and how to continue."""


def is_out_of_space(error: Exception, directory: Path, needed: int) -> bool:
    """Whether `error`, raised while writing `needed` bytes under `directory`, means that the
    disk (or the quota) is full."""
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
        return True
    if any(text in str(error) for text in OUT_OF_SPACE_TEXTS):
        return True
    return isinstance(error, RuntimeError) and free_bytes(directory) < needed


def free_bytes(directory: Path) -> int:
    """The bytes free to this user on the file system of `directory` (0 when unknown)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About what a checkpoint holds: the model's and the optimizer's tensors."""
    tensors = list(model.state_dict().values())
    for state in optimizer.state_dict()["state"].values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def full_disk_message(directory: Path, saving: str, needed: int, kept: Path | None) -> str:
    """The one line for a save of `saving` into `directory` that found the disk full."""
    if kept is None:
        after = "no checkpoint was complete yet: free space and run again to start over"
    else:
        after = (
            f"the last complete checkpoint, {kept.name}, is kept: free space and run again "
            "to continue from it"
        )
    return (
        f"no space left on the device of {directory} while saving {saving}: the state is "
        f"about {_megabytes(needed)} and {_megabytes(free_bytes(directory))} is free; {after}"
    )


def _megabytes(count: int) -> str:
    return f"{count / MB:,.1f} MB"
