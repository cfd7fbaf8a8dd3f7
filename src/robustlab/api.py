"""robustlab as a library: the command line's honest evaluation of any `nn.Module`, from Python.

    import robustlab
    record = robustlab.evaluate_model(model, images, labels, dataset="fashion_mnist", attack="apgd_ce")
    record.robust_acc["worst_case"], record.intervals["worst_case"], record.audit, record.threat_model

The same evaluation as `python evaluate.py` (the suite of `eval`, EOT for a randomized model, exact
expectations for a finite mixture, the worst case per image, the audit and its escalation, intervals, pass
counts, the threat-model check), returning the same `RunRecord`, also written as metrics.json into
`output_dir`. No config files or Hydra app needed: `dataset` names the threat budgets (ε), classes and image
shape; `attack` the extra attack beside the `eval` suite; `overrides` are any `python evaluate.py` overrides
(`eval=quick`, `eval.n_samples=200`, `trainer=gpu`, ...).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from robustlab.builders import build_datamodule, build_evaluation, build_external_classifier, choices
from robustlab.checkpoints import EXTERNAL_DEFENSE
from robustlab.configuration import config_dir
from robustlab.data.tensors import GivenTestSplit
from robustlab.errors import ConfigError
from robustlab.evaluation.record import RunRecord
from robustlab.resolvers import register_resolvers
from robustlab.runs import evaluate_and_record
from robustlab.validation import check_config, check_model_fits_dataset, composition_refused


def evaluate_model(model: nn.Module, images: torch.Tensor | None = None, labels: torch.Tensor | None = None, *,
                   dataset: str = "fashion_mnist", attack: str = "pgd_linf", overrides: Sequence[str] = (),
                   output_dir: str | Path | None = None, name: str | None = None) -> RunRecord:
    """Evaluate `model` (any module taking [0, 1] images, returning logits) and return its record.

    `images`, `labels`: the test images (N, C, H, W) in [0, 1] and their classes; None: `dataset`'s test split.
    `name`: the model's label in the record and the report (default: its class name); its defense is
    `external`. `output_dir`: where metrics.json (and TensorBoard's logs) go; default a new temporary
    directory. The model is copied, so the one passed in keeps its device, mode and memory format.
    """
    output_dir = Path(tempfile.mkdtemp(prefix="robustlab-") if output_dir is None else output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    with composition_refused(overrides):  # a value of the wrong type for its schema, an unknown key or option
        cfg = compose_evaluation([f"dataset={dataset}", f"attack={attack}", *overrides], output_dir)
    check_config(cfg)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    check_model_fits_dataset(model.cpu(), cfg)
    if images is None:
        datamodule = build_datamodule(cfg.dataset)
    else:
        if labels is None:
            raise ConfigError("images without labels: pass both, or neither for the dataset's test split")
        given = GivenTestSplit(images, labels, eval_batch_size=int(cfg.dataset.datamodule.eval_batch_size))
        shape = tuple(given.images.shape[1:])
        expected = (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
        if shape != tuple(expected):
            raise ConfigError(f"images of shape {shape} but dataset={dataset} describes {expected}: choose the "
                              "dataset whose images these are")
        datamodule = given
    chosen = {**choices(), "model": name or type(model).__name__, "defense": EXTERNAL_DEFENSE}
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    evaluation = build_evaluation(cfg)
    classifier = build_external_classifier(model, {"_target_": f"{type(model).__module__}.{type(model).__qualname__}"},
                                           cfg, chosen)
    record = evaluate_and_record(cfg, classifier, datamodule, evaluation, None, chosen=chosen)
    if record is None:  # only a DDP process other than 0 has none, and `trainer=ddp` starts them from a script
        raise ConfigError("evaluate_model runs in one process: leave trainer=ddp to python evaluate.py")
    return record


def compose_evaluation(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python evaluate.py <overrides>` runs, its outputs in `output_dir`, with Hydra's own settings in
    place as in a run (`${hydra:...}` and the option names resolve), without a Hydra app."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.output_root={output_dir}", f"paths.root_dir={output_dir}",
                                             *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
    HydraConfig.instance().set_config(cfg)
    return cfg
