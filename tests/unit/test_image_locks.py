"""The images' lock files (requirements/locks.py): `make locks` writes exact pins with hashes,
`make check-locks` fails on a broken pin, a lost dependency, a stale entry or a wrong hash.

The check runs for real, uv and all, against a local index of tiny wheels built here: the same
code path CI runs against PyPI, without the network. The committed locks and Dockerfiles are
checked offline: every package hashed, every image installing its lock, every base by digest.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "requirements" / "locks.py"
DIGEST = "sha256:" + "ab" * 32

spec = importlib.util.spec_from_file_location("image_locks", SCRIPT)
locks = importlib.util.module_from_spec(spec)
sys.modules["image_locks"] = locks  # dataclasses resolve their module by name
spec.loader.exec_module(locks)


def build_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> str:
    """A real (tiny) wheel; returns its sha256, the hash a lock must carry."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A repository root with one lock (`app`: alpha, which needs beta>=1) and a local index."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    hashes = {
        "alpha==1.0": build_wheel(wheels, "alpha", "1.0", ("beta>=1.0",)),
        "beta==1.0": build_wheel(wheels, "beta", "1.0"),
        "beta==2.0": build_wheel(wheels, "beta", "2.0"),
        "gamma==1.0": build_wheel(wheels, "gamma", "1.0"),
    }
    (tmp_path / "requirements" / "locks").mkdir(parents=True)
    (tmp_path / "requirements" / "locks" / "app.in").write_text("alpha\n")
    (tmp_path / "requirements" / "locks" / "locks.toml").write_text(
        '[resolve]\npython-version = "3.11"\npython-platform = "x86_64-manylinux_2_28"\n'
        'find-links = ["wheels"]\n\n'
        '[locks.app]\ninputs = ["requirements/locks/app.in"]\n'
    )
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "app.Dockerfile").write_text(
        f"ARG BASE=python:3.11-slim@{DIGEST}\nFROM ${{BASE}}\nRUN true\n"
    )
    return tmp_path, hashes


