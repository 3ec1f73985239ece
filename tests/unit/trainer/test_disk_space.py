"""Which save errors mean a full disk, and the line that says what was kept.

The writers' real errors on a real full file system are in
tests/integration/test_disk_full.py; here each kind of error is built as they raise it."""

from __future__ import annotations

import errno
from pathlib import Path

from kubetune_trainer.disk_space import free_bytes, full_disk_message, is_out_of_space


def test_an_oserror_with_enospc_or_edquot_is_a_full_disk(tmp_path: Path) -> None:
    for code in (errno.ENOSPC, errno.EDQUOT):
        assert is_out_of_space(OSError(code, "full"), tmp_path, needed=0)
    assert not is_out_of_space(OSError(errno.EACCES, "denied"), tmp_path, needed=0)


def test_safetensors_says_it_only_in_its_message(tmp_path: Path) -> None:
    text = "Error while serializing: I/O error: No space left on device (os error 28)"
    assert is_out_of_space(Exception(text), tmp_path, needed=0)
    assert not is_out_of_space(Exception("Error while serializing: bad dtype"), tmp_path, 0)


def test_torch_saves_runtime_error_is_a_full_disk_only_without_room(tmp_path: Path) -> None:
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert is_out_of_space(error, tmp_path, needed=free_bytes(tmp_path) + 1)
    assert not is_out_of_space(error, tmp_path, needed=1)


def test_the_message_says_when_no_checkpoint_is_kept(tmp_path: Path) -> None:
    message = full_disk_message(tmp_path, "checkpoint step-00000010", 2_500_000, None)
    assert message.startswith(
        f"no space left on the device of {tmp_path} while saving checkpoint step-00000010: "
        "the state is about 2.5 MB and "
    )
    assert message.endswith(
        "is free; no checkpoint was complete yet: free space and run again to start over"
    )
