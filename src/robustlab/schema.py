"""The typed schema of every config group: what type each key holds, and which values it allows.

Each option of robustlab's groups names its schema first in its defaults list (`/schema/attack/pgd@_here_`), so
Hydra refuses a value of the wrong type while it composes the config, naming the key (`attack.steps=abc`).
What a type cannot say (a range, a choice, a relation between keys) is each field's `Rule`, checked with the
relations by `validation.check_values` before anything runs. The schemas are registered in Hydra's ConfigStore
by `register_schemas` (called with the resolvers by every entry point); `describe` gives a field's type and
rule in words for the error messages and `robustlab --help`.

A user's own option (their model, attack, defense) needs no schema: its keys are checked against its
`_target_`'s signature instead. Where they write one (a dataclass of theirs stored in the ConfigStore and named
in their option's defaults, as here), it is used. A key a schema does not name is refused, as Hydra refuses
an unknown key today; `+group.key=value` still adds one (checked against the `_target_`'s signature).

Choices are written here as literals, not imported: this module stays light (no torch), so `robustlab --help`
answers at once; a test holds them equal to the code's registries (losses, norms, strategies, ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

NORMS = ("linf", "l2", "l1", "l0")
DENSE_NORMS = ("linf", "l2")  # the norms of the attacks built for dense balls (A3, ARC, torchattacks, TRADES)
NORMS_TO_L1 = ("linf", "l2", "l1")  # APGD, FAB, Square, AutoAttack
LOSSES = ("ce", "dlr")
RANKINGS = ("logits", "boundary")
AUTOATTACK_VERSIONS = ("auto", "standard", "rand")
STRATEGIES = ("max", "avg", "random", "alternate")
SELECTION_METRICS = ("val/acc", "val/robust_acc")
REUSE = ("same_code", "any_version")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = ("64", "32", "16", "bf16", "transformer-engine", "64-true", "32-true", "16-true", "bf16-true",
              "16-mixed", "bf16-mixed", "transformer-engine-float16")


@dataclass(frozen=True)
class Rule:
    """What a key allows beyond its type: `accepts(value)`, said as `allowed`, and values it refuses (as typed on
    the command line) for the tests that fuzz the config."""

    allowed: str
    accepts: Callable[[Any], bool]
    refused: tuple[str, ...] = ()


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(at_least: int, at_most: int | None = None, *, also: tuple[int, ...] = (), note: str = "") -> Rule:
    """An integer in [at_least, at_most] (or one of `also`, e.g. -1 for "all")."""
    allowed = f"an integer ≥ {at_least}" if at_most is None else f"an integer in [{at_least}, {at_most}]"
    allowed += "".join(f", or {value}" for value in also) + (f" ({note})" if note else "")
    refused = tuple(str(value) for value in (at_least - 1, at_least - 10) if value not in also)
    refused += (str(at_most + 1),) if at_most is not None else ()
    return Rule(allowed, lambda value: _is_integer(value) and (
        value in also or (value >= at_least and (at_most is None or value <= at_most))), refused)


def number(*, above: float | None = None, at_least: float | None = None, below: float | None = None,
           at_most: float | None = None, note: str = "") -> Rule:
    """A finite number within the bounds given (`above`/`below` exclusive, `at_least`/`at_most` inclusive)."""
    low = f"({above}" if above is not None else f"[{at_least}" if at_least is not None else None
    high = f"{below})" if below is not None else f"{at_most}]" if at_most is not None else None
    if low and high:
        allowed = f"a number in {low}, {high}"
    elif low:
        allowed = f"a number {'>' if above is not None else '≥'} {low[1:]}"
    elif high:
        allowed = f"a number {'<' if below is not None else '≤'} {high[:-1]}"
    else:
        allowed = "a finite number"
    refused = ["nan", "inf", "-inf"]
    for bound, step in ((above, 0.0), (at_least, -0.5), (below, 0.0), (at_most, 0.5)):
        if bound is not None:
            refused.append(repr(float(bound) + step))

    def accepts(value: Any) -> bool:
        return _is_number(value) and (above is None or value > above) and (at_least is None or value >= at_least) \
            and (below is None or value < below) and (at_most is None or value <= at_most)

    return Rule(allowed + (f" ({note})" if note else ""), accepts, tuple(dict.fromkeys(refused)))


def choice(*options: str) -> Rule:
    return Rule(f"one of {', '.join(map(repr, options))}", lambda value: value in options, ("no_such_option",))


def text(note: str = "") -> Rule:
    """A non-empty string."""
    return Rule("a non-empty string" + (f" ({note})" if note else ""),
                lambda value: isinstance(value, str) and value.strip() != "", ("''",))


def numbers(item: Rule, *, at_least: int = 1) -> Rule:
    """A list of at least `at_least` values, each allowed by `item`."""
    return Rule(f"a list of {'at least ' + str(at_least) if at_least > 1 else 'one or more'} values, each "
                f"{item.allowed}",
                lambda value: isinstance(value, list | tuple) and len(value) >= at_least and all(
                    item.accepts(each) for each in value),
                ("[]", *(f"[{bad}]" for bad in item.refused[:2])))


def strings(options: tuple[str, ...] | None = None) -> Rule:
    """A list of strings (each one of `options`, where given)."""
    allowed = "a list of names" + (f" among {', '.join(options)}" if options else "")
    return Rule(allowed, lambda value: isinstance(value, list | tuple) and all(
        isinstance(each, str) and (options is None or each in options) for each in value),
        ("[no_such_name]",) if options else ("[[1]]",))


def subconfig(what: str, *, optional: bool = False) -> Rule:
    """A config node (a mapping, built by its `_target_`); with `optional`, null too. A plain value is refused."""
    return Rule(what + (", or null" if optional else ""), lambda value: optional and value is None, ("abc", "1"))


def setting(rule: Rule | None = None, default: Any = MISSING) -> Any:
    """A schema field: its default (MISSING: each option sets it) and its rule."""
    return field(default=default, metadata={"rule": rule} if rule else {})


def nested(schema: type) -> Any:
    return field(default_factory=schema)


def rule_of(schema: type, key: str) -> Rule | None:
    for each in dataclasses.fields(schema):
        if each.name == key:
            return each.metadata.get("rule")
    return None


def type_name(schema: type, key: str) -> str:
    """A field's type as written in its schema (`int`, `float | None`, `list[float]`)."""
    for each in dataclasses.fields(schema):
        if each.name == key:
            return each.type if isinstance(each.type, str) else getattr(each.type, "__name__", str(each.type))
    return "Any"


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "list[float]": "a list of numbers", "list[str]": "a list of names", "list[int]": "a list of integers"}


