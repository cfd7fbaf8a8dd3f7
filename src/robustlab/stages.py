"""Train a defense stage by stage, once per training fingerprint: resume a killed stage, reuse finished ones.

`paths.checkpoint_dir` is keyed by the training fingerprint. Stage k of a defense (one for most, several for
the denoiser and the mixture) checkpoints into `<checkpoint_dir>/stage<k>-<name>`: there, `last.ckpt`
(written every epoch, with optimizer, scheduler, loop and RNG state) lets the same command continue a
killed stage exactly where its last epoch ended, and `trained.json` (written atomically once `fit` returns)
marks the stage as finished. `<checkpoint_dir>/trained.json` marks the whole training as finished, so
sweeping attacks or budgets over a trained defense never retrains it. A file lock makes this safe when a
parallel launcher starts two runs that share a training.

Under DDP every process runs this same code (Lightning starts the others by re-running the command), and
every process must join each `fit`. Only process 0 takes the lock and writes markers; the others only read
them, and they decide the same way, since process 0 writes a marker only after a fit they took part in.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from robustlab.builders import StageSettings, build_trainer
from robustlab.checkpoints import TRAINED_MARKER, load_model_weights, load_weights
from robustlab.classifier import RobustClassifier
from robustlab.defenses.base import Stage
from robustlab.errors import ConfigError
from robustlab.files import locked, write_text_atomically
from robustlab.fingerprint import training_code, training_config_fingerprint, training_fingerprint
from robustlab.provenance import provenance

log = logging.getLogger(__name__)

MARKER = TRAINED_MARKER


@dataclass
class Training:
    """A finished training, as its `trained.json` marker records it: of one stage (`_fit_stage`), or of the
    whole defense, its stages combined (`combined`), which is what a run evaluates."""

    fingerprint: str  # training config and code (the checkpoint directory's name)
    checkpoint: str  # the checkpoint to evaluate: best by the defense's selection metric
    train_seconds: float
    epochs: int
    resumed_from: str | None = None
    reused: bool = False
    config_fingerprint: str | None = None  # the training config alone
    code: str | None = None  # the hash of the code that trained it (code_digests.code_hash)
    provenance: dict = field(default_factory=dict)
    steps: int = 0  # optimizer steps of the (last stage's) fit: where its final numbers go in TensorBoard
    selection: dict | None = None  # {"metric": the selection metric, "best": its best value}

    @classmethod
    def from_marker(cls, marker: Path) -> Training:
        record = json.loads(marker.read_text())
        # Markers written before code hashes existed: their fingerprint was the config's alone.
        record.setdefault("config_fingerprint", record.get("fingerprint"))
        return cls(**{key: value for key, value in record.items() if key in {f.name for f in fields(cls)}})

    @classmethod
    def combined(cls, stages: list[Training], cfg: DictConfig) -> Training:
        """The whole training from its stages': the last stage's checkpoint, selection and steps, the stages'
        seconds and epochs summed."""
        last = stages[-1]
        return cls(fingerprint=last.fingerprint, checkpoint=last.checkpoint,
                   train_seconds=sum(stage.train_seconds for stage in stages),
                   epochs=sum(stage.epochs for stage in stages),
                   resumed_from=next((stage.resumed_from for stage in stages if stage.resumed_from), None),
                   config_fingerprint=training_config_fingerprint(cfg), code=training_code(cfg),
                   provenance=last.provenance, steps=last.steps, selection=last.selection)


def finished_training(directory: Path, fingerprint: str) -> Training | None:
    marker = directory / MARKER
    if not marker.is_file():
        return None
    training = Training.from_marker(marker)
    if training.fingerprint != fingerprint or not Path(training.checkpoint).is_file():
        return None
    training.reused = True
    return training


def training_by_other_code(directory: Path, cfg: DictConfig) -> Training | None:
    """`reuse=any_version`: a finished training of the same config by other code, beside `directory`."""
    config_fingerprint = training_config_fingerprint(cfg)
    candidates = [Training.from_marker(marker) for marker in sorted(directory.parent.glob(f"*/{MARKER}"),
                                                                   key=lambda path: path.stat().st_mtime)]
    matches = [training for training in candidates
               if training.config_fingerprint == config_fingerprint and Path(training.checkpoint).is_file()]
    if not matches:
        return None
    training = matches[-1]  # the most recent
    log.info(f"training: reusing {training.checkpoint}, trained by other code (reuse=any_version): its training "
             f"code {training.code or 'unrecorded'}, this code {training_code(cfg)}")
    training.reused = True
    return training


def stage_directory(directory: Path, stages: list[Stage], index: int) -> Path:
    """Stage k's checkpoints: `directory/stage<k>-<name>`, for a defense of one stage as of several."""
    return directory / f"stage{index + 1}-{stages[index].name}"


