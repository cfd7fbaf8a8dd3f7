"""Which code made a result: source hashes that key the fingerprints, and the provenance every record carries.

`code_hash(targets, entry_modules)` hashes the robustlab source that a config runs: the modules of its
`_target_`s and of the fixed entry modules, with every robustlab module they import, followed through the
import graph (a `from robustlab.attacks import PGD` counts as `attacks/pgd.py`, not the whole package).
Each module is hashed as its syntax tree without docstrings, so comments, formatting and documentation do not
invalidate results, while any change to what the code does does. `provenance(...)` is what metrics.json,
trained.json and checkpoints record: versions, the source revision, the device, the precision and the command.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "robustlab"
PACKAGE_DIR = Path(__file__).resolve().parent


# -- the import graph of robustlab's own modules ----------------------------------------------------------
def _module_file(module: str) -> Path | None:
    """The source file of a robustlab module or package, or None if it is not one."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


@functools.lru_cache(maxsize=None)
def _syntax(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _defining_module(module: str, name: str) -> str:
    """The module that `from <module> import <name>` takes `name` from: a submodule, or what a package's
    `__init__` re-exports it from, or the module itself."""
    if _module_file(f"{module}.{name}") is not None:
        return f"{module}.{name}"
    path = _module_file(module)
    if path is not None and path.name == "__init__.py":
        for node in _syntax(path).body:
            if isinstance(node, ast.ImportFrom) and node.module and any(
                    (alias.asname or alias.name) == name for alias in node.names):
                return _defining_module(node.module, name)
    return module


def _imports(module: str) -> set[str]:
    """The robustlab modules that `module` imports (anywhere in its body, function-level imports too)."""
    found = set()
    for node in ast.walk(_syntax(_module_file(module))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(_defining_module(node.module, alias.name) for alias in node.names)
    return {name for name in found if _module_file(name) is not None}


def module_closure(modules: Iterable[str]) -> set[str]:
    """`modules` and every robustlab module they import, transitively."""
    seen: set[str] = set()
    pending = [module for module in modules if _module_file(module) is not None]
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(_imports(module) - seen)
    return seen


def target_module(target: str) -> str:
    """The module that defines a config's `_target_` (e.g. robustlab.attacks.PGD → robustlab.attacks.pgd)."""
    module, _, name = target.rpartition(".")
    return _defining_module(module, name)


def targets_in(node: Any) -> set[str]:
    """Every `_target_` in a plain config tree."""
    if isinstance(node, dict):
        found = {node["_target_"]} if isinstance(node.get("_target_"), str) else set()
        return found.union(*(targets_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(targets_in(value) for value in node))
    return set()


def _without_docstrings(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


@functools.lru_cache(maxsize=None)
def _module_digest(module: str) -> str:
    return hashlib.sha256(_without_docstrings(ast.parse(_module_file(module).read_text())).encode()).hexdigest()


def module_digest(module: str) -> str | None:
    """A short hash of one robustlab module as it is now (None if there is no such module)."""
    return _module_digest(module)[:12] if _module_file(module) is not None else None


def code_modules(targets: Iterable[str], entry_modules: Iterable[str]) -> dict[str, str]:
    """Each robustlab module that runs `targets` and `entry_modules`, with its digest."""
    modules = module_closure([*(target_module(target) for target in targets), *entry_modules])
    return {module: module_digest(module) for module in sorted(modules)}


def modules_hash(modules: dict[str, str]) -> str:
    """A short hash of `code_modules`' result."""
    return hashlib.sha256("".join(f"{m}:{d}\n" for m, d in modules.items()).encode()).hexdigest()[:12]


def code_hash(targets: Iterable[str], entry_modules: Iterable[str]) -> str:
    """A short hash of the robustlab code that runs `targets` and `entry_modules`."""
    return modules_hash(code_modules(targets, entry_modules))


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


@functools.lru_cache(maxsize=None)
def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
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
