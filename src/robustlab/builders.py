"""Build a run's parts from its composed config: data, classifier (trained here, read from a checkpoint, or given),
the evaluation and its attacks, the escalation's surrogate, where the evaluation runs, the Trainer.

This is the lowest layer that reads the Hydra config: the evaluation engine, escalation, certification and
checkpoint reading below it take the objects built here (docs/ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from robustlab.attacks.base import Attack
from robustlab.checkpoints import (
    EXTERNAL_DEFENSE,
    TRAINED_MARKER,
    TorchScriptModel,
    classifier_from_checkpoint,
    read_checkpoint,
)
from robustlab.classifier import RobustClassifier
from robustlab.configuration import instantiate, to_plain
from robustlab.data.base import InMemoryImageDataModule
from robustlab.defenses import AdversarialTraining
from robustlab.defenses.base import Defense
from robustlab.errors import CheckpointError, ConfigError, InvalidValue
from robustlab.evaluation.audit import check_settings as check_audit
from robustlab.evaluation.certification import check_settings as check_certification
from robustlab.evaluation.engine import Evaluation
from robustlab.evaluation.escalation import check_settings as check_escalation
from robustlab.evaluation.runtime import AUTOCAST, Runtime
from robustlab.files import write_atomically
from robustlab.fingerprint import training_code
from robustlab.performance import speed_up
from robustlab.validation import check_model_fits_dataset

log = logging.getLogger(__name__)


@contextmanager
def config_key(node: DictConfig):
    """Re-raise an `InvalidValue` from code driven by `node` under `node`'s full config key."""
    try:
        yield
    except InvalidValue as error:
        raise error.under(node._get_full_key(None)) from None


def choices() -> dict[str, str]:
    """What this run uses, per config group, by name (empty outside a Hydra app): the option's name, or, where
    the command line replaced a group's `_target_` (`model._target_=mynet.MyNet`), the class's name, never
    the name of the option it replaced. Run directories, records and the report are labelled by it."""
    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    chosen = {group: str(option) for group, option in hydra.runtime.choices.items()
              if not group.startswith("hydra/") and option is not None}
    # The overrides as typed: an interpolation in one (`+attack.eps=${dataset.eps.linf}`) stays unresolved.
    typed = [str(override) for override in OmegaConf.to_container(hydra.overrides.task)]  # type: ignore[union-attr]
    for override in OverridesParser.create().parse_overrides(typed):
        group, _, leaf = override.key_or_group.rpartition(".")
        value = override.value()
        if leaf == "_target_" and "." not in group and not override.is_delete() and isinstance(value, str):
            chosen[group] = value.rpartition(".")[2]
    return chosen


def resolve_choice(group: str) -> str:
    """`${choice:model}`: the name `choices()` gives the group (its option's name before Hydra knows it)."""
    if not HydraConfig.initialized():
        raise ValueError("${choice:...} is resolved inside a Hydra run")
    return choices().get(group) or str(HydraConfig.get().runtime.choices.get(group))


def build_datamodule(dataset_cfg: DictConfig) -> InMemoryImageDataModule:
    """Instantiate and load the dataset now, so a missing dataset fails before any training."""
    node = dataset_cfg.datamodule
    datamodule = instantiate(node)
    if not isinstance(datamodule, InMemoryImageDataModule):
        raise ConfigError(f"dataset.datamodule._target_={node.get('_target_')!r} built a {type(datamodule).__name__}, "
                          "not a dataset: a class of yours subclasses robustlab.data.InMemoryImageDataModule and "
                          "implements load_split(train) (docs/ARCHITECTURE.md, 'Your own code')")
    with config_key(node):
        datamodule.prepare_data()
        datamodule.setup("fit")
    return datamodule


