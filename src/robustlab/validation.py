"""Checks on a whole composed config, run before anything is built, loaded or trained.

The types are Hydra's to check while it composes (`schema.py`); what it cannot compose becomes one line naming
the key (`composition_error`). Every value is then checked here against its schema's rule, and the keys of a
`_target_` no schema covers (a user's class, a third-party one's extra keys) against its signature
(`check_values`). Constructors check their own arguments too (`errors.require`), for the Python API; what is
checked here also spans several nodes or is a rule for configs only (a config that asks for a zero PGD step is a
mistake: it silently reports clean accuracy, even though `PGD(step_size=0)` is a valid no-op in Python).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import hydra.utils
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from torch import nn

from robustlab.configuration import config_dir, to_plain, unimportable
from robustlab.errors import CheckpointError, ConfigError, InvalidValue, is_number
from robustlab.schema import BUDGET, STEP, describe, rule_of


def check_config(cfg: DictConfig, *, here: bool = True) -> None:
    """Everything checked before a run: mandatory values set, every value allowed, budgets and steps; with `here`,
    that the chosen accelerator is on this machine (a SLURM sweep's jobs run on other machines)."""
    check_complete(cfg)
    check_values(cfg)
    check_step_sizes(cfg)
    if here:
        check_accelerator(cfg)


@contextmanager
def composition_refused(overrides: Sequence[str] = ()) -> Iterator[None]:
    """Around a composition of the config: what Hydra cannot compose is raised as `composition_error` words it."""
    try:
        yield
    except Exception as error:
        refused = composition_error(error, overrides)
        if refused is None:
            raise
        raise refused from None


# -- what Hydra could not compose ------------------------------------------------------------------------------
def composition_error(error: BaseException, overrides: Sequence[str] = ()) -> ConfigError | None:
    """Hydra's composition error as one line naming the key (None: not a composition error).

    A value of the wrong type for its schema (`seed=hello`), a key no schema has (`attack.stpes=5`), an option
    that does not exist (`defense=foo`), an override Hydra cannot parse (`seed=[1`, found in `overrides`), or one
    Hydra cannot apply (`+attack.eps=1` where the key exists), in Hydra's words."""
    if isinstance(error, MissingConfigException):
        group, _, option = str(error.missing_cfg_file or "").rpartition("/")
        if error.options and group:
            return InvalidValue(group.replace("/", "."), option, "one of " + ", ".join(error.options))
        return ConfigError(" ".join(str(error).split("Config search path:")[0].split()))
    if isinstance(error, ValueError) and str(error).startswith("Config group override must be a string"):
        groups = {path.name for path in config_dir().iterdir() if path.is_dir()}
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            if key in groups:
                try:
                    parsed = OverridesParser.create().parse_override(override).value()
                except HydraException:
                    continue
                if not isinstance(parsed, str | list):
                    return InvalidValue(key, parsed, f"the name of a {key} option (robustlab --help lists them)")
        return ConfigError(f"{str(error).splitlines()[0]}: a group's option is chosen by name (robustlab --help)")
    if not isinstance(error, HydraException):
        return None
    cause = error.__cause__
    if not isinstance(cause, OmegaConfBaseException) or not getattr(cause, "full_key", None):
        parser = OverridesParser.create()
        for override in overrides:
            try:
                parser.parse_override(override)
            except HydraException as bad:
                return ConfigError(f"{override}: not an override Hydra can read ({str(bad).splitlines()[0]}); "
                                   "quote a value with spaces or brackets, e.g. 'key=[1,2]'")
        if isinstance(error, OverrideParseException):
            return ConfigError(f"an override Hydra cannot read: {str(error).splitlines()[0]}")
        if isinstance(error, ConfigCompositionException):  # Hydra's own words (`+key=` on a key that exists)
            return ConfigError(" ".join(str(error).split()))
        return None
    key, schema = str(cause.full_key), cause.object_type
    where = str(error).split(":")[0][len("In "):] if str(error).startswith("In '") else ""
    source = f" (set in {where})" if where else ""
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        known = [each.name for each in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
        parent = key.rpartition(".")[0] or "the config"
        keys = f" (its keys: {', '.join(known)})" if known else ""
        return ConfigError(f"{key}: {parent} has no key {cause.key!r}{keys}{source}; +{key}=... adds one to a "
                           "class's own arguments")
    if dataclasses.is_dataclass(schema) and isinstance(cause.key, str):
        allowed = describe(schema, cause.key)
    else:
        allowed = str(cause.msg).splitlines()[0].replace("could not be converted to", "is not").strip()
    return InvalidValue(key, cause.value, allowed + source)


# -- every value against its rule, every `_target_` against its signature --------------------------------------
def check_values(cfg: DictConfig) -> None:
    """The first value its schema's rule or its `_target_`'s signature refuses, raised naming its full key."""
    for problem in _problems(cfg, ""):
        raise problem


def _problems(node: DictConfig, prefix: str) -> Iterator[ConfigError]:
    found = OmegaConf.get_type(node)
    schema: type = found if isinstance(found, type) and dataclasses.is_dataclass(found) else object
    fields = {each.name for each in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else set()
    target = None
    if "_target_" in node and not OmegaConf.is_interpolation(node, "_target_"):
        target = node._target_
        target_problem = _target_problem(target, prefix)
        if target_problem is not None:
            yield target_problem
            return
    extra: dict[str, Any] = {}
    for key in map(str, node.keys()):
        if (not prefix and key == "hydra") or OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        value: Any = node._get_node(key)
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, DictConfig):
            yield from _problems(value, full)
            if key not in fields:
                extra[key] = value
            continue
        if isinstance(value, ListConfig):
            if any(OmegaConf.is_interpolation(value, index) for index in range(len(value))):
                continue
            plain: Any = OmegaConf.to_container(value)
        else:
            plain = value._value()
        if key in fields:
            rule = rule_of(schema, key)
            if rule is not None and plain is not None and not rule.accepts(plain):
                yield InvalidValue(key, plain, describe(schema, key), prefix)
        elif not key.startswith("_"):
            extra[key] = plain
    relations = getattr(schema, "relations", None)
    if relations is not None:
        for key, value, allowed in relations(node):
            yield InvalidValue(key, value, allowed, prefix)
    arguments_of = getattr(schema, "arguments_of", None)  # a mapping of keyword arguments for another callable
    if arguments_of is not None:
        for key, callee, naming in arguments_of(node):
            arguments = node.get(key)
            if _target_problem(callee, prefix) is not None:
                module = callee.rpartition(".")[0]
                yield InvalidValue(naming, node.get(naming), f"the name of a class in {module} ({callee} is not one)",
                                   prefix)
            elif isinstance(arguments, DictConfig):
                plain_arguments = {str(name): value for name, value in arguments.items_ex(resolve=False)
                                   if not OmegaConf.is_interpolation(arguments, str(name))}
                yield from _signature_problems(callee, plain_arguments, f"{prefix}.{key}" if prefix else key)
    if target is not None and extra:
        yield from _signature_problems(target, extra, prefix)


def _target_problem(target: Any, prefix: str) -> ConfigError | None:
    if not isinstance(target, str) or not target.strip():
        return InvalidValue("_target_", target, "a class or function to build, as module.Name", prefix)
    try:
        hydra.utils.get_object(target)
    except Exception as error:  # noqa: BLE001 - whatever importing the user's module raised, said in one line
        return unimportable(prefix, target, str(error.__cause__ or error))
    return None


def _signature_problems(target: str, values: dict[str, Any], prefix: str) -> Iterator[ConfigError]:
    """Keys that `target` does not take, and values its annotations refuse (where they say)."""
    built = hydra.utils.get_object(target)
    try:
        parameters = inspect.signature(built).parameters
    except (TypeError, ValueError):
        return  # no signature to read (a builtin): its constructor decides
    try:
        hints = typing.get_type_hints(built.__init__ if inspect.isclass(built) else built)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate: keys are still checked
        hints = {}
    open_ended = any(each.kind is inspect.Parameter.VAR_KEYWORD for each in parameters.values())
    for key, value in values.items():
        if key not in parameters:
            if not open_ended:
                named = [name for name, each in parameters.items() if each.kind not in (
                    inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
                yield ConfigError(f"{prefix}.{key}: {target} takes no argument {key!r} (its arguments: "
                                  f"{', '.join(named)})")
            continue
        hint = hints.get(key, _default_type(parameters[key]))
        if not isinstance(value, DictConfig) and _matches(value, hint) is False:
            yield InvalidValue(key, value, f"{_words(hint)} ({target}'s signature)", prefix)


def _default_type(parameter: inspect.Parameter) -> Any:
    """An unannotated parameter's type, read from its default (`steps=10`: an int; `alpha=2/255`: a number)."""
    default = parameter.default
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return Any


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether `value` is of type `hint` (None: the hint says nothing a config value could be checked against)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        answers = [_matches(value, each) for each in typing.get_args(hint)]
        return True if True in answers else None if None in answers else False
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, dict)
    if inspect.isclass(hint) and value is not None and not isinstance(value, (int, float, str, bool, list)):
        return None
    return False if inspect.isclass(hint) and hint.__module__ == "builtins" else None


def _words(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_words(each) for each in typing.get_args(hint)))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or hint is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one is refused, not silently run on the CPU."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator!r} but PyTorch sees no CUDA GPU on this machine: use "
                          "trainer=default to run on the CPU, or add trainer.accelerator=cpu to keep the rest of "
                          "this trainer config (e.g. trainer=ddp trainer.accelerator=cpu trainer.devices=2)")


def check_complete(cfg: DictConfig) -> None:
    """Every mandatory value (`???`) is set; checked without resolving anything else."""
    missing = list(_missing_keys(cfg, ""))
    if missing:
        raise ConfigError(f"missing mandatory value(s): {', '.join(missing)} (set each on the command line, "
                          f"e.g. {missing[0]}=...)")


def _missing_keys(node: DictConfig, prefix: str):
    for key in map(str, node.keys()):
        full_key = f"{prefix}.{key}" if prefix else key
        if not prefix and key == "hydra":
            continue
        child = node._get_node(key)
        if OmegaConf.is_missing(node, key):
            yield full_key
        elif not OmegaConf.is_interpolation(node, key) and isinstance(child, DictConfig):
            yield from _missing_keys(child, full_key)


def check_step_sizes(cfg: DictConfig) -> None:
    """Budgets and step sizes as written in the config, before anything resolves them: every `eps` a number
    ≥ 0 (or null: an unbounded attack), every `step_size` > 0 (or null). Values derived by interpolation
    (fgsm's step `${.eps}`, an attack's `${dataset.eps.linf}`) are checked at their source."""
    _check_budgets(cfg, "")


def _check_budgets(node: DictConfig | ListConfig, prefix: str) -> None:
    if isinstance(node, ListConfig):
        for index, item in enumerate(node):
            if isinstance(item, (DictConfig, ListConfig)):
                _check_budgets(item, f"{prefix}.{index}")
        return
    for key in map(str, node.keys()):
        if (not prefix and key in {"hydra", "paths"}) or OmegaConf.is_interpolation(node, key):
            continue  # Hydra's settings and file locations; a derived value, checked at its source
        value = node[key]
        if key == "eps":
            budgets = list(value.values()) if isinstance(value, DictConfig) else [value]  # a dataset's: per norm
            if not all(budget is None or (is_number(budget) and budget >= 0) for budget in budgets):
                raise InvalidValue("eps", value, BUDGET, prefix)
        if key == "step_size" and isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 \
                and not (value == 0 and _zero_budget(node)):
            raise InvalidValue("step_size", value, STEP, prefix)
        if isinstance(value, (DictConfig, ListConfig)):
            _check_budgets(value, f"{prefix}.{key}" if prefix else key)


def _zero_budget(node: DictConfig) -> bool:
    """ε = 0 means no attack, where any step is exact. A budget that interpolates from a dataset not chosen yet
    (`python evaluate.py ckpt_path=...`: the checkpoint's) is not known to be 0."""
    try:
        return node.get("eps") == 0
    except OmegaConfBaseException:
        return False


def check_model_fits_dataset(model: nn.Module, cfg: DictConfig, key: str = "model") -> None:
    """One forward pass of a dataset-shaped batch: a channel or class mismatch fails here, not mid-training.

    `key` is the config node that built `model` (`defense` for what a defense deploys); the message starts with it.
    """
    subject = "the model" if key == "model" else "what the defense deploys"
    dataset = cfg.dataset
    shape = (2, dataset.channels, dataset.image_size, dataset.image_size)
    description = (f"dataset {dataset.name} ({dataset.channels}×{dataset.image_size}×{dataset.image_size}, "
                   f"{dataset.num_classes} classes)")
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(shape))
    except RuntimeError as error:
        raise ConfigError(f"{key}: {subject} does not accept images of {description}: model.in_channels="
                          f"{OmegaConf.select(cfg, 'model.in_channels')}, dataset.channels={dataset.channels} "
                          f"({str(error).splitlines()[0]})") from None
    finally:
        model.train(was_training)
    if logits.shape != (2, dataset.num_classes):
        raise ConfigError(f"{key}: {subject} predicts {logits.shape[-1]} classes but {description}: model.num_classes="
                          f"{OmegaConf.select(cfg, 'model.num_classes')}, dataset.num_classes={dataset.num_classes}")


def check_checkpoint_matches(stored: dict, cfg) -> None:
    """Refuse to evaluate a checkpoint on another dataset or as another model than it was trained as.

    `cfg.dataset` / `cfg.model`, when the user chose them, must describe what the checkpoint holds.
    """
    for group, identity in (("dataset", ("name", "channels", "image_size", "num_classes")),
                            ("model", None)):
        chosen = cfg.get(group)
        if chosen is None:
            continue
        expected = to_plain(chosen)
        trained = stored[group]
        keys = identity or [key for key in expected if key not in ("mean", "std")]
        differences = [f"{group}.{key}={expected.get(key)!r} but the checkpoint has {trained.get(key)!r}"
                       for key in keys if expected.get(key) != trained.get(key)]
        if differences:
            trained_as = stored.get("choices", {}).get(group, trained.get("name", trained.get("_target_")))
            raise CheckpointError(f"the checkpoint was trained with {group} {trained_as}, not the one chosen: "
                                  + "; ".join(differences))
