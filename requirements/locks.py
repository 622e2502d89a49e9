"""The images' dependency locks: `make locks` writes them, `make check-locks` (CI) proves they resolve.

Each image installs its Python packages from one lock file, `pip install --require-hashes --no-deps
--no-build-isolation -r requirements/locks/NAME.txt`: an exact version and the sha256 hashes of
every package, torch, vLLM and the NVIDIA CUDA wheels included. requirements/locks/locks.toml lists the locks, their
inputs and the platform they are resolved for.

The resolver is uv (`uv pip compile --generate-hashes`): it resolves for a target platform
(linux x86_64, CPython 3.11) whatever machine it runs on, from the index's metadata and hashes
alone, so locking and checking the CUDA stack never downloads its gigabytes of wheels. pip-compile
resolves only for the interpreter it runs in and downloads every distribution to hash it.

`check` resolves each lock's inputs again with every version pinned to the lock's, and fails
(exit 1) when that fails (a version the index no longer has, a pin that contradicts another
package's requirements), when the result and the lock differ (a dependency the lock lacks, an
entry nothing needs: run `make locks`), or when a hash in the lock is no file of that version on
the index. Bad lock files (a line without an exact pin or hash) exit 2 naming file and line.

Usage: python requirements/locks.py {compile [--upgrade],check} [--lock NAME ...] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path("requirements/locks/locks.toml")
COMPILE_COMMAND = "make locks"
# FROM image[:tag]@sha256:<64 hex digits>
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


class BadLock(Exception):
    """A lock file or the lock table that cannot be read as written: exit 2."""


@dataclass(frozen=True)
class LockSpec:
    """One image's lock: what uv resolves into requirements/locks/NAME.txt, and how."""

    name: str
    inputs: tuple[str, ...]
    dependencies: bool = True  # False: the listed packages only (uv's --no-deps)
    exclude: tuple[str, ...] = ()  # packages resolved but never written (--no-emit-package)


@dataclass(frozen=True)
class Settings:
    """The [resolve] table: the target platform and the index every lock is resolved against."""

    python_version: str
    python_platform: str
    index_url: str | None
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    locks: tuple[LockSpec, ...] = ()


@dataclass(frozen=True)
class Pin:
    """One package of a lock file: `name==version` and its hashes, with the line it starts on."""

    name: str
    version: str
    hashes: frozenset[str]
    line: int


