"""The typed schema: every value a user can type for every key of the composed train and evaluate configs is
refused before anything runs (exit 2, one line naming the key, no traceback), whether Hydra's composition
against the schema refuses it (a wrong type) or the checks after it do (a range, a choice, a relation).

The bad values are a table written from the schema: for each leaf, values of the wrong type for its field and
the values its rule names as refused (negative, zero, NaN, infinity, empty, an unknown option). The whole table
runs in process, through what the command runs: Hydra's composition (the config composed once, then each
override applied by Hydra's own override step, as composing with it does: 5 ms instead of 230 ms a value), its
errors through `composition_error`, then `check_config`. A sample of the table, and the rows of issue #48's
table, run as the command itself.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
import re
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
from conftest import CONF, ROOT, compose_config, run_script
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from robustlab import schema
from robustlab.errors import ConfigError
from robustlab.schema import describe, integer, number, rule_of, type_name
from robustlab.validation import check_config, composition_error

# Values of the wrong type for a field, as typed on the command line.
WRONG_TYPE = {"int": ["abc", "1.5"], "float": ["abc", "[1]"], "bool": ["maybe", "[1]"], "str": ["[1]"],
              "list": ["abc"], "dict": ["abc"]}
# The leaves fuzzed: every key of these composed configs but Hydra's own (`hydra.*`, typed by Hydra itself).
CONFIGS = {"train": [], "evaluate": []}


def leaves(node: DictConfig, prefix: str = ""):
    """(full key, the schema of the node holding it) for every leaf under `node`."""
    found = OmegaConf.get_type(node)
    for key in map(str, node.keys()):
        if not prefix and key == "hydra":
            continue
        full = f"{prefix}.{key}" if prefix else key
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not OmegaConf.is_interpolation(node, key):
            yield from leaves(child, full)
        else:
            yield full, found


def refused_values(owner: type | None, key: str) -> list[str]:
    if owner is None or not dataclasses.is_dataclass(owner):
        return []
    if key == "_target_":
        return ["no_such_module.Thing", "''"]
    written = type_name(owner, key).removesuffix(" | None")
    base = written.split("[")[0]
    rule = rule_of(owner, key)
    return WRONG_TYPE.get(base, []) + list(rule.refused if rule else [])


def table() -> list[tuple[str, str, str]]:
    """(config, key, bad value) for every leaf of the train and evaluate configs, each leaf under one config."""
    rows, seen = [], set()
    for config, overrides in CONFIGS.items():
        cfg = compose_config(overrides, Path("/nonexistent"), config_name=config)
        for key, owner in leaves(cfg):
            if key in seen:
                continue
            seen.add(key)
            rows += [(config, key, value) for value in refused_values(owner, key.rpartition(".")[2])]
            if not refused_values(owner, key.rpartition(".")[2]):
                rows.append((config, key, "<no schema>"))
    return rows


TABLE = table()


@functools.cache
def composed(config: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=CONFIGS[config])


def with_override(config: str, override: str, tmp_path: Path) -> DictConfig:
    """The config composed with `override`: a group's option by composing again, a value by Hydra's override step."""
    if "." not in override.split("=")[0] and OmegaConf.select(composed(config), override.split("=")[0]) is None:
        return compose_config([override], tmp_path, config_name=config)  # a group left unchosen (evaluate's dataset)
    cfg = copy.deepcopy(composed(config))
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides([override]), cfg)
    return cfg


def refusal(config: str, key: str, value: str, tmp_path: Path) -> ConfigError | None:
    """What the command does with `key=value`, in process: Hydra composes, then the checks run."""
    try:
        check_config(with_override(config, f"{key}={value}", tmp_path))
    except ConfigError as error:
        return error
    except Exception as error:
        refused = composition_error(error, [f"{key}={value}"])
        if refused is None:
            raise
        return refused
    return None


@pytest.mark.parametrize("config,key", sorted({(config, key) for config, key, _ in TABLE}))
def test_every_leaf_refuses_its_bad_values_naming_it(config, key, tmp_path):
    values = [value for row_config, row_key, value in TABLE if (row_config, row_key) == (config, key)]
    assert "<no schema>" not in values, f"{key} has no schema field: every key robustlab ships needs one"
    for value in values:
        error = refusal(config, key, value, tmp_path)
        assert error is not None, f"{config}: {key}={value} was accepted"
        message = str(error)
        assert "\n" not in message, message
        named = re.match(r"^([\w.\[\]/]+)[=:]", message)
        assert named and (named.group(1) == key or key.startswith(named.group(1) + ".")), \
            f"{key}={value} refused under another key: {message}"


def test_the_table_covers_every_leaf_with_values():
    keys = {key for _, key, _ in TABLE}
    assert len(keys) > 150 and len(TABLE) > 3 * len(keys) // 2, (len(keys), len(TABLE))


# -- the command itself ----------------------------------------------------------------------------------------
ISSUE_ROWS = ["seed=hello", "optimizer.lr=-0.1", "optimizer.lr=nan", "trainer.max_epochs=abc", "trainer.max_epochs=-1",
              "eval.accuracy_draws=0"]
SAMPLE = [f"{key}={value}" for config, key, value in random.Random(48).sample(
    [row for row in TABLE if row[0] == "train"], 3)]


@pytest.mark.parametrize("override", ISSUE_ROWS + SAMPLE)
def test_the_command_refuses_in_one_line_before_anything_runs(override, tmp_path):
    started = time.monotonic()
    result = run_script("train.py", "dataset=synthetic", override, output_root=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    key = override.split("=")[0]
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr[-2000:]
    assert last.startswith("robustlab: invalid configuration: ") and key in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert elapsed < 15, f"{override}: {elapsed:.1f} s"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()  # nothing written


def test_the_corrected_command_runs_where_the_refused_one_was(tmp_path):
    refused = run_script("train.py", "dataset=synthetic", "trainer.max_epochs=0", output_root=tmp_path, timeout=120)
    assert refused.returncode == 2
    corrected = run_script("train.py", "dataset=synthetic", "trainer.max_epochs=1", "eval=quick", "eval.n_samples=16",
                           "eval.audit.enabled=false", "logger=none", output_root=tmp_path)
    assert corrected.returncode == 0, corrected.stderr[-2000:]


def test_a_multirun_is_refused_before_its_first_job(tmp_path):
    result = run_script("train.py", "-m", "dataset=synthetic", "attack.steps=0", "eval.n_samples=16,32",
                        output_root=tmp_path, timeout=120)
    assert result.returncode == 2 and "attack.steps=0" in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "runs").exists()


# -- the schema itself -----------------------------------------------------------------------------------------
def test_every_option_robustlab_ships_names_its_schema():
    unschemed = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        options = {}
        for path in sorted(CONF.rglob("*.yaml")):
            group = path.parent.relative_to(CONF).as_posix()
            if group in (".", "experiment", "sweep") or group.startswith("hydra") or path.stem == "none" and \
                    group == "logger":
                continue
            options[f"{group}={path.stem}"] = compose(config_name="train", overrides=[f"{group}={path.stem}"])[group]
    for option, node in options.items():
        if not dataclasses.is_dataclass(OmegaConf.get_type(node)):
            unschemed.append(option)
    assert not unschemed


def test_the_schemas_choices_are_the_codes():
    from pytorch_lightning.trainer.connectors.accelerator_connector import _PRECISION_INPUT

    from robustlab.attacks.apgd import RANKINGS
    from robustlab.attacks.autoattack import VERSIONS
    from robustlab.attacks.losses import LOSSES
    from robustlab.attacks.norms import NORMS
    from robustlab.defenses.base import SELECTION_METRICS
    from robustlab.defenses.mixed_adversarial_training import STRATEGIES

    assert set(schema.NORMS) == set(NORMS) and set(schema.LOSSES) == set(LOSSES)
    assert set(schema.RANKINGS) == set(RANKINGS) and set(schema.AUTOATTACK_VERSIONS) == set(VERSIONS)
    assert set(schema.STRATEGIES) == set(STRATEGIES) and set(schema.SELECTION_METRICS) == set(SELECTION_METRICS)
    precisions = {str(value) for literal in typing.get_args(_PRECISION_INPUT) for value in typing.get_args(literal)}
    assert set(schema.PRECISIONS) == precisions


def test_rules_accept_their_bounds_and_refuse_past_them():
    steps = integer(1)
    assert steps.accepts(1) and not steps.accepts(0) and not steps.accepts(True) and not steps.accepts(1.0)
    samples = integer(1, also=(-1,))
    assert samples.accepts(-1) and not samples.accepts(-2) and not samples.accepts(0)
    rate = number(above=0)
    assert rate.accepts(1e-9) and not rate.accepts(0) and not rate.accepts(float("nan"))
    assert not rate.accepts(float("inf"))
    fraction = number(above=0, at_most=1)
    assert fraction.accepts(1) and not fraction.accepts(1.0001) and fraction.allowed == "a number in (0, 1]"
    for rule in (steps, samples, rate, fraction):  # the values each rule names for the fuzz table are refused
        parsed = [float(value) for value in rule.refused]
        assert parsed and not any(rule.accepts(int(value) if value.is_integer() else value) for value in parsed)


def test_describe_says_the_rule_and_whether_null_is_allowed():
    assert describe(schema.PGDConfig, "steps") == "an integer ≥ 1"
    assert describe(schema.PGDConfig, "eot_samples").endswith("null: automatic)")
    assert describe(schema.EvaluateConfig, "ckpt_path").endswith(", or null")
    assert describe(schema.PGDConfig, "random_start") == "true or false"


# -- a user's project: an option without a schema, and one with their own ---------------------------------------
def project(tmp_path: Path) -> Path:
    import shutil

    directory = tmp_path / "project"
    shutil.copytree(ROOT / "examples" / "own_code", directory)
    return directory


def robustlab_in(directory: Path, *arguments: str) -> subprocess.CompletedProcess:
    from conftest import script_environment

    environment = {key: value for key, value in script_environment().items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "robustlab", "train", *arguments], cwd=directory, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("override,expected", [
    ("attack.steps=abc", "attack.steps='abc' is not allowed: expected an integer ≥ 1"),   # their schema, composing
    ("model.width=abc", "model.width='abc' is not allowed: expected an integer (mynet.TinyCNN's signature)"),
    ("+model.depth=3", "model.depth: mynet.TinyCNN takes no argument 'depth'"),        # no schema: the signature
])
def test_a_projects_options_are_checked_by_its_schema_or_its_signature(override, expected, tmp_path):
    result = robustlab_in(project(tmp_path), "model=tiny_cnn", "defense=blur", "attack=margin_pgd",
                          "dataset=synthetic", override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]

