"""What kind of file a path is, when it is not a regular file or a directory.

A data source that is a FIFO or a character device (a symlink to /dev/zero) blocks or
reads without end: the trainer refuses it before opening it, and `kubetune validate`
refuses it too. Standard library only, so that the base install's `validate` can use it.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Final

_SPECIAL_KINDS: Final = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(mode: int) -> str | None:
    """'a FIFO (named pipe)', 'a character device', ... for a file mode (os.stat's
    st_mode) that is neither a regular file nor a directory; None otherwise."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((name for is_kind, name in _SPECIAL_KINDS if is_kind(mode)), "a special file")


def shown(path: Path) -> str:
    """The path, and where it leads when it is a symlink."""
    return f"{path} (a symlink to {path.resolve()})" if path.is_symlink() else str(path)
