"""One run from a built classifier to its record: the run directory's lock, the evaluation, the audit, metrics.json.

`train.run` and `evaluate.run` differ only in where the classifier comes from (training, or a checkpoint);
from there both call `evaluate_and_record`.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from robustlab.builders import (
    attack_descriptions,
    build_runtime,
    choices,
    dataset_threat_model,
    evaluation_attack_configs,
    find_surrogate,
    rebuild_attack,
)
from robustlab.checkpoints import load_predictor
from robustlab.classifier import RobustClassifier
from robustlab.code_digests import modules_hash
from robustlab.configuration import instantiate, to_plain
from robustlab.data.base import InMemoryImageDataModule
from robustlab.distributed import job_processes
from robustlab.errors import RobustlabError
from robustlab.evaluation.audit import audit, certificate_check, flags, robustness_curves
from robustlab.evaluation.certification import certifiable, certify_and_check
from robustlab.evaluation.certification import curves as certification_curves
from robustlab.evaluation.engine import Evaluation
from robustlab.evaluation.escalation import escalate, has_stand_ins, remedies
from robustlab.evaluation.logger import Logger
from robustlab.evaluation.plots import curves_figure, save_figure
from robustlab.evaluation.record import (
    FILE_NAME,
    STILL_FLAGGED,
    TRUSTED,
    WORST_CASE,
    RunRecord,
)
from robustlab.evaluation.results import EvaluationResults
from robustlab.evaluation.runtime import Runtime
from robustlab.evaluation.summary import results_table
from robustlab.evaluation.tensorboard import VISUAL, log_record
from robustlab.files import locked, write_atomically, write_text_atomically
from robustlab.fingerprint import evaluation_modules, run_fingerprint
from robustlab.models.preprocessing import backward_through_stand_ins
from robustlab.provenance import installed_packages, provenance
from robustlab.stages import Training

log = logging.getLogger(__name__)
ADVERSARIAL_FILE = "adversarial.pt"  # eval.save_adversarial: {attack: {"index": ..., "images": ...}}


class LateStepFailed(RobustlabError):
    """A step after the evaluation failed; its error is in the record, with everything measured."""


@dataclass
class RunContext:
    """What the steps after the evaluation share: the config, the classifier, its data, the evaluation that ran,
    where it ran (device, precision, loggers), and the run's fingerprint."""

    cfg: DictConfig
    classifier: RobustClassifier
    datamodule: InMemoryImageDataModule
    evaluation: Evaluation
    runtime: Runtime
    fingerprint: str

    def predictor(self) -> nn.Module:
        """The deployed predictor, in eval mode, on the run's device."""
        self.classifier.eval()
        return self.classifier.predictor()

    def test_tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `n` test images and labels (all with None), on the run's device."""
        images, labels = self.datamodule.split("test").tensors
        return images[:n].to(self.runtime.device), labels[:n].to(self.runtime.device)

    def autocast(self):
        """The evaluation's precision (bf16 autocast on a GPU), and its gradients (BPDA unless eval.bpda=false)."""
        stack = ExitStack()
        stack.enter_context(self.runtime.autocast())
        stack.enter_context(backward_through_stand_ins(self.classifier.predictor(), self.evaluation.bpda))
        return stack

    def publish_figure(self, figure, name: str, step: int) -> None:
        """`<name>.png` in the run directory, and `visual/<name>` in every TensorBoard logger at `step`."""
        for logger in self.runtime.loggers:
            if hasattr(getattr(logger, "experiment", None), "add_figure"):
                logger.experiment.add_figure(f"{VISUAL}/{name}", figure, step, close=False)
        save_figure(figure, Path(self.cfg.paths.output_dir) / f"{name}.png")