def describe(schema: type, key: str) -> str:
    """What `schema`'s `key` allows, in words: its rule where it has one, else its type; and whether null is."""
    written = type_name(schema, key)
    optional = written.endswith(" | None")
    base = written.removesuffix(" | None")
    rule = rule_of(schema, key)
    words = rule.allowed if rule else _TYPE_WORDS.get(base, f"a value of type {base}")
    return words + (", or null" if optional and "null" not in words else "")


Relations = Iterator[tuple[str, Any, str]]  # (key under the node, its value, what is allowed)


# -- the primary configs ----------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """`python train.py`: the groups (each with its own schema), the seed and the reuse policy."""

    seed: int = setting(integer(0, 2**32 - 1))
    reuse: str = setting(choice(*REUSE))
    dataset: Any = MISSING
    model: Any = MISSING
    defense: Any = MISSING
    attack: Any = MISSING
    eval: Any = MISSING
    optimizer: Any = MISSING
    performance: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    callbacks: Any = MISSING
    paths: Any = MISSING


@dataclass
class EvaluateConfig:
    """`python evaluate.py`: exactly one of a checkpoint, a state_dict or a TorchScript file."""

    dataset: Any = setting(subconfig("a dataset option (dataset=NAME)", optional=True), None)
    model: Any = setting(subconfig("a model option (model=NAME)", optional=True), None)
    attack: Any = MISSING
    eval: Any = MISSING
    performance: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    callbacks: Any = MISSING
    paths: Any = MISSING
    ckpt_path: str | None = setting(text("a checkpoint's path"))
    weights: str | None = setting(text("a state_dict's path"))
    torchscript: str | None = setting(text("a TorchScript file's path"))
    seed: int = setting(integer(0, 2**32 - 1))


