"""The `robustlab` command (also `python -m robustlab`; the checkout's train.py and evaluate.py are shims over it).

    robustlab train [hydra options] [overrides]     train under a defense, attack, write metrics.json
    robustlab evaluate [hydra options] [overrides]  attack a checkpoint or a model from elsewhere
    robustlab report DIR                            the attack × defense report from DIR's metrics.json files
    robustlab new DIR                               a project to start from: a model, a defense, an attack

A user's project is a directory: Python files and a `conf/` whose groups (model/, defense/, attack/, dataset/,
eval/, experiment/, sweep/, ...) hold the user's options beside robustlab's own, and optionally a `schemas.py`
whose dataclasses, stored in Hydra's ConfigStore, type those options (robustlab/schema.py). Run from that directory (or
with `--config-dir DIR/conf`), `robustlab train` finds those options and imports the modules beside them. An
option named like one of robustlab's is refused before anything runs: never a silent mix of the two.

This module stays light (no Lightning, no Hydra app until a task runs): `robustlab report` and `--help`
answer at once. The tasks themselves are in `tasks.py`.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from robustlab.configuration import config_dir
from robustlab.errors import ConfigError, exit_on_user_error

TASKS = ("train", "evaluate")
CONFIG_DIR_FLAGS = ("--config-dir", "-cd")
# Files of the starter project that are a run's outputs, not the project.
# A project's own schemas (dataclasses stored in Hydra's ConfigStore), imported before a config is composed.
SCHEMAS = "schemas.py"
NOT_COPIED = ("__pycache__", "*.pyc", "outputs", "multirun", "data", "lightning_logs")


def options(conf: Path) -> dict[str, list[str]]:
    """The options of each config group in the directory `conf` (`model`: [...], `hydra/launcher`: [...]); the
    primary configs (train, evaluate) under the group ''."""
    found: dict[str, list[str]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        group = path.parent.relative_to(conf).as_posix()
        found.setdefault("" if group == "." else group, []).append(path.stem)
    return found


@dataclass
class Project:
    """Where a command runs from: the directory whose modules it imports, and its config directory (None: the
    project has none, and only robustlab's options exist)."""

    directory: Path
    conf: Path | None
    given: bool  # the config directory was given with --config-dir (else found as ./conf)

    @classmethod
    def of(cls, arguments: Sequence[str]) -> Project:
        for index, argument in enumerate(arguments):
            for flag in CONFIG_DIR_FLAGS:
                if argument == flag and index + 1 < len(arguments):
                    conf = Path(arguments[index + 1]).resolve()
                    return cls(conf.parent, conf, True)
                if argument.startswith(flag + "="):
                    conf = Path(argument.partition("=")[2]).resolve()
                    return cls(conf.parent, conf, True)
        directory = Path.cwd().resolve()
        conf = directory / "conf"
        if not conf.is_dir() or conf.resolve() == config_dir().resolve():  # the checkout's own conf/
            return cls(directory, None, False)
        return cls(directory, conf, False)

    def load_schemas(self) -> None:
        """Put the project's directory first on Python's path (`_target_: mynet.TinyCNN` imports its mynet.py) and
        import its schemas.py, if it has one: its dataclasses go into Hydra's ConfigStore for its options."""
        sys.path.insert(0, str(self.directory))
        if (self.directory / SCHEMAS).is_file():
            importlib.import_module(SCHEMAS.removesuffix(".py"))

    def check(self) -> None:
        """Refuse, before anything runs, a YAML that does not parse (its file and line) and an option named like
        one of robustlab's (both files)."""
        if self.conf is None:
            return
        if not self.conf.is_dir():
            raise ConfigError(f"--config-dir {self.conf}: no such directory")
        for path in sorted(self.conf.rglob("*.yaml")):
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
                problem = getattr(error, "problem", None) or str(error).splitlines()[0]
                raise ConfigError(f"{where}: not valid YAML ({problem})") from None
        builtin = options(config_dir())
        for group, names in options(self.conf).items():
            for name in sorted(set(names) & set(builtin.get(group, []))):
                option = f"{group}={name}" if group else f"the primary config {name!r}"
                raise ConfigError(f"{self.conf / group / name}.yaml has the name of robustlab's {option} "
                                  f"({config_dir() / group / name}.yaml): rename yours (e.g. my_{name}.yaml) and "
                                  "choose it by that name; robustlab never mixes a project's option with its own")


def run_task(task: str, arguments: list[str]) -> None:
    """`robustlab train|evaluate ...`: Hydra's app over robustlab's configs plus the project's, with the project's
    directory first on Python's path (`--cfg job`: the config with each key's allowed values, printed here)."""
    project = Project.of(arguments)
    with exit_on_user_error():
        project.check()
    if project.conf is not None and not project.given:
        arguments = [CONFIG_DIR_FLAGS[0], str(project.conf), *arguments]
    project.load_schemas()
    overrides = job_config_overrides(arguments)
    if overrides is not None:
        with exit_on_user_error():
            print(annotated_config(task, overrides, project))
        return
    sys.argv = [sys.argv[0], *arguments]  # what Hydra's app parses
    from robustlab import tasks

    tasks.run_app(task)


def job_config_overrides(arguments: Sequence[str]) -> list[str] | None:
    """The overrides of `--cfg job [overrides]`; None for any other command line, and for --cfg with options that
    only Hydra's own printer has (--package, --resolve, a multirun): Hydra answers those."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--cfg", "-c")
    parser.add_argument(*CONFIG_DIR_FLAGS)
    parser.add_argument("--package", "-p")
    for flags in (("--resolve",), ("--multirun", "-m"), ("--help", "-h"), ("--info", "-i")):
        parser.add_argument(*flags, action="store_true")
    known, rest = parser.parse_known_args(arguments)
    if known.cfg != "job" or known.package or known.resolve or known.multirun or known.help or known.info or \
            any(argument.startswith("-") for argument in rest):
        return None
    return rest


def annotated_config(task: str, overrides: list[str], project: Project) -> str:
    """The config `robustlab <task> <overrides>` runs, as YAML, each key beside its type and allowed values (its
    schema's), composed as Hydra composes it; what Hydra cannot compose is refused as the task refuses it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from robustlab.schema import annotated, register_schemas
    from robustlab.validation import composition_refused

    register_schemas()
    searchpath = [f"hydra.searchpath=[file://{project.conf}]"] if project.conf else []
    GlobalHydra.instance().clear()
    with composition_refused(overrides), initialize_config_dir(config_dir=str(config_dir()), version_base="1.3",
                                                                job_name=task):
        return annotated(compose(config_name=task, overrides=[*overrides, *searchpath]))


def report(arguments: list[str]) -> int:
    """`robustlab report DIR`: write the report of every metrics.json under DIR and print it."""
    from robustlab.report import write_report
    from robustlab.report.reading import VERSIONS

    parser = argparse.ArgumentParser(prog="robustlab report",
                                     description="The attack × defense report from a directory's metrics.json files.")
    parser.add_argument("directory", help="searched recursively for metrics.json, e.g. outputs/sweeps/matrix")
    parser.add_argument("--versions", choices=VERSIONS, default="refuse",
                        help="results evaluated by different versions of the code: refuse (stop, naming them; the "
                             "default), current (report those of the installed code, list the others), or mix")
    parsed = parser.parse_args(arguments)
    with exit_on_user_error():
        paths = write_report(parsed.directory, versions=parsed.versions)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0


def starter_project() -> Path:
    """The project `robustlab new` copies: `robustlab/project_template` in an installed package (the wheel puts
    the repository's examples/own_code there), else the checkout's examples/own_code."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "project_template", package.parents[1] / "examples" / "own_code"):
        if (candidate / "conf").is_dir():
            return candidate
    raise ConfigError("robustlab's starter project is missing from this installation: reinstall robustlab")


def new(arguments: list[str]) -> int:
    """`robustlab new DIR`: a working project to edit (a model, a defense and an attack with their configs)."""
    parser = argparse.ArgumentParser(prog="robustlab new", description=new.__doc__)
    parser.add_argument("directory", help="the project's directory: new, or empty")
    target = Path(parser.parse_args(arguments).directory)
    with exit_on_user_error():
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ConfigError(f"robustlab new {target}: {'not empty' if target.is_dir() else 'a file'}; name a new "
                              "or empty directory (nothing was written)")
        shutil.copytree(starter_project(), target, ignore=shutil.ignore_patterns(*NOT_COPIED), dirs_exist_ok=True)
    print(f"robustlab: a new project in {target}: its model, defense and attack are in mynet.py, mydefense.py, "
          f"myattack.py, their options in conf/. Next:\n  cd {target}\n  "
          "robustlab train model=tiny_cnn defense=blur attack=margin_pgd\n(see README.md)")
    return 0


def usage() -> str:
    """The command's help: its commands, and each config group with robustlab's options and the project's."""
    project = Project.of(sys.argv[1:])
    builtin, own = options(config_dir()), options(project.conf) if project.conf else {}
    lines = ["robustlab: train image classifiers under adversarial defenses, attack them, report every combination.",
             "", __doc__.split("\n\n")[1], "",
             "Hydra's options work after train and evaluate: -m (a multirun), --cfg job (print the config), --info, "
             "--config-dir DIR, --help (that task's groups and config).", "",
             "A value outside what a key allows, or of another type, is refused before anything runs, naming the key "
             "(exit status 2). robustlab train --cfg job [group=option ...] prints the config of those choices with "
             "each key's type and allowed values beside its value (robustlab train --cfg job: the defaults'). The "
             "schemas are robustlab/schema.py; a project's own are in its schemas.py.", "",
             "Config groups (group=option; * marks the default of `robustlab train`):"]
    defaults = _train_defaults()
    for group in sorted(set(builtin) | set(own)):
        if not group or group.startswith("hydra") and group != "hydra/launcher":
            continue
        names = [f"{name}*" if defaults.get(group) == name else name for name in builtin.get(group, [])]
        mine = f"; yours ({project.conf}): {', '.join(own[group])}" if own.get(group) else ""
        lines.append(f"  {group:<16} {', '.join(names)}{mine}")
    return "\n".join(lines)


def _train_defaults() -> dict[str, str]:
    defaults = yaml.safe_load((config_dir() / "train.yaml").read_text()).get("defaults", [])
    return {group: str(option) for entry in defaults if isinstance(entry, dict) for group, option in entry.items()}


def main(arguments: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    command, rest = (arguments[0], arguments[1:]) if arguments else ("--help", [])
    if command in TASKS:
        run_task(command, rest)
        return 0
    if command == "report":
        return report(rest)
    if command == "new":
        return new(rest)
    if command in ("-h", "--help", "help"):
        print(usage())
        return 0
    print(f"robustlab: unknown command {command!r}: expected one of {', '.join((*TASKS, 'report', 'new'))} "
          "(robustlab --help)", file=sys.stderr)
    return 2

