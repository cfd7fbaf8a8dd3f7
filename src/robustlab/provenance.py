"""What produced a result, as every record carries it (metrics.json, trained.json, checkpoints): robustlab's and
the libraries' versions, the source revision, the device, the precision and the command. The digests of the
code itself are `code_digests.py`'s."""

from __future__ import annotations

import functools
import hashlib
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from robustlab.code_digests import PACKAGE, PACKAGE_DIR


# -- provenance --------------------------------------------------------------------------------------------
def source_revision() -> dict:
    """The git commit (and whether the checkout has uncommitted changes) when robustlab runs from a checkout;
    otherwise a hash of the installed package's sources."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(PACKAGE_DIR), *arguments], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        digest = hashlib.sha256()
        for path in sorted(PACKAGE_DIR.rglob("*.py")):
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + path.read_bytes())
        return {"package_sha256": digest.hexdigest()}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: Any) -> str:
    """A GPU's name, or the CPU's model for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


@functools.cache
def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@functools.cache
def _versions() -> dict:
    """What stays the same for a whole process (read once: checkpoints ask every epoch)."""
    return {"robustlab": _version(PACKAGE), **source_revision(), "python": platform.python_version(),
            "torch": _version("torch"), "pytorch_lightning": _version("pytorch-lightning"),
            "hydra": _version("hydra-core")}


def provenance(device: Any = "cpu", precision: Any = None) -> dict:
    """What produced a result: robustlab and library versions, source revision, device, precision, command."""
    return {
        **_versions(),
        "device": device_name(device),
        "precision": str(precision) if precision is not None else None,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
    }


def installed_packages() -> str:
    """`name==version`, one installed distribution a line, sorted (the run directory keeps it)."""
    names = {(dist.metadata["Name"] or "?", dist.version) for dist in metadata.distributions()}
    return "".join(f"{name}=={version}\n" for name, version in sorted(names, key=lambda item: item[0].lower()))