# -- dataset ---------------------------------------------------------------------------------------------------
@dataclass
class BudgetsConfig:
    linf: float = setting(number(at_least=0, at_most=1, note="pixel units"))
    l2: float = setting(number(at_least=0, note="pixel units"))
    l1: float | None = setting(Rule("a number ≥ 0 (pixel units), or null: no L1 threat model for this dataset",
                                    lambda value: value is None or _is_number(value) and value >= 0,
                                    ("-0.5", "nan", "inf")), default=None)
    l0: int | None = setting(Rule("an integer ≥ 0 (pixels changed), or null: no L0 threat model for this dataset",
                                  lambda value: value is None or _is_integer(value) and value >= 0, ("-1", "0.5")),
                             default=None)


@dataclass
class DataModuleConfig:
    _target_: str = MISSING
    batch_size: int = setting(integer(1))
    eval_batch_size: int = setting(integer(1))
    val_size: int = setting(integer(1, note="held out of the training split"))
    split_seed: int = setting(integer(0, 2**32 - 1))
    resident_on_device: bool = MISSING


@dataclass
class FileDataModuleConfig(DataModuleConfig):
    root: str = setting(text("where the dataset's files are, or are downloaded to"))
    download: bool = MISSING


@dataclass
class IdxDataModuleConfig(FileDataModuleConfig):
    system_dir: str | None = setting(text("a directory holding the IDX files"))


@dataclass
class SyntheticDataModuleConfig(DataModuleConfig):
    num_train: int = setting(integer(2))
    num_test: int = setting(integer(1))
    channels: int = setting(integer(1))
    image_size: int = setting(integer(1))
    num_classes: int = setting(integer(2))
    noise: float = setting(number(at_least=0))
    seed: int = setting(integer(0, 2**32 - 1))

    @staticmethod
    def relations(node: Any) -> Relations:
        if _is_integer(node.get("val_size")) and _is_integer(node.get("num_train")) and \
                node.val_size >= node.num_train:
            yield "val_size", node.val_size, f"an integer < num_train ({node.num_train}): the training split is " \
                                             "what remains"


@dataclass
class DatasetConfig:
    name: str = setting(text())
    channels: int = setting(integer(1))
    image_size: int = setting(integer(1))
    num_classes: int = setting(integer(2))
    mean: list[float] = setting(numbers(number()))
    std: list[float] = setting(numbers(number(above=0)))
    eps: BudgetsConfig = nested(BudgetsConfig)
    datamodule: Any = setting(subconfig("a datamodule config (_target_: ...)"))

    @staticmethod
    def relations(node: Any) -> Relations:
        for key in ("mean", "std"):
            values = node.get(key)
            if isinstance(values, list | tuple) or hasattr(values, "__len__") and not isinstance(values, str):
                if _is_integer(node.get("channels")) and len(values) not in (1, node.channels):
                    yield key, list(values), f"one value per channel ({node.channels}), or one for all"


@dataclass
class FileDatasetConfig(DatasetConfig):
    images: int = setting(integer(1, note="train + test, held in memory"))
    class_names: list[Any] = setting(Rule("a list of names, one per class", lambda value: len(value) >= 2, ("[]",)))

    @staticmethod
    def relations(node: Any) -> Relations:
        yield from DatasetConfig.relations(node)
        names, classes = node.get("class_names"), node.get("num_classes")
        if _is_integer(classes) and names is not None and len(names) != classes:
            yield "class_names", list(names), f"one name per class ({classes})"


# -- model -----------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    _target_: str = MISSING
    in_channels: int = setting(integer(1))
    image_size: int = setting(integer(1))
    num_classes: int = setting(integer(2))
    mean: list[float] = setting(numbers(number()))
    std: list[float] = setting(numbers(number(above=0)))


@dataclass
class PreActResNetConfig(ModelConfig):
    width: int = setting(integer(1))


@dataclass
class SmallCNNConfig(ModelConfig):
    dropout: float = setting(number(at_least=0, below=1))


@dataclass
class WideResNetConfig(ModelConfig):
    depth: int = setting(Rule("an integer 6n + 4 ≥ 10 (10, 16, 22, 28, ...)",
                              lambda value: _is_integer(value) and value >= 10 and (value - 4) % 6 == 0,
                              ("9", "15", "-2")))
    widen_factor: int = setting(integer(1))
    dropout: float = setting(number(at_least=0, below=1))


