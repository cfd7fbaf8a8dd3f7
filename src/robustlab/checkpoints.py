"""Reading models back: robustlab checkpoints (the classifier, or just the deployed predictor), and models
robustlab did not train (a state_dict for a model config, a TorchScript file)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from robustlab.classifier import RobustClassifier
from robustlab.configuration import instantiate
from robustlab.errors import CheckpointError
from robustlab.performance import speed_up


def load_tensors(path: Path, what: str, expected: str):
    """`torch.load(path)` unpickling nothing but tensors and plain containers (`weights_only`), or a
    `CheckpointError` that names `what` and says what was `expected`."""
    if not path.is_file():
        raise CheckpointError(f"{what} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"{what} cannot be read {expected}: {type(error).__name__}: {reason}") from error


# Marks a finished training (and each finished stage) in its checkpoint directory; names its best checkpoint.
TRAINED_MARKER = "trained.json"


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict, or a `CheckpointError` saying why it cannot be used."""
    path = Path(path)
    checkpoint = load_tensors(path, f"checkpoint {str(path)!r}", "(truncated or not a PyTorch file)")
    if not isinstance(checkpoint, dict) or not checkpoint.get("robustlab") or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by robustlab (no 'robustlab' entry)")
    return checkpoint


def load_weights(classifier: RobustClassifier, path: str | Path) -> None:
    """Load a checkpoint's weights (model and defense) into `classifier`, e.g. a finished stage's best ones."""
    classifier.load_state_dict(read_checkpoint(path)["state_dict"])


def load_model_weights(classifier: RobustClassifier, path: str | Path) -> None:
    """Load only the classifier network's weights from a robustlab checkpoint of the same model."""
    weights = {key.removeprefix("model."): value for key, value in read_checkpoint(path)["state_dict"].items()
               if key.startswith("model.")}
    try:
        classifier.model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold this model's weights: {error}") from error


# Defense classes renamed since: checkpoints keep the `_target_` they were written with.
RENAMED_TARGETS = {"robustlab.defenses.Defense": "robustlab.defenses.AdversarialTraining"}


def classifier_from_checkpoint(checkpoint: dict, performance: dict | None = None, on_cpu: bool = True
                               ) -> RobustClassifier:
    """The trained model and defense, weights loaded, in eval mode, for evaluation and deployment (no optimizer).

    `performance`: `channels_last` / `compile` as in the run's `performance` config; `on_cpu`: where it runs."""
    stored = checkpoint["robustlab"]
    defense = dict(stored["defense"])
    defense["_target_"] = RENAMED_TARGETS.get(defense["_target_"], defense["_target_"])
    model, defense = instantiate(OmegaConf.create(stored["model"])), instantiate(OmegaConf.create(defense))
    speed_up(model, defense, **(performance or {}), on_cpu=on_cpu)
    classifier = RobustClassifier(model=model, defense=defense, build_config=stored)
    try:
        classifier.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint does not match the model it describes: {error}") from error
    return classifier.eval()


def load_classifier(path: str | Path) -> RobustClassifier:
    return classifier_from_checkpoint(read_checkpoint(path))


def load_predictor(path: str | Path) -> nn.Module:
    """The deployed model (defense applied) from a checkpoint: an `nn.Module` in eval mode taking [0, 1] images."""
    return load_classifier(path).predictor().eval()


# -- models robustlab did not train ---------------------------------------------------------------------------
EXTERNAL_DEFENSE = "external"  # the defense label of a model trained elsewhere: whatever it had is in its weights


def read_state_dict(path: str | Path) -> dict:
    """A state_dict from a file, unpickling nothing but tensors and plain containers (`weights_only`). A
    Lightning or robustlab checkpoint is accepted too: its `state_dict`, with robustlab's `model.` prefix
    removed (the classifier network's weights)."""
    path = Path(path)
    loaded = load_tensors(path, f"weights={str(path)!r}",
                          "as a state_dict (a file saved with torch.save(model.state_dict(), path))")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
        if any(key.startswith("model.") for key in loaded):
            loaded = {key.removeprefix("model."): value for key, value in loaded.items() if key.startswith("model.")}
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise CheckpointError(f"weights={str(path)!r} holds a {type(loaded).__name__}, not a state_dict "
                              "(a dict of tensors: torch.save(model.state_dict(), path))")
    return loaded


def model_with_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """`model` with the state_dict in `path` loaded, or a `CheckpointError` naming what does not fit."""
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as error:
        details = " ".join(str(error).split())
        raise CheckpointError(f"weights={str(path)!r} does not fit the model {type(model).__name__} "
                              f"(model._target_): {details}") from None
    return model


def read_torchscript(path: str | Path) -> nn.Module:
    """A TorchScript module (torch.jit.save) on the CPU: its code is TorchScript's, no pickled Python objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"torchscript={str(path)!r}: no such file")
    try:
        return TorchScriptModel(torch.jit.load(str(path), map_location="cpu"))
    except Exception as error:
        raise CheckpointError(f"torchscript={str(path)!r} is not a TorchScript file (torch.jit.save of a scripted "
                              f"or traced model): {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from None


class TorchScriptModel(nn.Module):
    """A TorchScript module as a plain module: the evaluation counts passes with forward hooks, which
    ScriptModules refuse."""

    def __init__(self, scripted: nn.Module) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(x)