def evaluate_and_record(cfg: DictConfig, classifier: RobustClassifier, datamodule: InMemoryImageDataModule,
                        evaluation: Evaluation, checkpoint: str | None, chosen: dict[str, str],
                        training: Training | None = None, steps: int = 0,
                        fingerprint: str | None = None) -> RunRecord | None:
    """Evaluate the classifier (holding `checkpoint`'s weights), audit it, and write the run's record; None in
    a DDP process other than 0, which only evaluates its share. `fingerprint`: the run's, if known."""
    runtime = build_runtime(cfg)
    last_step = max(steps - 1, 0)  # where TensorBoard shows the run's final numbers and figures
    results = evaluation.run(classifier.model, classifier.defense, datamodule, runtime, step=last_step)
    if runtime.rank != 0:
        return None
    run = RunContext(cfg, classifier, datamodule, evaluation, runtime, fingerprint or run_fingerprint(cfg))
    errors: dict[str, str] = {}  # a late step that fails leaves what was measured; the run ends non-zero
    curves, audit_record = late_step("audit", errors, lambda: audit_run(run, results, step=last_step), ({}, {}))
    certification = late_step("certification", errors, lambda: certify_run(run, step=last_step), {})
    if certification:
        audit_record["certificate_violated"] = certificate_check(certification)
    escalation = late_step("escalation", errors, lambda: escalate_run(run, results, audit_record), {})
    built = classifier.build_config or {}
    targets = {group: built[group]["_target_"] for group in ("model", "defense")
               if isinstance(built.get(group), dict) and "_target_" in built[group]}
    try:
        record = record_run(run, results, curves, audit_record, checkpoint, chosen, training, steps,
                            certification, escalation, targets, errors)
    finally:
        runtime.close()
    if record.errors:
        raise LateStepFailed(f"the run's {', '.join(record.errors)} failed ("
                             + "; ".join(f"{step}: {error}" for step, error in record.errors.items())
                             + f"); what was measured is in {Path(cfg.paths.output_dir) / FILE_NAME}, and the same "
                             "command runs it again")
    return record


def late_step(name: str, errors: dict[str, str], step: Callable[[], Any], otherwise: Any) -> Any:
    """Run a step after the evaluation; if it fails, record its error under `name` and go on with `otherwise`, so
    the results measured so far are written (a user's error in a configuration is not caught: it is refused
    earlier)."""
    try:
        return step()
    except (KeyboardInterrupt, SystemExit, SIGTERMException):
        raise
    except Exception as error:  # noqa: BLE001 - any failure of a late step is recorded, never lost
        log.exception(f"{name} failed; the results measured so far are written")
        errors[name] = f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
        return otherwise


def audit_run(run: RunContext, results: EvaluationResults, step: int = 0) -> tuple[dict, dict]:
    """Robustness curves and the gradient-masking audit on the first `eval.audit.n_samples` test images.

    An attack of the suite that ran on all of these images is not run again at its own ε: the audit reads its
    per-image results (`audit.Known`).

    Writes robustness_curves.png into the run directory and logs the figure to TensorBoard at `step`.
    `eval.audit.enabled=false` skips it (the report then shows no flags for the cell).
    """
    cfg, evaluation = run.cfg, run.evaluation
    settings = cfg.eval.audit
    pl.seed_everything(cfg.seed, verbose=False)  # the same audit however the evaluation was sharded
    if not settings.enabled:
        return {}, {}
    predictor = run.predictor()
    x, y = run.test_tensors(settings.n_samples)
    draws = evaluation.draws()
    curved = settings.get("curve_attacks")  # null: every attack
    factories = {name: ((lambda eps, node=node: instantiate(node, eps=eps)), float(node.eps))
                 for name, node in evaluation_attack_configs(cfg).items()
                 if node.get("eps") is not None and float(node.eps) > 0  # eps: null is an unbounded attack
                 and (curved is None or name in curved)}
    eot_samples = {name: attack.eot_samples for name, attack in evaluation.attacks.items() if (attack.eps or 0) > 0}
    known = {name: (attack, results.per_example[name][:len(y)].to(y.device))
             for name, attack in evaluation.attacks.items()
             if name in results.per_example and results.n_eval.get(name, 0) >= len(y)}
    with run.autocast():
        curves = robustness_curves(factories, predictor, x, y, draws, list(settings.curve_factors), known)
        audit_record = audit(predictor, x, y, eps_linf=float(cfg.dataset.eps.linf),
                             num_classes=int(cfg.dataset.num_classes), curves=curves, draws=draws,
                             randomized=evaluation.randomized, eot_samples=eot_samples,
                             pgd_steps=settings.pgd_steps, square_queries=settings.square_queries,
                             eps_l2=float(cfg.dataset.eps.l2), known=known)
    figure = curves_figure(curves, title=" / ".join(f"{k}={v}" for k, v in choices().items()
                                                    if k in ("dataset", "model", "defense")))
    run.publish_figure(figure, "robustness_curves", step)
    log.info(f"audit: {flags(audit_record) or 'no flags'}")
    return curves, audit_record