# -- attack ----------------------------------------------------------------------------------------------------
BUDGET = "a number ≥ 0, or null for an unbounded attack"
STEP = "a number > 0, or null for 2.5·eps/steps"


def _budget() -> Rule:
    return Rule(BUDGET, lambda value: value is None or _is_number(value) and value >= 0, ("-0.1", "nan", "inf"))


EOT = integer(1, note="gradient draws per step; null: automatic")


@dataclass
class AttackConfig:
    _target_: str = MISSING
    norm: str = setting(choice(*NORMS))
    eps: float | None = setting(_budget())
    eot_samples: int | None = setting(EOT)

    @staticmethod
    def relations(node: Any) -> Relations:
        if "eps" not in node or OmegaConf.is_interpolation(node, "eps"):  # `${dataset.eps.l0}`: typed at its source
            return
        eps = node.get("eps")
        if node.get("norm") == "l0" and _is_number(eps) and float(eps) != int(eps):
            yield "eps", eps, "a whole number of pixels ≥ 0 under norm l0"


@dataclass
class NoAttackConfig:
    _target_: str = MISSING


@dataclass
class PGDConfig(AttackConfig):
    steps: int = setting(integer(1))
    step_size: float | None = setting(Rule(STEP, lambda value: value is None or _is_number(value) and value > 0,
                                           ("0", "-0.01", "nan")))
    random_start: bool = MISSING
    restarts: int = setting(integer(1))
    l1_share: float = setting(number(above=0, at_most=1, note="the share of features an L1 step moves"),
                              default=0.01)


@dataclass
class APGDConfig(AttackConfig):
    norm: str = setting(choice(*NORMS_TO_L1))
    loss: str = setting(choice(*LOSSES))
    steps: int = setting(integer(1))
    restarts: int = setting(integer(1))
    large_reps: bool = False

    @staticmethod
    def relations(node: Any) -> Relations:
        if node.get("large_reps") is True and node.get("norm") != "l1":
            yield "large_reps", True, "false unless norm is l1 (the budgets 3ε, 2ε, ε are AutoAttack-L1's)"


@dataclass
class APGDTConfig(APGDConfig):
    targets: int = setting(integer(1))
    ranking: str = setting(choice(*RANKINGS))


@dataclass
class SquareConfig(AttackConfig):
    norm: str = setting(choice(*NORMS_TO_L1))
    queries: int = setting(integer(1))
    p_init: float = setting(number(above=0, at_most=1))


@dataclass
class SparseRSConfig(AttackConfig):
    norm: str = setting(choice("l0"))
    queries: int = setting(integer(1))
    alpha_init: float = setting(number(above=0, at_most=1))


@dataclass
class MSDConfig:
    _target_: str = MISSING
    budgets: dict[str, float] = field(default_factory=dict)
    steps: int = setting(integer(1))
    l1_share: float = setting(number(above=0, at_most=1, note="the share of features an L1 step moves"))
    eot_samples: int | None = setting(EOT)

    @staticmethod
    def relations(node: Any) -> Relations:
        budgets = node.get("budgets") or {}
        for norm in map(str, budgets.keys()):  # an interpolated budget (`${dataset.eps.l1}`) is typed at its source
            if norm not in NORMS_TO_L1:
                yield "budgets", norm, f"budgets keyed by {', '.join(NORMS_TO_L1)}"
            elif not OmegaConf.is_interpolation(budgets, norm):
                eps, most = budgets[norm], 1 if norm == "linf" else math.inf
                if not (_is_number(eps) and 0 <= eps <= most):
                    yield f"budgets.{norm}", eps, "a number ≥ 0" + (" and ≤ 1" if norm == "linf" else "") + \
                        " (pixel units)"
        if not budgets:
            yield "budgets", {}, "at least one ball, e.g. {linf: ${dataset.eps.linf}}"


@dataclass
class FABConfig(AttackConfig):
    norm: str = setting(choice(*NORMS_TO_L1))
    steps: int = setting(integer(1))
    targets: int = setting(integer(1))
    restarts: int = setting(integer(1))


