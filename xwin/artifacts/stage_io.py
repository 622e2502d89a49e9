"""What a stage sees of the world: its spec (inputs, output, config) and a context that fetches
inputs from and commits the output to the artifact store. No stage knows where it runs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from xwin.artifacts.config import StoreConfig
from xwin.artifacts.factory import open_store
from xwin.core.config import StrictModel, format_validation_error, load_yaml
from xwin.core.digests import digest
from xwin.core.errors import ConfigError


class StageSpec(StrictModel):
    """The file behind `xwin stage NAME --config FILE`: everything one stage run needs.

    The controller writes it (into a ConfigMap on Kubernetes); a user may write one by hand to
    run a single stage on their own files.
    """

    stage: str
    run_id: str = "adhoc"
    store: StoreConfig = Field(default_factory=StoreConfig)
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="input name -> artifact key in the store (optionally `key#path/inside`), "
        "or a local file/folder path",
    )
    output: str = Field(description="artifact key this stage commits")
    config: dict[str, Any] = Field(default_factory=dict, description="the stage's config section")
    config_digest: str = ""
    shards: int = Field(1, ge=1, description="number of shards of this stage")
    workdir: Path = Path(".xwin/work")

    @classmethod
    def from_file(cls, path: str | Path) -> StageSpec:
        path = Path(path)
        data = load_yaml(path, "stage spec")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, str(path))) from e


_SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(text: str | None, default_count: int = 1) -> tuple[int, int]:
    """`--shard i/K`, else the Indexed-Job completion index with the spec's shard count."""
    if text:
        m = _SHARD_RE.match(text)
        if not m or int(m[1]) >= int(m[2]):
            raise ConfigError(f"--shard {text!r}: expected i/K with 0 <= i < K, e.g. 3/8")
        return int(m[1]), int(m[2])
    if default_count > 1 and "JOB_COMPLETION_INDEX" in os.environ:
        return int(os.environ["JOB_COMPLETION_INDEX"]), default_count
    return 0, default_count


def part_key(key: str, index: int, count: int) -> str:
    """The artifact key of shard `index` of `count` of a sharded stage's output."""
    return f"{key}/part-{index:05d}-of-{count:05d}"


class StageContext:
    """Handed to `run(config, ctx)`: inputs as local paths, one output to commit."""

    def __init__(self, spec: StageSpec, shard: tuple[int, int] = (0, 1)):

        self.spec = spec
        self.store = open_store(spec.store)
        self.shard_index, self.shard_count = shard
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.workdir = Path(spec.workdir) / spec.run_id / spec.stage
        if self.shard_count > 1:
            self.workdir = self.workdir / f"shard-{self.shard_index}"
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process of a distributed stage that commits the output."""
        return self.rank == 0

    def work_fingerprint(self, config: StrictModel) -> str:
        """Names this shard's work (stage config, inputs, shard): a partial file left by an
        earlier attempt is resumed only by an attempt with the same fingerprint."""
        return digest({"config": config.model_dump(mode="json"), "inputs": self.spec.inputs,
                       "shard": [self.shard_index, self.shard_count]})

    @property
    def output_key(self) -> str:
        if self.shard_count > 1:
            return part_key(self.spec.output, self.shard_index, self.shard_count)
        return self.spec.output

    def input(self, name: str) -> Path:
        """The local folder (or file) of input `name`: a committed artifact, else a path."""
        if name not in self.spec.inputs:
            raise ConfigError(f"stage {self.spec.stage}: missing input {name!r} in the spec")
        ref = self.spec.inputs[name]
        key, _, inside = ref.partition("#")
        if self.store.exists(key):
            local = self.store.fetch(key)
            target = local / inside if inside else local
            if not target.exists():
                raise ConfigError(f"input {name!r}: artifact {key!r} has no {inside!r}")
            return target
        if (path := Path(ref)).exists():
            return path
        parts = self.input_parts(name)
        if parts:
            raise ConfigError(f"input {name!r} is sharded; read it with ctx.input_parts()")
        raise ConfigError(
            f"stage {self.spec.stage}: input {name!r} = {ref!r} is neither a committed artifact "
            "nor an existing path"
        )

    def input_parts(self, name: str) -> list[Path]:
        """All shards of a sharded input, in shard order; fails if any shard is missing. An
        unsharded input comes back as a one-element list, so readers need not care."""
        ref = self.spec.inputs[name]
        if self.store.exists(ref.partition("#")[0]) or Path(ref).exists():
            return [self.input(name)]
        keys = [k for k in self.store.list(ref + "/") if re.search(r"/part-\d{5}-of-\d{5}$", k)]
        if not keys:
            raise ConfigError(f"stage {self.spec.stage}: input {name!r} = {ref!r} not found")
        count = int(keys[0].rsplit("-of-", 1)[1])
        missing = [i for i in range(count) if part_key(ref, i, count) not in keys]
        if missing:
            raise ConfigError(f"input {name!r} = {ref!r}: shards {missing} of {count} missing")
        return [self.store.fetch(part_key(ref, i, count)) for i in range(count)]

    def commit(self, local_dir: Path, metrics: dict[str, Any] | None = None):
        """Commit local_dir as this stage's (or shard's) output; only rank 0 commits."""
        if not self.is_main:
            return None
        return self.store.commit(
            self.output_key,
            Path(local_dir),
            producer=self.spec.stage,
            config_digest=self.spec.config_digest,
            metadata={"metrics": metrics or {}, "inputs": self.spec.inputs},
        )