def escalate_run(run: RunContext, results: EvaluationResults, audit_record: dict) -> dict:
    """Re-attack a cell whose audit raised a flag with the flag's remedies, on the evaluation's images
    (`evaluation/escalation.py`); {} without an audit or with `eval.audit.escalation.enabled=false`."""
    cfg, evaluation = run.cfg, run.evaluation
    settings = OmegaConf.select(cfg, "eval.audit.escalation")
    if not audit_record or settings is None or not settings.enabled:
        return {}
    raised = flags(audit_record)
    n = max(results.n_eval.values(), default=0)
    if not raised:
        return {"trust": TRUSTED}
    if not n:  # no attack ran: nothing to escalate
        return {"trust": STILL_FLAGGED, "flags": raised, "without_remedy": raised}
    predictor = run.predictor()
    x, y = run.test_tensors(n)
    surrogate_path = find_surrogate(cfg) if set(raised) & {"d", "f"} else None
    surrogate = load_predictor(surrogate_path).to(run.runtime.device) if surrogate_path else None
    found = remedies(raised, evaluation.attacks, lambda name, **changes: rebuild_attack(cfg, name, **changes),
                     to_plain(settings), surrogate, has_stand_ins(predictor), evaluation.bpda,
                     int(cfg.eval.audit.square_queries))
    pl.seed_everything(cfg.seed, verbose=False)
    with run.runtime.autocast():
        record = escalate(predictor, x, y, evaluation.draws(), results.per_example, raised, found, evaluation.bpda,
                          int(cfg.dataset.datamodule.eval_batch_size), budgets=evaluation.budgets,
                          worst_of=results.worst_case.get("attacks"))
    record["not_escalated"] = [name for name in evaluation.attacks if name not in {r.strengthens for r in found}]
    if record["not_escalated"]:
        log.info(f"escalation: no remedy strengthens {', '.join(record['not_escalated'])}: not escalated")
    log.info(f"escalation: {record['trust']} (flags {raised}; worst case "
             f"{results.robust_acc.get(WORST_CASE, float('nan')):.3f} → "
             f"{record['robust_acc'].get(WORST_CASE, float('nan')):.3f} in {record['seconds']:.1f} s)")
    return record


def certify_run(run: RunContext, step: int = 0) -> dict:
    """A smoothed classifier's certificates on the first `eval.certify.n_samples` test images, attacked and
    checked (`evaluation/certification.py`); {} for any other predictor or with `eval.certify.enabled=false`.

    Writes certified_accuracy.png (certified vs attacked accuracy per radius) into the run directory and logs
    it to TensorBoard at `step`.
    """
    predictor, settings = run.predictor(), run.cfg.eval.get("certify")
    if not certifiable(predictor) or settings is None or not settings.get("enabled", False):
        return {}
    images, labels = run.test_tensors()
    with run.autocast():
        record = certify_and_check(to_plain(settings), lambda eps: instantiate(settings.attack, eps=eps), predictor,
                                   images, labels, eps_l2=float(run.cfg.dataset.eps.l2), seed=run.cfg.seed)
    figure = curves_figure(certification_curves(record),
                           title=f"randomized smoothing, σ = {record['sigma']:g}: {record['n_samples']} images")
    run.publish_figure(figure, "certified_accuracy", step)
    soundness = record["soundness"]
    log.info(f"certification: certified accuracy {record['certified_acc']:.3f} at L2 ε={record['eps_l2']:g} on "
             f"{record['n_samples']} images; soundness check: {len(soundness['flipped'])} of {soundness['checked']} "
             "certified images changed class inside their radius")
    return record


@dataclass
class RunDirectory:
    fingerprint: str  # the run's (`fingerprint.run_fingerprint`), computed once
    finished: RunRecord | None  # the record of the run if it already finished, else None: it must run


@contextmanager
def run_directory(cfg: DictConfig):
    """Hold the run directory for the whole run; yield its `RunDirectory`.

    The same command started twice at once runs once: the second waits on the lock, then finds the run
    finished. A SIGTERM (a scheduler's preemption, `kill`) ends the command with status 143 and says so. Under
    DDP, the job's processes are closed when the run ends (`distributed.job_processes`).
    """
    fingerprint = run_fingerprint(cfg)
    try:
        with locked(cfg.paths.output_dir), job_processes():
            yield RunDirectory(fingerprint, finished_run(cfg.paths.output_dir, fingerprint))
    except SIGTERMException:  # Lightning's, a SystemExit with status 0: a sweep would end as if it had finished
        print(f"robustlab: stopped by SIGTERM before the run finished: no metrics.json in {cfg.paths.output_dir}. "
              "The same command resumes its training from the last finished epoch and skips the finished runs.",
              file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM) from None