def normalize(name: str) -> str:
    """PEP 503 name normalization: `PyYAML`, `pyyaml` and `py_yaml` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_settings(root: Path) -> Settings:
    path = root / TABLE
    try:
        table = tomllib.loads(path.read_text())
        resolve = table["resolve"]
        locks = tuple(
            LockSpec(
                name=name,
                inputs=tuple(spec["inputs"]),
                dependencies=bool(spec.get("dependencies", True)),
                exclude=tuple(normalize(n) for n in spec.get("exclude", ())),
            )
            for name, spec in table["locks"].items()
        )
        return Settings(
            python_version=str(resolve["python-version"]),
            python_platform=str(resolve["python-platform"]),
            index_url=resolve.get("index-url"),
            find_links=tuple(resolve.get("find-links", ())),
            constraints=tuple(resolve.get("constraints", ())),
            locks=locks,
        )
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise BadLock(f"{path}: {error}") from error
    except KeyError as error:
        raise BadLock(f"{path}: missing key {error}") from error


def parse_lock(path: Path) -> dict[str, Pin]:
    """The pins of a lock file in pip's requirements format, as `uv pip compile` writes it.

    Written here rather than with pip's parser: pip has no public API, and a lock is a fixed,
    simple format (`name==version \\` then `--hash=sha256:...` continuation lines, `#` comments).
    """
    try:
        text = path.read_text()
    except OSError as error:
        raise BadLock(f"{path}: {error}") from error
    pins: dict[str, Pin] = {}
    logical, start = "", 0
    lines = text.splitlines() + [""]
    for number, raw in enumerate(lines, start=1):
        content = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not logical:
            start = number
        if content.endswith("\\"):
            logical += content[:-1] + " "
            continue
        logical += content
        if logical.strip():
            pin = parse_entry(path, start, logical)
            if pin.name in pins:
                raise BadLock(f"{path}:{start}: {pin.name} is pinned twice (line {pins[pin.name].line})")
            pins[pin.name] = pin
        logical = ""
    return pins


def parse_entry(path: Path, line: int, entry: str) -> Pin:
    words = entry.split()
    requirement, options = words[0], words[1:]
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^=;\s]+)", requirement)
    if match is None:
        raise BadLock(f"{path}:{line}: {requirement!r} is not an exact pin (name==version)")
    hashes = set()
    for option in options:
        if not option.startswith("--hash=sha256:"):
            raise BadLock(f"{path}:{line}: {match.group(1)}: unexpected {option!r} (only --hash=sha256:...)")
        hashes.add(option.removeprefix("--hash="))
    if not hashes:
        raise BadLock(f"{path}:{line}: {match.group(1)}=={match.group(3)} has no --hash")
    return Pin(normalize(match.group(1)), match.group(3), frozenset(hashes), line)


def uv_binary() -> str:
    """uv from the `uv` package installed with this interpreter (pyproject.toml's dev extra)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            sys.exit("locks: uv is not installed (pip install uv, or `make install`)")
        return found


def uv_compile(root: Path, settings: Settings, lock: LockSpec, output: Path, extra_constraints: tuple[Path, ...] = ()):
    """Run `uv pip compile` for one lock; the completed process (its stderr says why on failure)."""
    argv = [
        uv_binary(), "pip", "compile", *lock.inputs,
        "--output-file", str(output),
        "--generate-hashes",
        "--python-version", settings.python_version,
        "--python-platform", settings.python_platform,
        "--python", sys.executable,  # builds the few source-only packages' metadata
        "--custom-compile-command", COMPILE_COMMAND,
        "--no-config",  # this table is the whole configuration: no uv.toml, no [tool.uv]
        "--quiet",
    ]
    if settings.index_url:
        argv += ["--index-url", settings.index_url]
    else:
        argv += ["--no-index"]
    for links in settings.find_links:
        argv += ["--find-links", str(root / links)]
    for constraint in (*settings.constraints, *extra_constraints):
        argv += ["--constraint", str(constraint)]
    if not lock.dependencies:
        argv += ["--no-deps"]
    for name in lock.exclude:
        argv += ["--no-emit-package", name]
    return subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)


def lock_path(root: Path, lock: LockSpec) -> Path:
    return root / "requirements" / "locks" / f"{lock.name}.txt"


def compile_locks(root: Path, settings: Settings, locks: tuple[LockSpec, ...], upgrade: bool = False) -> int:
    """Write each lock; a failed resolution leaves the old lock file as it was.

    uv keeps the versions of the output file it is given wherever the inputs still allow them,
    so a re-lock changes only what an input change forces; `upgrade` re-resolves everything to
    the newest versions the inputs allow.
    """
    for lock in locks:
        target = lock_path(root, lock)
        with tempfile.TemporaryDirectory() as scratch:
            staged = Path(scratch) / target.name
            if target.exists() and not upgrade:
                shutil.copyfile(target, staged)
            done = uv_compile(root, settings, lock, staged)
            if done.returncode != 0:
                print(f"locks: {lock.name}: resolution failed\n{done.stderr}", file=sys.stderr)
                return 1
            parse_lock(staged)  # what we write, check_locks and pip --require-hashes can read
            # beside the target, then renamed over it: a reader never sees half a lock
            partial = target.with_name(f".{target.name}.partial")
            shutil.copyfile(staged, partial)
            os.replace(partial, target)
        print(f"locks: {target.relative_to(root)}: {len(parse_lock(target))} packages")
    return 0