@dataclass
class A3Config(AttackConfig):
    norm: str = setting(choice(*DENSE_NORMS))
    rounds: int = setting(integer(0))
    steps: int = setting(integer(1))
    init_steps: int = setting(integer(0))
    keep: float = setting(number(above=0, at_most=1))
    targets: int = setting(integer(0))
    target_steps: int = setting(integer(1))

    @staticmethod
    def relations(node: Any) -> Relations:
        if node.get("rounds") == 0 and node.get("targets") == 0:
            yield "rounds", 0, "an integer ≥ 1 while targets is 0: with rounds = 0 and targets = 0 A3 would spend " \
                               "no iteration"


@dataclass
class ARCConfig(AttackConfig):
    norm: str = setting(choice(*DENSE_NORMS))
    steps: int = setting(integer(1))
    step_size: float | None = setting(Rule("a number > 0, or null for ε/4", lambda value: value is None or _is_number(
        value) and value > 0, ("0", "-0.01", "nan")))
    random_start: bool = MISSING


@dataclass
class AutoAttackConfig(AttackConfig):
    norm: str = setting(choice(*NORMS_TO_L1))
    version: str = setting(choice(*AUTOATTACK_VERSIONS))
    steps: int = setting(integer(1))
    square_queries: int = setting(integer(1))


@dataclass
class TorchAttacksConfig:
    _target_: str = MISSING
    name: str = setting(text("a torchattacks class, e.g. PGD, CW"))
    eps: float | None = setting(_budget())
    norm: str = setting(choice(*DENSE_NORMS))
    kwargs: dict[str, Any] | None = MISSING

    @staticmethod
    def arguments_of(node: Any) -> Iterator[tuple[str, str, str]]:
        """(key, callable, the key naming it): `kwargs` are keyword arguments of the torchattacks class `name`."""
        if isinstance(node.get("name"), str):
            yield "kwargs", f"torchattacks.{node.name}", "name"


@dataclass
class WorstCaseConfig:
    _target_: str = MISSING
    attacks: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def relations(node: Any) -> Relations:
        if not node.get("attacks"):
            yield "attacks", {}, "at least one attack config (e.g. +attack@attack.attacks.pgd=pgd_linf)"


TRAINING_ATTACK = subconfig("an attack option (attack@defense.attack=NAME)", optional=True)


# -- defense ---------------------------------------------------------------------------------------------------
@dataclass
class DefenseConfig:
    _target_: str = MISSING
    selection_metric: str = setting(choice(*SELECTION_METRICS))


@dataclass
class AdversarialTrainingConfig(DefenseConfig):
    attack: Any = setting(TRAINING_ATTACK)
    wrapper: Any = setting(subconfig("a wrapper config (_target_: ..., _partial_: true)", optional=True))


@dataclass
class TRADESConfig(DefenseConfig):
    eps: float = setting(_budget())
    norm: str = setting(choice(*DENSE_NORMS))
    beta: float = setting(number(at_least=0))
    steps: int = setting(integer(1))
    step_size: float | None = setting(Rule(STEP, lambda value: value is None or _is_number(value) and value > 0,
                                           ("0", "-0.01", "nan")))


@dataclass
class MixedAdversarialTrainingConfig(DefenseConfig):
    attacks: dict[str, Any] = field(default_factory=dict)
    strategy: str = setting(choice(*STRATEGIES))


@dataclass
class DenoiserDefenseConfig(DefenseConfig):
    attack: Any = setting(subconfig("an attack option (attack@defense.attack=NAME)"))
    denoiser: Any = setting(subconfig("a denoiser model config (e.g. robustlab.models.DnCNN)"))
    classifier_epochs: int | None = setting(integer(1))
    denoiser_epochs: int | None = setting(integer(1))
    classifier_checkpoint: str | None = setting(text("a checkpoint's path"))


@dataclass
class RandomMixtureConfig(DefenseConfig):
    attack: Any = setting(subconfig("an attack option (attack@defense.attack=NAME)"))
    member: Any = setting(subconfig("a model config (the default: ${model})"))
    weights: list[float] = setting(numbers(number(above=0)))
    epochs_per_member: int | None = setting(integer(1))


@dataclass
class NoisyModelConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    sigma: float = setting(number(at_least=0, note="pixel units"))
    layers: list[str] = setting(strings())