def fit_or_reuse(cfg: DictConfig, classifier: RobustClassifier, datamodule) -> Training:
    """Train every stage of the defense that is not trained yet; return the checkpoint to evaluate, whose
    weights the classifier then holds.

    Each stage is its own Lightning fit with its own checkpoint directory, `last.ckpt` and marker, so a run
    killed in stage k resumes stage k, and the stages before it are loaded, not repeated. After a stage, its
    best checkpoint's weights are loaded before the next stage starts.
    """
    directory = Path(cfg.paths.checkpoint_dir)
    fingerprint = training_fingerprint(cfg)
    defense = classifier.defense
    with locked(directory):
        done = finished_training(directory, fingerprint)
        if done is not None:
            log.info(f"training: reusing {done.checkpoint} (fingerprint {fingerprint})")
        elif cfg.get("reuse") == "any_version":
            done = training_by_other_code(directory, cfg)
        if done is not None:
            load_weights(classifier, done.checkpoint)
            return done
        stages = defense.stages()
        trained: list[Training] = []
        for index, stage in enumerate(stages):
            defense.begin_stage(index)
            if stage.weights_from:
                log.info(f"training: stage {stage.name}: loading the classifier from {stage.weights_from}")
                load_model_weights(classifier, stage.weights_from)
                continue
            stage_dir = stage_directory(directory, stages, index)
            with locked(stage_dir):
                training = finished_training(stage_dir, fingerprint)
                if training is None:
                    training = _fit_stage(cfg, classifier, datamodule, stage, stage_dir, fingerprint, len(stages) > 1)
                else:
                    log.info(f"training: stage {stage.name}: reusing {training.checkpoint}")
            load_weights(classifier, training.checkpoint)
            trained.append(training)
        defense.begin_stage(None)
        final = Training.combined(trained, cfg)
        _write_marker(directory, final)
        return final


def _fit_stage(cfg, classifier, datamodule, stage: Stage, directory: Path, fingerprint: str,
               multi_stage: bool) -> Training:
    trainer = build_trainer(cfg, StageSettings(directory, stage.selection_metric, stage.epochs,
                                               stage.name if multi_stage else None))
    last = directory / "last.ckpt"
    resume = str(last) if last.is_file() else None
    label = f"stage {stage.name}: " if multi_stage else ""
    if resume:
        log.info(f"training: {label}resuming from {resume}")
    elif multi_stage:
        log.info(f"training: stage {stage.name}")
    started = time.perf_counter()
    trainer.fit(classifier, datamodule=datamodule, ckpt_path=resume)
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint):
        raise ConfigError("training needs callbacks.model_checkpoint (a ModelCheckpoint): it saves the checkpoint "
                          "that is evaluated and resumed")
    training = Training(fingerprint=fingerprint, checkpoint=callback.best_model_path or callback.last_model_path,
                        train_seconds=time.perf_counter() - started, epochs=trainer.current_epoch,
                        resumed_from=resume, config_fingerprint=training_config_fingerprint(cfg),
                        code=training_code(cfg), provenance=provenance(trainer.strategy.root_device, trainer.precision),
                        steps=trainer.global_step,
                        selection={"metric": stage.selection_metric, "best": None if callback.best_model_score is None
                                   else float(callback.best_model_score)})
    _write_marker(directory, training)
    return training


def _write_marker(directory: Path, training: Training) -> None:
    if getattr(rank_zero_only, "rank", 0) == 0:  # Lightning sets the process's rank on the function
        write_text_atomically(directory / MARKER, json.dumps(asdict(training), indent=2) + "\n")