def evaluation_attack_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The suite `eval.attacks`, with the top-level `attack` under its option name (it wins a clash)."""
    return {**cfg.eval.attacks, choices().get("attack", "attack"): cfg.attack}


def evaluation_attacks(cfg: DictConfig) -> dict[str, Any]:
    attacks = {name: instantiate(node) for name, node in evaluation_attack_configs(cfg).items()}
    for name, attack in attacks.items():
        if not isinstance(attack, Attack):
            node = evaluation_attack_configs(cfg)[name]
            raise ConfigError(f"{node._get_full_key(None)}._target_={node.get('_target_')!r} built a "
                              f"{type(attack).__name__}, not an attack: a class of yours subclasses "
                              "robustlab.attacks.base.Attack and implements attack(model, x, y, draws) "
                              "(docs/ARCHITECTURE.md, 'Your own code')")
    return attacks


def build_evaluation(cfg: DictConfig) -> Evaluation:
    """The evaluation `cfg.eval` describes, over its suite and the top-level attack; its settings (certification,
    audit, escalation) checked and its attacks built, so a bad value stops the run before training."""
    evaluation = cfg.eval
    class_names = cfg.dataset.get("class_names")
    if evaluation.get("certify") is not None:
        check_certification(to_plain(evaluation.certify))
        instantiate(evaluation.certify.attack)  # built once here, so its config is checked before training
    check_audit(to_plain(evaluation.audit), list(evaluation_attack_configs(cfg)))
    check_escalation(to_plain(OmegaConf.select(cfg, "eval.audit.escalation")))
    attacks = evaluation_attacks(cfg)
    mixture_attacks = {name: instantiate(node) for name, node in (evaluation.get("mixture_attacks") or {}).items()}
    nodes = {**evaluation_attack_configs(cfg), **(evaluation.get("mixture_attacks") or {})}
    budgets = {name: configured_budget(nodes[name], attack) for name, attack in {**attacks, **mixture_attacks}.items()}
    save = evaluation.get("save_adversarial", False)
    if not isinstance(save, bool):
        raise InvalidValue("eval.save_adversarial", save, "true or false")
    return Evaluation(attacks, n_eval=evaluation.n_samples, image_grid=evaluation.image_grid,
                      accuracy_draws=evaluation.accuracy_draws,
                      compare_without_eot=to_plain(evaluation.compare_without_eot),
                      class_names=list(class_names) if class_names else None, bpda=evaluation.get("bpda", True),
                      mixture_attacks=mixture_attacks, budgets=budgets, save_adversarial=save,
                      threat_model=dataset_threat_model(cfg))


def dataset_threat_model(cfg: DictConfig) -> list[tuple[str, float]]:
    """The dataset's balls (`dataset.eps`: L∞ and L2, and L1 and L0 where the dataset sets them)."""
    budgets = cfg.dataset.eps
    return [(norm, float(budgets[norm])) for norm in ("linf", "l2", "l1", "l0") if budgets.get(norm) is not None]


def configured_budget(node: DictConfig, attack: Attack) -> list[tuple[str, float]]:
    """The balls the evaluation enforces for `attack`: those its config writes (`eps` with `norm`, at its top or
    in the attacks it combines). An attack object that declares another budget than its config is refused
    before the run starts, naming the key and both values: the report labels the column with the config's."""
    written = to_plain(node)
    key = node._get_full_key(None)
    declared = {"eps": attack.eps, "norm": attack.norm}
    for field, value in declared.items():
        if field in written and not _same_budget(value, written[field]):
            raise ConfigError(f"{key}: {written.get('_target_')} declares eps={attack.eps!r}, norm={attack.norm!r} "
                              f"but its config says eps={written.get('eps')!r}, norm={written.get('norm')!r}: the "
                              "evaluation enforces the configured budget, so the attack must declare that one "
                              f"(its `{field}` set from its constructor's argument)")
    balls = _written_balls(written)  # (norm, eps); norm None where the config leaves it to the class
    extra = [ball for ball in attack.balls() if ball[1] != 0 and not any(
        norm in (None, ball[0]) and _same_budget(eps, ball[1]) for norm, eps in balls)]
    if extra:
        raise ConfigError(f"{key}: {written.get('_target_')} declares the ball(s) {extra}, which its config does not "
                          f"write (it writes {balls or 'no eps with a norm'}): write the attack's budget in its config "
                          "(eps: ${dataset.eps.linf}, norm: linf) and set it from there")
    return attack.balls()


def _written_balls(node: Any) -> list[tuple[str | None, float]]:
    """Every (norm, eps) that a plain config node writes, at its top or in the nodes it holds (norm None where a
    node writes an `eps` and leaves the norm to its class's default)."""
    if isinstance(node, list):
        return [ball for item in node for ball in _written_balls(item)]
    if not isinstance(node, dict):
        return []
    norm = node.get("norm") if isinstance(node.get("norm"), str) else None
    own = [(norm, float(node["eps"]))] if isinstance(node.get("eps"), (int, float)) else []
    if isinstance(node.get("budgets"), dict):  # an attack over a union of balls (MSD): norm → ε
        own += [(str(key), float(value)) for key, value in node["budgets"].items() if isinstance(value, (int, float))]
    return own + [ball for value in node.values() for ball in _written_balls(value)]


