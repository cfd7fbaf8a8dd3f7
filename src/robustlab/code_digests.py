"""The code that made a result, as digests: they key the fingerprints and the report's version check.

`code_hash(targets, entry_modules)` hashes all the code that a config runs, wherever it lives: the modules of
its `_target_`s and of the fixed entry modules, and every module they import, followed through the import
graph (a `from robustlab.attacks import PGD` counts as `attacks/pgd.py`, not the whole package; a user's
`mynet.py` and what it imports count like robustlab's own modules). Three kinds of module:

- *source*: robustlab's modules, and any module whose file lies outside the standard library and the
  installed packages (a user's model, defense or attack in their own directory). Each is hashed as its
  syntax tree without docstrings, so comments, formatting and documentation do not invalidate results, while
  any change to what the code does does; its imports are followed.
- *installed*: a module from site-packages (torch, torchattacks, ...), keyed by its distribution's version
  (`torch==2.14.1`); its imports are not followed.
- the standard library and built-in modules: not keyed (the Python version is in every record's provenance).

Modules that only present results (figures, TensorBoard, image grids, progress bars, the report) are outside
the key (`PRESENTATION`): changing a figure's title keeps every result. So is the config's schema
(`robustlab.schema`): it says which values a config may hold, not what a run computes with them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import site
import sysconfig
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "robustlab"
PACKAGE_DIR = Path(__file__).resolve().parent
# Code that shows numbers but never changes one: outside every code hash, and not followed.
PRESENTATION = frozenset({"robustlab.evaluation.plots", "robustlab.evaluation.tensorboard",
                          "robustlab.evaluation.logger",
                          "robustlab.evaluation.images", "robustlab.evaluation.progress",
                          "robustlab.evaluation.summary", "robustlab.report", "robustlab.report.answer",
                          "robustlab.report.callback", "robustlab.report.reading", "robustlab.report.rows",
                          "robustlab.report.tables", "robustlab.report.writing", "robustlab.schema"})


# -- which file a module is, and what kind ------------------------------------------------------------------
@functools.cache
def _installed_dirs() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get("purelib"), paths.get("platlib"), *getattr(site, "getsitepackages", lambda: [])(),
            site.getusersitepackages() if site.ENABLE_USER_SITE else None}
    return tuple(Path(d).resolve() for d in dirs if d)


@functools.cache
def _distribution_modules() -> frozenset[str]:
    """The top-level modules that installed distributions provide."""
    return frozenset(metadata.packages_distributions())


@functools.cache
def _stdlib_dirs() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple(Path(d).resolve() for d in {paths.get("stdlib"), paths.get("platstdlib")} if d)


def _is_within(path: Path, directories: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(directory) for directory in directories)


@functools.cache
def _origin(module: str) -> Path | None:
    """The file a module is loaded from (a package's `__init__.py`), or None for built-in, frozen, namespace
    and unknown modules. Only a dotted name's parent packages are imported to find it."""
    parts = module.split(".")
    if parts[0] == PACKAGE:
        base = PACKAGE_DIR.joinpath(*parts[1:])
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.is_file():
                return candidate
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):  # a parent is no package, or the name is no module
        return None
    if spec is None or not spec.origin or not spec.has_location:
        return None
    return Path(spec.origin).resolve()


@functools.cache
def _kind(module: str) -> str | None:
    """"source" (hashed by content, imports followed), "installed" (keyed by its distribution's version), or
    None (the standard library, built-ins, presentation code, and names that are not modules)."""
    if module in PRESENTATION:
        return None
    top = module.split(".")[0]
    if top != module and top != PACKAGE and _kind(top) != "source":
        return _kind(top)  # a part of an installed package is the package (and finding it would import it)
    path = _origin(module)
    if path is None:
        return None
    if top == PACKAGE:
        return "source"
    # Installed: in site-packages, or a distribution's module wherever its directory is on Python's path.
    if _is_within(path, _installed_dirs()) or top in _distribution_modules():
        return "installed"
    if _is_within(path, _stdlib_dirs()) or path.suffix != ".py":
        return None
    return "source"


def _module_file(module: str) -> Path | None:
    """The source file of a module whose content is hashed (see `_kind`), or None."""
    return _origin(module) if _kind(module) == "source" else None


