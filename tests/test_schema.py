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
import yaml
from conftest import CONF, ROOT, compose_config, refusal, run_script
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from robustlab import schema
from robustlab.errors import ConfigError
from robustlab.schema import describe, integer, number, rule_of, type_name
from robustlab.validation import check_config

# Values of the wrong type for a field, as typed on the command line.
WRONG_TYPE = {"int": ["abc", "1.5"], "float": ["abc", "[1]"], "bool": ["maybe", "[1]"], "str": ["[1]"],
              "list": ["abc"], "dict": ["abc"]}
# The leaves fuzzed: every key of these composed configs but Hydra's own (`hydra.*`, typed by Hydra itself): the
# default train and evaluate configs, and train with each other option of the groups a user chooses among.
GROUPS = ("dataset", "model", "defense", "attack", "eval", "optimizer", "scheduler", "trainer", "callbacks",
          "logger")
CONFIGS = {"train": (), "evaluate": (), **{f"train {group}={path.stem}": (f"{group}={path.stem}",) for group in GROUPS
                                           for path in sorted((CONF / group).glob("*.yaml"))}}


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
        return ["abc"]  # a third-party callable's keyword argument (torchattacks' kwargs): typed by its defaults
    if key == "_target_":
        return ["no_such_module.Thing", "''"]
    written = type_name(owner, key).removesuffix(" | None")
    base = written.split("[")[0]
    rule = rule_of(owner, key)
    return WRONG_TYPE.get(base, []) + list(rule.refused if rule else [])


def table(config: str) -> list[tuple[str, str]]:
    """(key, bad value) for every leaf of `config`; a variant leaves to the default train config the leaves (key and
    schema) it shares with it."""
    known = set() if config in ("train", "evaluate") else set(leaves(composed("train")))
    return [(key, value) for key, owner in leaves(composed(config)) if (key, owner) not in known
            for value in refused_values(owner, key.rpartition(".")[2]) or ["<no schema>"]]


@functools.cache
def composed(config: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config.split()[0], overrides=list(CONFIGS[config]))


def with_override(config: str, override: str, tmp_path: Path) -> DictConfig:
    """The config composed with `override`: a group's option by composing again, a value by Hydra's override step."""
    if "." not in override.split("=")[0] and OmegaConf.select(composed(config), override.split("=")[0]) is None:
        return compose_config([*CONFIGS[config], override], tmp_path, config_name=config.split()[0])  # a group
    cfg = copy.deepcopy(composed(config))
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides([override]), cfg)
    return cfg


def refused(config: str, key: str, value: str, tmp_path: Path) -> ConfigError | None:
    """What the command does with `key=value`, in process: Hydra composes, then the checks run."""
    override = f"{key}={value}"
    return refusal([override], tmp_path, compose=lambda _: with_override(config, override, tmp_path))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_leaf_refuses_its_bad_values_naming_it(config, tmp_path):
    rows = table(config)
    assert not [key for key, value in rows if value == "<no schema>"], "keys without a schema field"
    for key, value in rows:
        error = refused(config, key, value, tmp_path)
        assert error is not None, f"{config}: {key}={value} was accepted"
        message = str(error)
        assert "\n" not in message, message
        named = re.match(r"^([\w.\[\]/]+)[=:]", message)
        assert named and (named.group(1) == key or key.startswith(named.group(1) + ".")), \
            f"{key}={value} refused under another key: {message}"


def test_the_table_covers_every_leaf_with_values():
    rows = [(config, key, value) for config in CONFIGS for key, value in table(config)]
    leaves_tried = {(config, key) for config, key, _ in rows}
    print(f"fuzz table: {len({key for _, key, _ in rows})} distinct keys, {len(leaves_tried)} leaves in "
          f"{len(CONFIGS)} configs, {len(rows)} values")
    assert len(leaves_tried) > 300 and len(rows) > 3 * len(leaves_tried) // 2, (len(leaves_tried), len(rows))


# -- the command itself ----------------------------------------------------------------------------------------
ISSUE_ROWS = ["seed=hello", "optimizer.lr=-0.1", "optimizer.lr=nan", "trainer.max_epochs=abc", "trainer.max_epochs=-1",
              "eval.accuracy_draws=0"]
SAMPLE = [f"{key}={value}" for key, value in random.Random(48).sample(table("train"), 2)]


HYDRAS_OWN = ["+attack.eps=1"]  # Hydra cannot apply it (the key exists): its own message, on one line


@pytest.mark.parametrize("override", ISSUE_ROWS + SAMPLE + HYDRAS_OWN)
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