def _same_budget(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def rebuild_attack(cfg: DictConfig, name: str, **changes: Any) -> Attack:
    """The evaluation's attack `name` built again from its config with `changes` (e.g. more steps)."""
    return instantiate(evaluation_attack_configs(cfg)[name], **changes)


def find_surrogate(cfg: DictConfig) -> str | None:
    """The checkpoint escalation transfers from (remedies d, f): `eval.audit.escalation.surrogate`, else the newest
    finished `defense=none` training of this run's dataset and model anywhere under `paths.checkpoint_store`
    (found by the trainings' markers and what their checkpoints record, whatever `paths.checkpoint_dir` was);
    None if there is none."""
    chosen = OmegaConf.select(cfg, "eval.audit.escalation.surrogate")
    if chosen is not None:
        return str(chosen)
    store = Path(str(cfg.paths.checkpoint_store))
    markers = sorted(store.rglob(TRAINED_MARKER), key=lambda marker: marker.stat().st_mtime, reverse=True) \
        if store.is_dir() else []
    model, dataset = choices().get("model"), cfg.dataset.name
    for checkpoint in dict.fromkeys(str(json.loads(marker.read_text()).get("checkpoint")) for marker in markers):
        try:
            stored = read_checkpoint(checkpoint)["robustlab"]
        except CheckpointError:
            continue
        made = stored.get("choices", {})
        if made.get("defense") == "none" and made.get("model") == model and \
                stored.get("dataset", {}).get("name") == dataset:
            log.info(f"escalation: transfer attacks from the undefended surrogate {checkpoint}")
            return checkpoint
    return None


def attack_descriptions(cfg: DictConfig) -> dict[str, dict]:
    return {name: to_plain(node) for name, node in evaluation_attack_configs(cfg).items()}


def build_config(cfg: DictConfig) -> dict:
    """What a checkpoint must carry to rebuild its predictor without the original config files, and the hash
    of the code that trained it."""
    return {"model": to_plain(cfg.model), "defense": to_plain(cfg.defense), "dataset": to_plain(cfg.dataset),
            "choices": choices(), "training_code": training_code(cfg)}


def build_classifier(cfg: DictConfig) -> RobustClassifier:
    """The model under the defense, with its optimizer, scheduler and validation attack, ready to train."""
    model = instantiate(cfg.model)
    check_model_fits_dataset(model, cfg)
    defense = instantiate(cfg.defense)
    check_defense(defense, cfg.defense)
    with config_key(cfg.defense.get("wrapper") or cfg.defense):
        check_model_fits_dataset(defense.wrap(model), cfg, "defense")  # e.g. noise after a layer the model lacks
    speed_up(model, defense, **cfg.performance, on_cpu=_runs_on_cpu(cfg))
    return RobustClassifier(
        model=model,
        defense=defense,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        val_attack=instantiate(cfg.eval.val_attack) if cfg.eval.get("val_attack") else None,
        accuracy_draws=cfg.eval.accuracy_draws,
        build_config=build_config(cfg),
    )


def build_classifier_from_checkpoint(checkpoint: dict, cfg: DictConfig) -> RobustClassifier:
    """The classifier a robustlab checkpoint holds, laid out for where this run runs (`performance`)."""
    return classifier_from_checkpoint(checkpoint, cfg.performance, _runs_on_cpu(cfg))


def build_external_classifier(model: nn.Module, model_config: dict, cfg: DictConfig, chosen: dict[str, str]
                              ) -> RobustClassifier:
    """A model trained elsewhere as robustlab's classifier: deployed as it is (no defense of robustlab's), its
    build config (what a record's `targets` come from) made of `model_config`, `cfg.dataset` and `chosen`."""
    defense = AdversarialTraining()
    if not isinstance(model, TorchScriptModel):  # a TorchScript graph runs as it was saved
        speed_up(model, defense, **cfg.performance, on_cpu=_runs_on_cpu(cfg))
    built = {"model": model_config, "defense": {"_target_": EXTERNAL_DEFENSE}, "dataset": to_plain(cfg.dataset),
             "choices": chosen}
    return RobustClassifier(model=model, defense=defense, build_config=built).eval()


def _runs_on_cpu(cfg: DictConfig) -> bool:
    """Whether the Trainer will run on the CPU (`trainer.accelerator` cpu, or auto without a GPU)."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def check_defense(defense: Any, node: DictConfig) -> None:
    """A defense is a `Defense` with its own training loss: anything else is refused before training."""
    target = node.get("_target_")
    if not isinstance(defense, Defense):
        raise ConfigError(f"defense._target_={target!r} built a {type(defense).__name__}, not a defense: a class of "
                          "yours subclasses robustlab.defenses.base.Defense (docs/ARCHITECTURE.md, 'Your own code')")
    if type(defense).training_loss is Defense.training_loss:
        raise ConfigError(f"defense._target_={target!r} does not implement training_loss(model, x, y) -> "
                          "TrainingLoss(loss, logits), which every defense provides (docs/ARCHITECTURE.md, "
                          "'Your own code')")


def build_runtime(cfg: DictConfig) -> Runtime:
    """Where the evaluation runs. One process on one device: the evaluation loops itself, on the device and in the
    precision `trainer` names. Several processes (`trainer=ddp`, several devices or nodes), or a precision
    that converts the module (`bf16-true`): through Lightning's Trainer."""
    trainer = cfg.trainer
    progress = OmegaConf.select(cfg, "callbacks.progress_bar") is not None \
        and trainer.get("enable_progress_bar", True) is not False
    device = single_device(trainer)
    precision = trainer.get("precision", "32-true")
    if device is None or trainer.get("strategy") not in (None, "auto") or int(trainer.get("num_nodes", 1)) > 1 \
            or precision not in AUTOCAST:
        return Runtime(trainer=build_trainer(cfg), progress=progress)
    if trainer.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=trainer.deterministic == "warn")
    return Runtime(device, precision, build_loggers(cfg), progress)


