"""Files and directories that hold secrets (passwords, tokens, keys, data): directories
0700 and files 0600, owned by the user running foobar, so no other local user reads them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("foobar.files")

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600


def private_directory(path: Path) -> Path:
    """`path` (and missing parents) created 0700; an existing one is tightened to 0700,
    as what foobar keeps there is no one else's business."""
    path.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIRECTORY:
        path.chmod(PRIVATE_DIRECTORY)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `path` with mode 0600 from its first byte (never readable by others, not
    even for a moment), whole or not at all: a temporary file renamed over it."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    temporary.replace(path)


def tighten(path: Path) -> bool:
    """A secret file that others may read or write is made 0600, and the change logged
    (it may have been read already: the operator should know). True when it changed."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 == 0:
        return False
    path.chmod(mode & 0o700 or PRIVATE_FILE)
    log.warning(
        "event=secret_file_tightened path=%s mode=%s now=%s",
        path,
        oct(mode),
        oct(stat.S_IMODE(path.stat().st_mode)),
    )
    return True