@pytest.mark.parametrize("override,expected", [
    ("+optimizer.betaz=[0.9,0.99]", "optimizer.betaz: torch.optim.Adam takes no argument 'betaz'"),
    ("+optimizer.betas=abc", "optimizer.betas='abc' is not allowed: expected a list (torch.optim.Adam's signature)"),
    ("+trainer.max_stepz=10", "trainer.max_stepz: pytorch_lightning.Trainer takes no argument 'max_stepz'"),
    ("+trainer.max_steps=abc", "trainer.max_steps='abc' is not allowed: expected an integer (pytorch_lightning"),
    ("+trainer.precision=17", "trainer.precision=17 is not allowed: expected one of 64, 32, 16"),
    ("attack=torchattacks +attack.kwargs.stepz=3", "attack.kwargs.stepz: torchattacks.PGD takes no argument"),
    ("attack=torchattacks attack.name=NoSuch", "attack.name='NoSuch' is not allowed: expected the name of a class"),
])
def test_a_third_party_targets_other_keys_are_checked_against_its_signature(override, expected, tmp_path):
    with pytest.raises(ConfigError) as error:
        check_config(compose_config(["dataset=synthetic", *override.split()], tmp_path))
    assert str(error.value).startswith(expected), str(error.value)


def test_a_bounded_run_may_leave_max_epochs_unset(tmp_path):
    check_config(compose_config(["dataset=synthetic", "trainer.max_epochs=-1", "+trainer.max_steps=20"], tmp_path))
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs=None is not allowed"):
        check_config(compose_config(["dataset=synthetic", "trainer.max_epochs=null"], tmp_path))


def test_a_callback_can_be_dropped_as_before_the_schemas(tmp_path):
    """`~callbacks.model_checkpoint ~callbacks.progress_bar` (scripts/bench.py's quiet runs) composes and passes."""
    cfg = compose_config(["dataset=synthetic", "~callbacks.model_checkpoint", "~callbacks.progress_bar",
                          "+trainer.enable_checkpointing=false"], tmp_path)
    check_config(cfg)
    assert dict(cfg.callbacks) == {}


def test_cfg_job_shows_each_keys_type_and_allowed_values(tmp_path):
    from conftest import script_environment

    def cfg_job(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "train.py"), "--cfg", "job", f"paths.output_root={tmp_path}",
                               *overrides], env=script_environment(), capture_output=True, text=True, timeout=120)

    result = cfg_job("defense=trades", "attack.steps=7")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "  beta: 6.0  # a number ≥ 0\n" in result.stdout and "  steps: 7  # an integer ≥ 1\n" in result.stdout
    assert "reuse: same_code  # one of 'same_code', 'any_version'" in result.stdout
    assert yaml.safe_load(result.stdout)["defense"]["_target_"] == "robustlab.defenses.TRADES"  # still YAML
    assert not (tmp_path / "runs").exists()
    refused = cfg_job("attack.steps=abc")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        "robustlab: invalid configuration: attack.steps='abc' is not allowed"), refused.stderr[-2000:]


def test_cfg_job_with_hydras_other_options_is_hydras():
    from robustlab.cli import job_config_overrides

    assert job_config_overrides(["--cfg", "job", "defense=trades"]) == ["defense=trades"]
    assert job_config_overrides(["--cfg", "job", "--resolve"]) is None
    assert job_config_overrides(["--cfg", "hydra"]) is None and job_config_overrides(["defense=trades"]) is None


# -- the schema itself -----------------------------------------------------------------------------------------
def test_every_option_robustlab_ships_names_its_schema():
    """Each option's defaults list names a schema, or the option it extends (in its group) does."""
    def names_schema(path: Path) -> bool:
        defaults = yaml.safe_load(path.read_text()).get("defaults", [])
        return any(isinstance(entry, str) and (entry.startswith("/schema/") or
                                               (path.parent / f"{entry}.yaml").is_file() and
                                               names_schema(path.parent / f"{entry}.yaml")) for entry in defaults)

    unschemed = [path.relative_to(CONF).as_posix() for path in sorted(CONF.rglob("*.yaml"))
                 if path.parent.name not in ("experiment", "sweep", "hydra", "launcher") and
                 path.relative_to(CONF).as_posix() != "logger/none.yaml" and not names_schema(path)]
    assert not unschemed
    # and the schema is what composing gives each option of the default config
    assert all(dataclasses.is_dataclass(OmegaConf.get_type(composed("train")[group])) for group in GROUPS)


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
])
def test_a_projects_options_are_checked_by_its_schema_or_its_signature(override, expected, tmp_path):
    result = robustlab_in(project(tmp_path), "model=tiny_cnn", "defense=blur", "attack=margin_pgd",
                          "dataset=synthetic", override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]