def finished_run(output_dir: str | Path, fingerprint: str) -> RunRecord | None:
    """The record of a finished run with this fingerprint in `output_dir` (its metrics.json), or None."""
    path = Path(output_dir) / FILE_NAME
    if not path.is_file():
        return None
    record = RunRecord.read(path)
    if record.run_fingerprint != fingerprint:
        return None
    if record.errors:
        log.info(f"the last run with this fingerprint failed in its {', '.join(record.errors)}: running it again")
        return None
    log.info(f"run already finished (fingerprint {fingerprint}); nothing to do")
    log.info(results_table(record))
    log.info(f"metrics: {path}")
    return record


def swept_settings(cfg: DictConfig, chosen: dict[str, str]) -> dict:
    """The settings a researcher sweeps, flat (HParams shows them): optimizer, learning rate, batch size,
    epochs, and every scalar setting of the evaluated attack and of the defense (its training attack's too)."""
    def flat(node, prefix: str) -> dict:
        values = {}
        for key, value in (to_plain(node) or {}).items():
            if key in ("_target_", "_partial_", "member"):  # `member` is the model, listed on its own
                continue
            if isinstance(value, dict):
                values.update(flat(value, f"{prefix}.{key}"))
            elif value is None or isinstance(value, (int, float, str, bool)):
                values[f"{prefix}.{key}"] = value
        return values

    return {"optimizer": chosen.get("optimizer"), "lr": OmegaConf.select(cfg, "optimizer.lr"),
            "batch_size": OmegaConf.select(cfg, "dataset.datamodule.batch_size"),
            "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs"),
            **flat(cfg.get("attack"), "attack"), **flat(cfg.get("defense"), "defense")}


def training_fields(training: Training | None) -> dict:
    """The record's facts about the training (none for a model evaluated as it was given)."""
    if training is None:
        return {}
    return {"selection": training.selection, "train_seconds": training.train_seconds, "epochs": training.epochs,
            "training_reused": training.reused, "resumed_from": training.resumed_from,
            "training_fingerprint": training.fingerprint, "training_code": training.code}


def record_run(run: RunContext, results: EvaluationResults, curves: dict, audit_record: dict,
               checkpoint: str | None, chosen: dict[str, str], training: Training | None = None,
               steps: int = 0, certification: dict | None = None, escalation: dict | None = None,
               targets: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> RunRecord:
    """Write metrics.json into the run directory, log its final numbers and HParams to TensorBoard at the last
    training step (of `steps`; Lightning logs step k's numbers at index k − 1), print where the file is.

    `chosen` is the option of each config group that produced the evaluated model and attack; `training`
    is None when the run only evaluated a checkpoint. metrics.json is written last and atomically, and
    holds the run's fingerprint: its presence marks the run as finished.
    """
    cfg, runtime = run.cfg, run.runtime
    modules = evaluation_modules(cfg)
    record = RunRecord(
        dataset=chosen.get("dataset", ""),
        model=chosen.get("model", ""),
        defense=chosen.get("defense", ""),
        attack=chosen.get("attack"),
        seed=cfg.get("seed"),
        eps=dict(dataset_threat_model(cfg)),
        **results.record_fields(),
        audit=audit_record,
        curves={**curves, **certification_curves(certification or {})},
        certification=certification or {},
        escalation=escalation or {},
        targets=targets or {},
        attacks={**attack_descriptions(cfg), **{name: to_plain(node) for name, node in
                                                 (cfg.eval.get("mixture_attacks") or {}).items()
                                                 if name in results.robust_acc}},
        settings=swept_settings(cfg, chosen),
        checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None,
        run_fingerprint=run.fingerprint,
        **training_fields(training),
        evaluation_code=modules_hash(modules),
        evaluation_modules=modules,
        provenance=provenance(runtime.device, runtime.precision),
        tensorboard=next((logger.log_dir for logger in runtime.loggers if isinstance(logger, Logger)), None),
        errors=dict(errors or {}),
    )
    directory = Path(cfg.paths.output_dir)
    write_text_atomically(directory / "packages.txt", installed_packages())
    if results.adversarial:
        write_atomically(directory / ADVERSARIAL_FILE, lambda partial: torch.save(results.adversarial, partial))
    # TensorBoard's numbers come first, so a failure there is in the record; the record is written last.
    late_step("tensorboard", record.errors, lambda: log_record(runtime.loggers, record, step=max(steps - 1, 0)),
              None)  # the last training step, as the figures
    path = record.write(directory)
    log.info(results_table(record))
    log.info(f"metrics: {path}")
    return record