def check_lock(root: Path, settings: Settings, lock: LockSpec) -> list[str]:
    """The reasons the lock does not resolve to itself (none: it does)."""
    path = lock_path(root, lock)
    pins = parse_lock(path)
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        pinned = Path(scratch) / "pins.txt"
        pinned.write_text("".join(f"{pin.name}=={pin.version}\n" for pin in pins.values()))
        resolved_path = Path(scratch) / "resolved.txt"
        done = uv_compile(root, settings, lock, resolved_path, extra_constraints=(pinned,))
        if done.returncode != 0:
            return [f"{path.relative_to(root)} does not resolve:\n{done.stderr.strip()}"]
        resolved = parse_lock(resolved_path)
    for name in sorted(resolved.keys() - pins.keys()):
        problems.append(f"{name}=={resolved[name].version} is needed but not in the lock (run `{COMPILE_COMMAND}`)")
    for name in sorted(pins.keys() - resolved.keys()):
        problems.append(f"{name}=={pins[name].version} (line {pins[name].line}) is needed by nothing "
                        f"(run `{COMPILE_COMMAND}`)")
    for name in sorted(pins.keys() & resolved.keys()):
        pin, found = pins[name], resolved[name]
        if pin.version != found.version:  # a constraint uv could not honour silently
            problems.append(f"{name}: the lock pins {pin.version}, the resolution gives {found.version}")
        elif unknown := sorted(pin.hashes - found.hashes):
            problems.append(f"{name}=={pin.version} (line {pin.line}): {', '.join(unknown)} is no file "
                            f"of that version on the index")
    return [f"{path.relative_to(root)}: {problem}" for problem in problems]


def check_base_images(root: Path) -> list[str]:
    """Every Dockerfile's FROM names its base image by digest (ARG defaults substituted)."""
    problems = []
    for dockerfile in sorted((root / "images").glob("*.Dockerfile")):
        defaults: dict[str, str] = {}
        for number, line in enumerate(dockerfile.read_text().splitlines(), start=1):
            words = line.split()
            if len(words) >= 2 and words[0].upper() == "ARG" and "=" in words[1]:
                key, value = words[1].split("=", 1)
                defaults.setdefault(key, value)
            elif len(words) >= 2 and words[0].upper() == "FROM":
                image = substitute_args(words[1], defaults)
                if not DIGEST.search(image):
                    problems.append(f"{dockerfile.relative_to(root)}:{number}: FROM {image} has no @sha256: digest "
                                    "(images/README.md: bumping a base image)")
    return problems


def substitute_args(text: str, defaults: dict[str, str]) -> str:
    """`${NAME}` and `$NAME` replaced by the ARG's default, as `docker build` does without --build-arg."""
    return re.sub(r"\$\{?(\w+)\}?", lambda match: defaults.get(match.group(1), match.group(0)), text)


def check_locks(root: Path, settings: Settings, locks: tuple[LockSpec, ...]) -> int:
    problems = check_base_images(root)
    for lock in locks:
        found = check_lock(root, settings, lock)
        problems += found
        if not found:
            print(f"locks: {lock.name}: {len(parse_lock(lock_path(root, lock)))} packages resolve, hashes on the index")
    for problem in problems:
        print(f"locks: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["compile", "check"])
    parser.add_argument("--lock", action="append", help="only this lock (repeatable; default: all)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root")
    parser.add_argument("--upgrade", action="store_true",
                        help="compile: newest versions the inputs allow, not the current lock's")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        settings = read_settings(root)
        known = {lock.name: lock for lock in settings.locks}
        if unknown := sorted(set(args.lock or ()) - known.keys()):
            raise BadLock(f"{root / TABLE}: no lock named {', '.join(unknown)} (known: {', '.join(known)})")
        locks = tuple(known[name] for name in args.lock) if args.lock else settings.locks
        if args.command == "compile":
            return compile_locks(root, settings, locks, upgrade=args.upgrade)
        return check_locks(root, settings, locks)
    except BadLock as error:
        print(f"locks: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