def run(root: Path, command: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_CACHE_DIR": str(root / "uv-cache")}  # nothing cached from another test
    return subprocess.run([sys.executable, str(SCRIPT), command, "--root", str(root), *args],
                          capture_output=True, text=True, timeout=120, check=False, env=env)


def lock_file(root: Path) -> Path:
    return root / "requirements" / "locks" / "app.txt"


def compiled(project) -> Path:
    root, _ = project
    done = run(root, "compile")
    assert done.returncode == 0, done.stderr
    return lock_file(root)


def pin_beta_1(path: Path, hashes: dict[str, str]) -> None:
    """The lock as if written when beta 1.0 was the newest: still valid (alpha needs beta>=1.0)."""
    text = path.read_text().replace("beta==2.0", "beta==1.0")
    path.write_text(text.replace(hashes["beta==2.0"], hashes["beta==1.0"]))


def test_compile_pins_every_package_with_the_hash_of_its_file(project):
    root, hashes = project
    pins = locks.parse_lock(compiled(project))
    assert {name: pin.version for name, pin in pins.items()} == {"alpha": "1.0", "beta": "2.0"}
    assert pins["alpha"].hashes == {hashes["alpha==1.0"]}
    assert pins["beta"].hashes == {hashes["beta==2.0"]}
    assert "make locks" in lock_file(root).read_text()  # the header says how to regenerate it


def test_check_passes_on_the_lock_compile_wrote(project):
    root, _ = project
    compiled(project)
    done = run(root, "check")
    assert done.returncode == 0, done.stderr
    assert "app: 2 packages resolve" in done.stdout


def test_check_fails_on_a_version_the_index_does_not_have(project):
    root, _ = project
    path = compiled(project)
    path.write_text(path.read_text().replace("beta==2.0", "beta==9.9"))
    done = run(root, "check")
    assert done.returncode == 1
    assert "app.txt does not resolve" in done.stderr and "beta" in done.stderr


def test_check_fails_on_a_pin_that_contradicts_a_requirement(project):
    root, hashes = project
    path = compiled(project)
    pin_beta_1(path, hashes)
    assert run(root, "check").returncode == 0  # beta 1.0 satisfies alpha's beta>=1.0: a valid lock
    (root / "requirements" / "locks" / "app.in").write_text("alpha\nbeta>=2\n")  # now it does not
    done = run(root, "check")
    assert done.returncode == 1 and "does not resolve" in done.stderr


def test_check_fails_on_a_hash_that_is_no_file_on_the_index(project):
    root, hashes = project
    path = compiled(project)
    path.write_text(path.read_text().replace(hashes["beta==2.0"], "sha256:" + "0" * 64))
    done = run(root, "check")
    assert done.returncode == 1
    assert f"beta==2.0 (line {locks.parse_lock(path)['beta'].line}): sha256:{'0' * 64} is no file" in done.stderr


def test_check_fails_on_a_dependency_missing_from_the_lock(project):
    root, _ = project
    path = compiled(project)
    text = path.read_text()
    path.write_text(re.sub(r"beta==2\.0 \\\n(\s+--hash=\S+\n)+", "", text))
    assert "beta" not in locks.parse_lock(path)
    done = run(root, "check")
    assert done.returncode == 1
    assert "beta==2.0 is needed but not in the lock" in done.stderr


def test_check_fails_on_an_entry_nothing_needs(project):
    root, hashes = project
    path = compiled(project)
    path.write_text(path.read_text() + f"gamma==1.0 \\\n    --hash={hashes['gamma==1.0']}\n")
    done = run(root, "check")
    assert done.returncode == 1
    assert "gamma==1.0 (line" in done.stderr and "is needed by nothing" in done.stderr


def test_check_fails_on_a_base_image_without_a_digest(project):
    root, _ = project
    compiled(project)
    (root / "images" / "app.Dockerfile").write_text("FROM python:3.11-slim\n")
    done = run(root, "check")
    assert done.returncode == 1
    assert "images/app.Dockerfile:1: FROM python:3.11-slim has no @sha256: digest" in done.stderr


@pytest.mark.parametrize(("line", "reason"), [
    ("alpha>=1.0 --hash=sha256:" + "1" * 64, "'alpha>=1.0' is not an exact pin"),
    ("alpha==1.0", "alpha==1.0 has no --hash"),
    ("alpha==1.0 --index-url=https://example.invalid", "alpha: unexpected '--index-url=https://example.invalid'"),
])
def test_a_lock_line_that_is_not_an_exact_hashed_pin_exits_2_naming_file_and_line(project, line, reason):
    root, _ = project
    lock_file(root).write_text(f"# a comment\n{line}\n")
    done = run(root, "check")
    assert done.returncode == 2
    assert f"app.txt:2: {reason}" in done.stderr


def test_a_relock_keeps_the_locked_versions_unless_told_to_upgrade(project):
    root, hashes = project
    path = compiled(project)
    pin_beta_1(path, hashes)
    (root / "requirements" / "locks" / "app.in").write_text("alpha\ngamma\n")  # an input change
    assert run(root, "compile").returncode == 0
    pins = locks.parse_lock(path)
    assert {name: pin.version for name, pin in pins.items()} == {"alpha": "1.0", "beta": "1.0", "gamma": "1.0"}
    assert run(root, "compile", "--upgrade").returncode == 0
    assert locks.parse_lock(path)["beta"].version == "2.0"


def test_a_failed_compile_leaves_the_old_lock_as_it_was(project):
    root, _ = project
    path = compiled(project)
    before = path.read_text()
    (root / "requirements" / "locks" / "app.in").write_text("alpha\nbeta>=3\n")  # nothing has it
    done = run(root, "compile")
    assert done.returncode == 1 and "resolution failed" in done.stderr
    assert path.read_text() == before


# The committed locks and Dockerfiles (offline).

IMAGES = ("trainer", "sampler", "controller")


def test_every_committed_base_image_is_pinned_by_digest():
    assert locks.check_base_images(ROOT) == []
    assert len(list((ROOT / "images").glob("*.Dockerfile"))) == len(IMAGES)


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_installs_its_lock_with_hashes_and_without_resolving(image):
    text = (ROOT / "images" / f"{image}.Dockerfile").read_text()
    assert f"pip install --require-hashes --no-deps --no-build-isolation -r requirements/locks/{image}.txt" in text
    assert "pip install --no-deps --no-build-isolation ." in text  # xwin, built by the lock's setuptools
    if image != "controller":
        assert "pip install --require-hashes --no-deps --no-build-isolation -r requirements/locks/data.txt" in text


def test_the_committed_locks_pin_the_cuda_stack_under_the_tested_constraints():
    settings = locks.read_settings(ROOT)
    assert {lock.name for lock in settings.locks} == {*IMAGES, "data"}
    pins = {lock.name: locks.parse_lock(locks.lock_path(ROOT, lock)) for lock in settings.locks}
    trainer, sampler = pins["trainer"], pins["sampler"]
    assert trainer["torch"].version == "2.13.0" and sampler["vllm"].version == "0.32.0"
    assert {"deepspeed", "transformers", "peft", "bitsandbytes", "setuptools", "wheel"} <= trainer.keys()
    assert any(name.startswith("nvidia-") for name in trainer)  # the CUDA build's runtime wheels
    assert sampler["torch"].version == trainer["torch"].version
    assert not {"torch", "transformers", "deepspeed", "vllm"} & pins["controller"].keys()
    assert "aws-cdk-lambda-layer-kubectl-v33" not in pins["data"]
    tested = {}
    for line in (ROOT / "images" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            tested[locks.normalize(name)] = version
    for image, image_pins in pins.items():
        for name, pin in image_pins.items():
            assert pin.version == tested.get(name, pin.version), f"{image}: {name}"