@dataclass
class SmoothedClassifierConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    sigma: float = setting(number(above=0, note="pixel units"))
    votes: int = setting(integer(1))
    alpha: float = setting(number(above=0, below=1))
    chunk_size: int = setting(integer(1))


@dataclass
class BitDepthReductionConfig:
    _target_: str = MISSING
    bits: int = setting(integer(1, 16))


@dataclass
class PreprocessedConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    preprocess: Any = setting(subconfig("a preprocessing config (_target_: ...)"))


@dataclass
class DnCNNConfig:
    _target_: str = MISSING
    channels: int = setting(integer(1))
    depth: int = setting(integer(3))
    features: int = setting(integer(1))


# -- eval ------------------------------------------------------------------------------------------------------
@dataclass
class EscalationConfig:
    enabled: bool = MISSING
    steps_factor: int = setting(integer(1))
    restarts: int = setting(integer(1))
    eot_samples: int = setting(integer(1))
    square_queries_factor: int = setting(integer(1))
    surrogate: str | None = setting(text("a defense=none checkpoint to transfer from"))


@dataclass
class AuditConfig:
    enabled: bool = MISSING
    n_samples: int = setting(integer(1))
    curve_factors: list[float] = setting(numbers(number(at_least=0)))
    curve_attacks: list[str] | None = setting(strings())
    pgd_steps: int = setting(integer(1))
    square_queries: int = setting(integer(1))
    escalation: EscalationConfig = nested(EscalationConfig)


@dataclass
class CertifyConfig:
    enabled: bool = MISSING
    n_samples: int = setting(integer(1))
    n0: int = setting(integer(1))
    n: int = setting(integer(1))
    alpha: float = setting(number(above=0, below=1))
    radius_factors: list[float] = setting(numbers(number(at_least=0)))
    batch_size: int = setting(integer(1))
    attack: Any = setting(subconfig("an attack option (attack@eval.certify.attack=NAME)"))


@dataclass
class EvalConfig:
    attacks: dict[str, Any] = field(default_factory=dict)
    n_samples: int = setting(integer(1, also=(-1,), note="-1: the whole test split"))
    image_grid: int = setting(integer(0, note="0: no images"))
    accuracy_draws: int = setting(integer(1))
    compare_without_eot: Any = setting(Rule(
        "true, false, or a list of the evaluation's attack names",
        lambda value: isinstance(value, bool) or isinstance(value, list | tuple) and all(
            isinstance(each, str) for each in value), ("abc", "[[1]]")))
    save_adversarial: bool = MISSING
    bpda: bool = MISSING
    val_attack: Any = setting(subconfig("an attack option (attack@eval.val_attack=NAME)"))
    audit: AuditConfig = nested(AuditConfig)
    certify: CertifyConfig = nested(CertifyConfig)
    mixture_attacks: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def relations(node: Any) -> Relations:
        names = set(node.get("attacks") or {})
        chosen = node.get("compare_without_eot")
        if isinstance(chosen, list | tuple) or hasattr(chosen, "__iter__") and not isinstance(chosen, str | bool):
            unknown = [name for name in chosen if isinstance(name, str) and name not in names]
            if unknown and names:
                yield "compare_without_eot", list(chosen), f"names among the evaluation's attacks: " \
                                                           f"{', '.join(sorted(names))}"


# -- optimizer, scheduler, trainer (third-party targets: their other keys are checked against the signature) ----
@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = setting(number(above=0))
    weight_decay: float = setting(number(at_least=0))


@dataclass
class SGDConfig(OptimizerConfig):
    momentum: float = setting(number(at_least=0))
    nesterov: bool = MISSING


@dataclass
class CosineConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    T_max: int = setting(integer(1, note="epochs to the minimum"))


@dataclass
class ConstantConfig:
    _target_: str = MISSING
    _partial_: bool = MISSING
    factor: float = setting(number(at_least=0, at_most=1))
    total_iters: int = setting(integer(0))


def _batches_limit(value: Any) -> bool:
    return value is None or (_is_integer(value) and value >= 1) or (_is_number(value) and 0 < value <= 1)


