"""Content digests: the stable names of configs, inputs and local paths that artifact keys,
resume fingerprints and caches are built from."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def digest(obj: Any) -> str:
    """A stable short sha256 of any JSON-able object (configs, input digests)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint_path(path: Path) -> dict[str, Any]:
    """A cheap identity of a local file or folder (names, sizes, mtimes): a user-supplied path
    that changes gets a new digest without hashing gigabytes on every plan."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.is_dir():
        files = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                st = (Path(dirpath) / name).stat()
                rel = (Path(dirpath) / name).relative_to(path).as_posix()
                files.append((rel, st.st_size, st.st_mtime_ns))
        return {"path": str(path.resolve()), "files": digest(files)}
    return {"missing": str(path)}
