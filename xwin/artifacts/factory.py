"""Opens the store a config names. Apart from the interface (`store`) so that the backends,
which import the interface, never import each other through it."""

from __future__ import annotations

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.store import ArtifactStore


def open_store(config: StoreConfig) -> ArtifactStore:
    if config.kind == "local":
        from xwin.artifacts.local import LocalStore

        return LocalStore(config)
    from xwin.artifacts.s3 import S3Store

    return S3Store(config)