@functools.cache
def _distribution(top_level: str) -> str:
    """`name==version` of the distribution that installs the top-level module (the module's name alone if none
    says so). Most distributions are named as their module; the others (hydra-core for hydra, say) are found by
    their `top_level.txt`, read once per process."""
    try:
        return f"{metadata.distribution(top_level).metadata['Name']}=={metadata.version(top_level)}"
    except metadata.PackageNotFoundError:
        pass
    for name, version in _declared_top_levels().get(top_level, []):
        return f"{name}=={version}"
    return top_level


@functools.cache
def _declared_top_levels() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for distribution in metadata.distributions():
        for line in (distribution.read_text("top_level.txt") or "").split():
            found.setdefault(line, []).append((distribution.metadata["Name"], distribution.version))
    return found


# -- the import graph -------------------------------------------------------------------------------------
def _syntax(path: Path) -> ast.Module:
    """The module's syntax tree, parsed again when its file changes (a long session may edit it)."""
    stat = path.stat()
    return _parsed(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _parsed(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _defining_module(module: str, name: str) -> str:
    """The module that `from <module> import <name>` takes `name` from: a submodule, or what a source
    package's `__init__` re-exports it from, or the module itself."""
    if _kind(f"{module}.{name}") is not None:
        return f"{module}.{name}"
    path = _module_file(module)
    if path is not None and path.name == "__init__.py":
        for node in _syntax(path).body:
            if isinstance(node, ast.ImportFrom) and node.module and any(
                    (alias.asname or alias.name) == name for alias in node.names):
                return _defining_module(_absolute(node, module, path), name)
    return module


def _absolute(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute name of the module an `ImportFrom` in `module` (at `path`) reads from."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return importlib.util.resolve_name("." * node.level + (node.module or ""), package)


def _imports(module: str) -> frozenset[str]:
    """The modules that a source `module` imports (anywhere in its body, function-level imports too)."""
    path = _module_file(module)
    if path is None:
        return frozenset()
    stat = path.stat()
    return _imports_of(module, path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _imports_of(module: str, path: Path, mtime_ns: int, size: int) -> frozenset[str]:
    found: set[str] = set()
    for node in ast.walk(_syntax(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            try:
                base = _absolute(node, module, path)
            except ImportError:  # a relative import beyond the top-level package
                continue
            found.update(_defining_module(base, alias.name) if base else alias.name for alias in node.names
                         if alias.name != "*")
            if any(alias.name == "*" for alias in node.names):
                found.add(base)
    return frozenset(name for name in found if _kind(name) is not None)


def module_closure(modules: Iterable[str]) -> set[str]:
    """`modules` and every module they import, transitively: source modules by name, installed ones by their
    top-level name (their own imports are the distribution's business)."""
    seen: set[str] = set()
    pending = [module for module in modules if _kind(module) is not None]
    while pending:
        module = pending.pop()
        if _kind(module) == "installed":
            module = module.split(".")[0]
        if module in seen:
            continue
        seen.add(module)
        if _kind(module) == "source":
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


def _source_digest(path: Path) -> str:
    stat = path.stat()
    return _digest_of(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _digest_of(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(_without_docstrings(ast.parse(path.read_text())).encode()).hexdigest()


def module_digest(module: str) -> str | None:
    """What keys one module as it is now: a short hash of a source module, `name==version` of an installed
    one's distribution; None for anything else (presentation code, the standard library, no such module)."""
    kind = _kind(module)
    path = _origin(module)
    if kind == "source" and path is not None:
        return _source_digest(path)[:12]
    if kind == "installed":
        return _distribution(module.split(".")[0])
    return None


def code_modules(targets: Iterable[str], entry_modules: Iterable[str]) -> dict[str, str]:
    """Each module that runs `targets` and `entry_modules`, with its digest (`module_digest`)."""
    modules = module_closure([*(target_module(target) for target in targets), *entry_modules])
    return {module: digest for module in sorted(modules) if (digest := module_digest(module)) is not None}


def modules_hash(modules: dict[str, str]) -> str:
    """A short hash of `code_modules`' result."""
    return hashlib.sha256("".join(f"{m}:{d}\n" for m, d in modules.items()).encode()).hexdigest()[:12]


def code_hash(targets: Iterable[str], entry_modules: Iterable[str]) -> str:
    """A short hash of all the code that runs `targets` and `entry_modules`."""
    return modules_hash(code_modules(targets, entry_modules))