def single_device(trainer: DictConfig) -> torch.device | None:
    """The one device `trainer.accelerator` and `trainer.devices` name, or None where they name several (or a
    kind only Lightning drives)."""
    accelerator, devices = str(trainer.get("accelerator", "auto")), trainer.get("devices", "auto")
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return torch.device("cpu") if devices in (1, "1", "auto") else None
    if accelerator not in ("gpu", "cuda"):
        return None
    devices = to_plain(devices) if isinstance(devices, (DictConfig, ListConfig)) else devices
    if devices == "auto":
        devices = 1 if torch.cuda.device_count() <= 1 else -1
    indices = CUDAAccelerator.parse_devices(devices)
    return torch.device("cuda", indices[0]) if indices is not None and len(indices) == 1 else None


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: a run killed while saving keeps its previous `last.ckpt`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        write_atomically(path, lambda partial: super(AtomicCheckpointIO, self).save_checkpoint(
            checkpoint, partial, storage_options))


@dataclass
class StageSettings:
    """What one training stage's Trainer takes from its stage rather than from the run's config."""

    checkpoint_dir: Path  # where its ModelCheckpoint writes (`<checkpoint_dir>/stage<k>-<name>`)
    selection_metric: str  # what its ModelCheckpoint monitors
    max_epochs: int | None = None  # the stage's epochs; None: `trainer.max_epochs`
    log_sub_dir: str | None = None  # a multi-stage defense: each stage logs into `<run>/<stage>`


def build_trainer(cfg: DictConfig, stage: StageSettings | None = None) -> pl.Trainer:
    """The Trainer `cfg.trainer` describes, with its callbacks and loggers; for a training `stage`, with that
    stage's checkpoint directory, selection metric, epochs and log sub-directory."""
    # A checkpoint directory is shared by design (it holds the lock, the marker, other stages, a run to resume):
    # Lightning's warning that it "exists and is not empty" is nothing a user could act on.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Lightning's own use of a PyTorch API that PyTorch deprecated: only a Lightning release can change it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if node is None:
            continue
        checkpointing = stage is not None and issubclass(get_class(node._target_), ModelCheckpoint)
        callbacks.append(instantiate(node, **({"dirpath": str(stage.checkpoint_dir), "monitor": stage.selection_metric}
                                              if checkpointing and stage is not None else {})))
    sub_dir = {"sub_dir": stage.log_sub_dir} if stage is not None and stage.log_sub_dir else {}
    loggers = [instantiate(node, **(sub_dir if "sub_dir" in node else {}))
               for node in (cfg.get("logger") or {}).values() if node is not None]
    epochs = {"max_epochs": stage.max_epochs} if stage is not None and stage.max_epochs is not None else {}
    # Checkpoints are written aside and renamed: a run killed while saving keeps its previous last.ckpt.
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()],
                       **epochs)