LIMIT = Rule("an integer ≥ 1 (batches), a fraction in (0, 1], or null for all", _batches_limit, ("0", "-1", "1.5"))
DEVICES = Rule("an integer ≥ 1, -1 (all), 'auto', or a list of device indices",
               lambda value: (_is_integer(value) and (value >= 1 or value == -1)) or value == "auto" or (
                   isinstance(value, list | tuple) and len(value) >= 1 and all(
                       _is_integer(each) and each >= 0 for each in value)), ("0", "-2", "[]"))


@dataclass
class TrainerConfig:
    _target_: str = MISSING
    default_root_dir: str = setting(text())
    max_epochs: int | None = setting(integer(1, also=(-1,), note="-1 or null: until max_steps or max_time"))
    accelerator: str = setting(choice(*ACCELERATORS))
    devices: Any = setting(DEVICES)
    inference_mode: bool = MISSING
    deterministic: Any = setting(Rule("true, false or 'warn'", lambda value: isinstance(value, bool) or value == "warn",
                                      ("maybe",)))
    log_every_n_steps: int = setting(integer(1))
    num_sanity_val_steps: int = setting(integer(0, also=(-1,)))
    enable_model_summary: bool = MISSING
    limit_train_batches: Any = setting(LIMIT)
    limit_val_batches: Any = setting(LIMIT)
    use_distributed_sampler: bool = MISSING

    @staticmethod
    def relations(node: Any) -> Relations:
        bounded = node.get("max_steps") not in (None, -1) or node.get("max_time") is not None
        if node.get("max_epochs") in (None, -1) and not bounded:
            yield "max_epochs", node.get("max_epochs"), "an integer ≥ 1 (-1 or null only with trainer.max_steps or " \
                                                        "trainer.max_time set: without them the run never ends)"


@dataclass
class GPUTrainerConfig(TrainerConfig):
    precision: str = setting(choice(*PRECISIONS))


@dataclass
class DDPTrainerConfig(GPUTrainerConfig):
    strategy: str = setting(text("e.g. ddp"))
    sync_batchnorm: bool = MISSING
    num_nodes: int = setting(integer(1))


# -- performance, paths, logger, callbacks ---------------------------------------------------------------------
@dataclass
class PerformanceConfig:
    channels_last: bool = MISSING
    compile: bool = MISSING


@dataclass
class PathsConfig:
    root_dir: str = setting(text())
    data_dir: str = setting(text())
    output_root: str = setting(text())
    output_dir: str = setting(text())
    run_group: str = setting(text())
    checkpoint_store: str = setting(text())
    checkpoint_dir: str = setting(text())


@dataclass
class TensorBoardConfig:
    _target_: str = MISSING
    save_dir: str = setting(text())
    name: str = setting(text())
    version: str = setting(text())
    default_hp_metric: bool = MISSING
    sub_dir: str | None = setting(text())


@dataclass
class LoggersConfig:
    tensorboard: TensorBoardConfig = nested(TensorBoardConfig)


@dataclass
class NoLoggerConfig:
    pass


@dataclass
class ModelCheckpointConfig:
    _target_: str = MISSING
    dirpath: str = setting(text())
    filename: str = setting(text())
    auto_insert_metric_name: bool = MISSING
    monitor: str = setting(text())
    mode: str = setting(choice("min", "max"))
    save_top_k: int = setting(integer(0, also=(-1,)))
    save_last: bool = MISSING


@dataclass
class ProgressBarConfig:
    _target_: str = MISSING


@dataclass
class EvaluateCallbacksConfig:
    progress_bar: ProgressBarConfig = nested(ProgressBarConfig)


@dataclass
class CallbacksConfig(EvaluateCallbacksConfig):
    model_checkpoint: ModelCheckpointConfig = nested(ModelCheckpointConfig)


