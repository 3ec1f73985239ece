"""What a run writes is as readable as the process umask allows, like any file it opens.

The model, the checkpoints and the data cache are written into a hidden folder and renamed
into place, so that a folder that exists is complete. Some libraries that fill such a
folder write atomically themselves, through a private temporary file renamed at the end:
safetensors does so for every model.safetensors (save_pretrained and accelerate's
save_state both go through it), and a temporary file is created mode 0600 whatever the
umask. On a volume a team shares, nobody but the training user could then read the model.
`publish` gives everything in such a folder the mode that a plain open() or mkdir() would
have (0666 or 0777 less the umask) before the rename: 0644 and 0755 under the usual umask
022, still 0600 and 0700 under 077.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PROC_STATUS = Path("/proc/self/status")
"""Linux (4.7 and later) shows the umask there, so it can be read without being changed."""


def current_umask() -> int:
    """The process umask, left as it is.

    os.umask can only read the mask by setting another one; for the moment in between, a
    file another thread creates would get the wrong mode, so /proc is read where it can be,
    and otherwise the stricter 077 is set for that moment (never a more open one).
    """
    try:
        for line in PROC_STATUS.read_text(encoding="utf-8").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def honour_umask(root: Path) -> None:
    """Give `root` and everything below it the modes open() and mkdir() would give them.

    A file system that cannot change modes (some network and object-store mounts) keeps
    what the files have: that is logged, never an error, as a model must not be lost to it.
    """
    mask = current_umask()
    for path in _tree(root):
        mode = (0o777 if path.is_dir() else 0o666) & ~mask
        try:
            path.chmod(mode)
        except OSError as error:
            logger.warning("could not make %s mode %o (%s); left as written", path, mode, error)
            return


def publish(partial: Path, final: Path) -> None:
    """Move the folder written at `partial` to `final` (replacing what is there), its
    modes fixed first so that the folder never appears with files others cannot read."""
    honour_umask(partial)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def _tree(root: Path) -> Iterator[Path]:
    """`root` and everything below it, less symbolic links (a chmod would follow them)."""
    if root.is_symlink():
        return
    yield root
    for folder, directories, files in os.walk(root):
        for name in (*directories, *files):
            path = Path(folder) / name
            if not path.is_symlink():
                yield path