SCHEMAS: dict[str, type] = {
    "train": TrainConfig, "evaluate": EvaluateConfig,
    "dataset/file": FileDatasetConfig, "dataset/synthetic": DatasetConfig,
    "datamodule/idx": IdxDataModuleConfig, "datamodule/file": FileDataModuleConfig,
    "datamodule/synthetic": SyntheticDataModuleConfig,
    "model/classifier": ModelConfig, "model/preact_resnet": PreActResNetConfig, "model/small_cnn": SmallCNNConfig,
    "model/wide_resnet": WideResNetConfig, "model/dncnn": DnCNNConfig,
    "attack/none": NoAttackConfig, "attack/pgd": PGDConfig, "attack/apgd": APGDConfig, "attack/apgd_t": APGDTConfig,
    "attack/square": SquareConfig, "attack/sparse_rs": SparseRSConfig, "attack/msd": MSDConfig,
    "attack/fab": FABConfig, "attack/a3": A3Config, "attack/arc": ARCConfig,
    "attack/autoattack": AutoAttackConfig, "attack/torchattacks": TorchAttacksConfig,
    "attack/worst_case": WorstCaseConfig,
    "defense/adversarial_training": AdversarialTrainingConfig, "defense/trades": TRADESConfig,
    "defense/mixed": MixedAdversarialTrainingConfig, "defense/denoiser": DenoiserDefenseConfig,
    "defense/random_mixture": RandomMixtureConfig,
    "wrapper/noisy": NoisyModelConfig, "wrapper/smoothed": SmoothedClassifierConfig,
    "wrapper/preprocessed": PreprocessedConfig, "wrapper/bit_depth": BitDepthReductionConfig,
    "eval/eval": EvalConfig, "optimizer/adam": OptimizerConfig, "optimizer/sgd": SGDConfig,
    "scheduler/cosine": CosineConfig, "scheduler/constant": ConstantConfig,
    "trainer/cpu": TrainerConfig, "trainer/gpu": GPUTrainerConfig, "trainer/ddp": DDPTrainerConfig,
    "performance/performance": PerformanceConfig, "paths/paths": PathsConfig,
    "logger/tensorboard": LoggersConfig, "logger/none": NoLoggerConfig,
    "callbacks/train": CallbacksConfig, "callbacks/evaluate": EvaluateCallbacksConfig,
}


def annotated(node: Any, indent: int = 0) -> str:
    """A composed config as YAML, each key its schema covers followed by what it allows (`--cfg job`)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    found = OmegaConf.get_type(node)
    owner: type = found if isinstance(found, type) and dataclasses.is_dataclass(found) else object
    fields = {each.name for each in dataclasses.fields(owner)} if owner is not object else set()
    lines = []
    for key in map(str, node.keys()):
        if indent == 0 and key == "hydra":
            continue
        value = node._get_node(key)
        described = key in fields and not key.startswith("_") and (
            rule_of(owner, key) is not None or not isinstance(value, DictConfig))
        comment = f"  # {describe(owner, key)}" if described else ""
        literal = not OmegaConf.is_interpolation(node, key) and not value._is_none()
        if isinstance(value, DictConfig) and literal and len(value):
            lines.append(f"{' ' * indent}{key}:{comment}")
            lines.append(annotated(value, indent + 2))
            continue
        if isinstance(value, ListConfig) and literal:
            written = _scalar(OmegaConf.to_container(value))
        elif isinstance(value, DictConfig) and literal:
            written = "{}"
        else:
            written = _scalar(value._value())
        lines.append(f"{' ' * indent}{key}: {written}{comment}")
    return "\n".join(line for line in lines if line)


def _scalar(value: Any) -> str:
    import yaml

    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_scalar, value)) + "]"
    text = str(value)
    if text.startswith("${"):
        return text
    try:
        same = yaml.safe_load(text) == text
    except yaml.YAMLError:
        same = False
    return text if same and text.strip() == text and "#" not in text else "'" + text.replace("'", "''") + "'"


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore as `schema/<kind>/<name>` (again: the same entries).

    The schema of a node built from its `_target_` is stored open (not struct): `model._target_=mynet.Net
    ~model.image_size` swaps the class and drops a key it does not take, and a key the class does not take is
    refused by the check of its signature (`validation.check_values`) instead of by Hydra. Its fields keep their
    types. So are the callbacks, a collection a user drops from (`~callbacks.model_checkpoint`) and adds to. Any
    other schema is closed: Hydra refuses a key it does not name."""
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        group, _, option = name.rpartition("/")
        built = "_target_" in {each.name for each in dataclasses.fields(schema)} or group == "callbacks"
        node = OmegaConf.structured(schema, flags={"struct": False}) if built else schema
        store.store(group=f"schema/{group}" if group else "schema", name=option, node=node)
