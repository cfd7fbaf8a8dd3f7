"""robustlab's speed and memory, measured side by side with what users would pick instead.

    python scripts/bench.py                          # the full CPU run (about 25 minutes on 2 cores)
    python scripts/bench.py --device cuda --matrix   # the same on a GPU, plus a cold `sweep=matrix trainer=gpu`
    python scripts/bench.py --tiny                   # seconds, tiny sizes: keeps the script from rotting (tests)
    python scripts/bench.py --only autoattack        # some sections (repeatable): figures printed, nothing written

In one process, on the same model weights, batch and machine:
  1. PGD-L∞ (10 steps) throughput: robustlab vs torchattacks.PGD vs ART's ProjectedGradientDescentPyTorch,
     for BasicNet and WRN-16-4 on Fashion-MNIST shapes; robustlab with `performance.compile=true` too.
     An EOT gradient of noise injection's BasicNet, its draws batched vs one pass per draw. An input gradient
     through the denoiser defense's DnCNN → BasicNet, robustlab's vs the same network in plain PyTorch.
     AutoAttack's standard cascade on a PGD-trained BasicNet (2 epochs), the first 200 test images: each
     stage alone, robustlab's vs torchattacks' at the same settings, then the whole cascade, vs torchattacks'
     at AutoAttack's settings and vs torchattacks' `AutoAttack` as shipped (10 iterations per gradient
     stage); time per image and robust accuracy, each run once. APGD-CE under L1 on the same model, robustlab's
     vs adv-lib's `apgd(norm=1)` (the test suite's L1 peer), time per image and robust accuracy.
  2. One PGD-7 adversarial-training epoch: robustlab (Lightning, the real config path; `trainer=gpu` on a
     GPU) vs a plain fp32 PyTorch loop doing the same work (BasicNet; on a GPU WRN-16-4 too).
  3. Evaluation peak memory for 1,000 and 10,000 test images, each in a fresh process (RSS on the CPU, the
     CUDA allocator's peak on a GPU).
  4. With --matrix: the wall time of a cold `python train.py sweep=matrix` (every defense trained and
     evaluated, the report written), `trainer=gpu` on a GPU.
Each figure is the median of --repeats runs (min and max beside it); ratios come last.
The competitors get the model as a user would build it (PyTorch's default memory format, fp32); robustlab
gets the model as its pipeline deploys it (`performance.*` defaults of conf/train.yaml, and on a GPU the bf16
autocast of `trainer=gpu`, losses in fp32). Results are kept per device in benchmarks.json, and
BENCHMARKS.md shows every device measured so far.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from tqdm import tqdm

from robustlab.attacks import PGD
from robustlab.builders import build_classifier, build_datamodule, build_evaluation, build_runtime, build_trainer
from robustlab.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    dataset: list[str]
    batch: int
    pgd_steps: int
    wrn: tuple[int, int]
    train_batches: int | None  # None: a whole epoch
    eval_counts: tuple[int, int]
    aa_epochs: int  # AutoAttack's stages: the adversarial-training epochs of the model attacked,
    aa_images: int  # the first test images (those classified right are attacked),
    aa_budget: tuple[int, int]  # the gradient stages' iterations and Square's queries

    @classmethod
    def full(cls) -> Sizes:
        return cls(["dataset=fashion_mnist"], 1000, 10, (16, 4), None, (1000, 10000), 2, 200, (100, 5000))

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(["dataset=synthetic", "dataset.datamodule.num_test=400"], 64, 2, (10, 1), 5, (100, 400), 1, 32,
                   (5, 50))


@dataclass
class Figure:
    key: str  # what `ratios` looks the figure up by; `name` is what the tables show
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def row(self) -> str:
        return (f"| {self.name} | {self.median:,.1f} | {min(self.samples):,.1f} | {max(self.samples):,.1f} "
                f"| {self.unit} |")


def compose_config(overrides: list[str], output_dir: str):
    """The config `python train.py <overrides>` runs, with Hydra's own config set as in a run, so that
    `${hydra:...}` interpolations resolve (`trainer=gpu` reads the job number)."""
    register_resolvers()  # `${choice:...}`, `${fingerprint:...}`, as the robustlab command registers them
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={output_dir}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def timed(function, repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    def run() -> None:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return samples


def deployed_precision(device: torch.device):
    """What `trainer=gpu` runs robustlab's forward passes under: bf16 autocast on a GPU, plain fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_overrides(sizes: Sizes) -> list[tuple[str, list[str]]]:
    return [("BasicNet", ["model=basic_net"]),
            (f"WRN-{sizes.wrn[0]}-{sizes.wrn[1]}",
             ["model=wide_resnet", f"model.depth={sizes.wrn[0]}", f"model.widen_factor={sizes.wrn[1]}"])]


# -- 1. attack throughput ---------------------------------------------------------------------------------
def attack_throughput(sizes: Sizes, repeats: int, output_dir: str, device: torch.device) -> list[Figure]:
    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    eps, step = 0.1, 0.01
    figures = []
    for model_name, overrides in model_overrides(sizes):
        torch.manual_seed(0)
        cfg = compose_config([*sizes.dataset, *overrides, "defense=none"], output_dir)
        classifier = build_classifier(cfg).to(device)
        reference = copy.deepcopy(classifier.model).to(memory_format=torch.contiguous_format).eval()
        predictor = classifier.predictor().eval()
        shape = (sizes.batch, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
        x, y = torch.rand(shape), torch.randint(0, cfg.dataset.num_classes, (sizes.batch,))
        x_device, y_device = x.to(device), y.to(device)

        ours = PGD(eps=eps, norm="linf", steps=sizes.pgd_steps, step_size=step)
        theirs = torchattacks.PGD(reference, eps=eps, alpha=step, steps=sizes.pgd_steps, random_start=True)
        art_model = PyTorchClassifier(model=reference, loss=torch.nn.CrossEntropyLoss(), input_shape=shape[1:],
                                      nb_classes=cfg.dataset.num_classes, clip_values=(0.0, 1.0),
                                      device_type="gpu" if device.type == "cuda" else "cpu")
        art = ProjectedGradientDescentPyTorch(art_model, norm=np.inf, eps=eps, eps_step=step,
                                              max_iter=sizes.pgd_steps, num_random_init=1,
                                              batch_size=sizes.batch, verbose=False)
        x_np, y_np = x.numpy(), y.numpy()

        def robustlab_pgd(model=predictor) -> None:
            with deployed_precision(device):
                ours(model, x_device, y_device)

        contenders = [("robustlab", robustlab_pgd),
                      ("torchattacks", lambda: theirs(x_device, y_device)),
                      ("ART", lambda: art.generate(x_np, y_np))]
        if model_name == "BasicNet":
            compiled = build_classifier(compose_config([*sizes.dataset, "performance.compile=true"], output_dir))
            compiled_predictor = compiled.to(device).predictor().eval()
            contenders.insert(1, ("robustlab compile=true", lambda: robustlab_pgd(compiled_predictor)))
        for library, run in tqdm(contenders, desc=f"PGD-{sizes.pgd_steps} on {model_name}", leave=False):
            seconds = timed(run, repeats, device)
            figures.append(Figure(f"pgd/{model_name}/{library}",
                                  f"PGD-{sizes.pgd_steps} L∞ throughput, {model_name}, batch {sizes.batch}: "
                                  f"{library}", "images/s", [sizes.batch / s for s in seconds]))
    return figures


# -- 1b. EOT: a randomized predictor's gradient, its draws batched or one pass each ---------------------------
EOT_DRAWS = 10


def eot_gradient(sizes: Sizes, repeats: int, output_dir: str, device: torch.device) -> list[Figure]:
    """One EOT gradient (10 draws) of noise injection's deployed BasicNet on 64 images: the draws batched (what
    attacks do where the randomness is per image; on the CPU up to 256 images a pass) against one pass per draw."""
    from robustlab.attacks import expectation
    from robustlab.attacks.gradient import loss_and_gradient

    torch.manual_seed(0)
    cfg = compose_config([*sizes.dataset, "defense=noise_injection"], output_dir)
    predictor = build_classifier(cfg).to(device).predictor().eval()
    count = 64  # an attack's chunk at the end of a batch, or a small evaluation batch
    x = torch.rand(count, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size, device=device)
    y = torch.randint(0, cfg.dataset.num_classes, (count,), device=device)
    figures = []
    for way, batched in (("batched draws", True), ("one pass per draw", False)):
        expectation._PER_SAMPLE[predictor] = batched

        def gradient() -> None:
            with deployed_precision(device):
                loss_and_gradient(predictor, x, y, EOT_DRAWS)

        seconds = timed(gradient, repeats, device)
        figures.append(Figure(f"eot/{way}", f"EOT gradient ({EOT_DRAWS} draws), noise injection BasicNet, {count} "
                              f"images: {way}", "ms", [1000 * s for s in seconds]))
    return figures


# -- 1b'. The denoiser's passes: an input gradient through DnCNN → BasicNet -----------------------------------
def denoiser_gradient(sizes: Sizes, repeats: int, output_dir: str, device: torch.device) -> list[Figure]:
    """One input gradient of the cross-entropy through `defense=denoiser`'s deployed predictor (DnCNN 7 × 32 →
    BasicNet) on 128 images, what every attack step on that cell costs: robustlab's (as deployed: channels-last,
    each eval-mode BatchNorm folded into its convolution) against the same network and weights in plain PyTorch
    (NCHW, layer by layer), alternated."""
    from robustlab.attacks.gradient import input_gradient

    torch.manual_seed(0)
    cfg = compose_config([*sizes.dataset, "defense=denoiser"], output_dir)
    classifier = build_classifier(cfg).to(device)
    predictor = classifier.predictor().eval()
    denoiser, model = (copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()
                       for module in (classifier.defense.denoiser, classifier.model))

    def plain(images: torch.Tensor) -> torch.Tensor:
        return model(images - denoiser.residual(images))

    count = 128
    x = torch.rand(count, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size, device=device)
    y = torch.randint(0, cfg.dataset.num_classes, (count,), device=device)
    ours, theirs = [], []
    for _ in range(repeats):
        with deployed_precision(device):
            ours += timed(lambda: input_gradient(predictor, x, y), 1, device)
        theirs += timed(lambda: input_gradient(plain, x, y), 1, device)
    name = f"input gradient through the denoiser's predictor (DnCNN → BasicNet), {count} images"
    return [Figure("denoiser/robustlab", f"{name}: robustlab", "ms", [1000 * s for s in ours]),
            Figure("denoiser/plain PyTorch", f"{name}: plain PyTorch", "ms", [1000 * s for s in theirs])]


# -- 1c. AutoAttack: each stage of the standard cascade, robustlab's against torchattacks' -------------------
SECTIONS = {"pgd", "eot", "denoiser", "autoattack", "l1", "epoch", "step", "memory"}  # --only's choices
AA_STAGES = ("apgd_ce", "apgd_t", "fab_t", "square")
AA_REPEATS = 1  # a full-size stage takes up to minutes: each is run once


def adversarially_trained(sizes: Sizes, output_dir: str, device: torch.device):
    """BasicNet after `sizes.aa_epochs` epochs of PGD-7 adversarial training (`defense=adv_train`, the real
    config path), its deployed predictor, a reference copy as a user builds it, the first `sizes.aa_images` test
    images it classifies right, and the config."""
    limit = [] if sizes.train_batches is None else [f"trainer.limit_train_batches={sizes.train_batches}"]
    cfg = compose_config([*sizes.dataset, "defense=adv_train", f"trainer.max_epochs={sizes.aa_epochs}",
                          "trainer.limit_val_batches=0", *QUIET, *limit], output_dir)
    datamodule = build_datamodule(cfg.dataset)
    torch.manual_seed(0)
    classifier = build_classifier(cfg)
    build_trainer(cfg).fit(classifier, datamodule=datamodule)
    classifier = classifier.to(device)
    predictor = classifier.predictor().eval()
    reference = copy.deepcopy(classifier.model).to(memory_format=torch.contiguous_format).eval()
    images, labels = (tensor[:sizes.aa_images].to(device) for tensor in datamodule.test_set.tensors)
    with torch.no_grad():
        right = predictor(images).argmax(1) == labels
    return predictor, reference, images[right], labels[right], cfg


def autoattack_stages(sizes: Sizes, repeats: int, output_dir: str, device: torch.device) -> list[Figure]:
    """AutoAttack's standard cascade on an adversarially trained BasicNet, stage by stage on the images the stage
    gets in a cascade: APGD-CE on the images the model classifies right, the later stages on those that
    robustlab's APGD-CE left standing. robustlab's stage (as `attack=autoattack` runs it) against torchattacks' at
    the same settings (100 iterations, 9 targets, 5,000 Square queries), one right after the other, so that a
    drift in the machine's speed falls on both alike. Then the whole cascade: robustlab's, torchattacks' at
    AutoAttack's settings and its `AutoAttack` as shipped (10 iterations per gradient stage). Time per image and
    robust accuracy (of the images attacked) for each."""
    import torchattacks

    from robustlab.attacks import AutoAttack

    predictor, reference, x, y, cfg = adversarially_trained(sizes, output_dir, device)
    eps, classes, steps, queries = float(cfg.dataset.eps.linf), int(cfg.dataset.num_classes), *sizes.aa_budget
    ours = AutoAttack(eps, "linf", version="standard", steps=steps, square_queries=queries)
    theirs = {
        "apgd_ce": torchattacks.APGD(reference, norm="Linf", eps=eps, steps=steps, loss="ce", seed=0),
        "apgd_t": torchattacks.APGDT(reference, norm="Linf", eps=eps, steps=steps, n_classes=classes, seed=0),
        "fab_t": torchattacks.FAB(reference, norm="Linf", eps=eps, steps=steps, multi_targeted=True,
                                  n_classes=classes, seed=0),
        "square": torchattacks.Square(reference, norm="Linf", eps=eps, n_queries=queries, seed=0)}
    runs = [(stage, library, attack) for stage in AA_STAGES for library, attack in [
        ("robustlab", ours.cascades["standard"].attacks[stage]),
        ("torchattacks", lambda images, labels, attack=theirs[stage]: attack(images, labels))]]
    runs += [("cascade", "robustlab", ours),
             ("cascade", "torchattacks at AutoAttack's settings",
              lambda images, labels: torchattacks.MultiAttack(list(theirs.values()))(images, labels)),
             ("cascade", "torchattacks AutoAttack as shipped",
              lambda images, labels: torchattacks.AutoAttack(reference, norm="Linf", eps=eps, version="standard",
                                                             n_classes=classes, seed=0)(images, labels))]
    figures, standing = [], (x, y)  # `standing`: the later stages' images, set by robustlab's APGD-CE
    for stage, library, attack in tqdm(runs, desc=f"AutoAttack stages, {len(y)} images", leave=False):
        images, labels = standing if stage in AA_STAGES[1:] else (x, y)
        adversarial: list[torch.Tensor] = []

        def run(attack=attack, library=library, images=images, labels=labels, count=len(labels)) -> None:
            torch.manual_seed(0)
            batch = (images[:count], labels[:count])
            adversarial.append(attack(predictor, *batch) if library == "robustlab" else attack(*batch))

        run(count=min(8, len(labels)))  # warm-up on a few images: the first call of a shape pays for its kernels
        adversarial.clear()
        seconds = timed(run, repeats, device, warmup=0)
        with torch.no_grad():
            right = [predictor(found).argmax(1) == labels for found in adversarial]
        if (stage, library) == ("apgd_ce", "robustlab"):
            standing = (images[right[0]], labels[right[0]])
        given = "" if stage == "cascade" else (f" on the {len(labels)} images " +
                                                ("classified right" if stage == AA_STAGES[0] else "APGD-CE left"))
        name = f"AutoAttack {stage}{given}, {library}"
        figures.append(Figure(f"aa/{stage}/{library}", f"{name}: time", "ms/image",
                              [1000 * s / max(len(labels), 1) for s in seconds]))
        figures.append(Figure(f"aa-acc/{stage}/{library}", f"{name}: robust accuracy on the images attacked", "%",
                              [100 * r.float().mean().item() for r in right]))
    return figures


def l1_attack(sizes: Sizes, repeats: int, output_dir: str, device: torch.device) -> list[Figure]:
    """APGD-CE under L1 at the dataset's ε₁ (AutoAttack's iterations) on the adversarially trained BasicNet of the
    AutoAttack section, on the images it classifies right: robustlab's (`attack=apgd_l1`) against adv-lib's
    `apgd(norm=1)` at the same settings, one right after the other. Time per image and robust accuracy."""
    from adv_lib.attacks.auto_pgd import apgd

    from robustlab.attacks import APGD

    predictor, reference, x, y, cfg = adversarially_trained(sizes, output_dir, device)
    eps, steps = float(cfg.dataset.eps.l1), sizes.aa_budget[0]
    ours = APGD(eps, "l1", steps=steps)
    runs = {"robustlab": lambda images, labels: ours(predictor, images, labels),
            "adv-lib": lambda images, labels: apgd(reference, images, labels, eps=eps, norm=1, n_iter=steps)}
    figures = []
    for library, attack in runs.items():
        found: list[torch.Tensor] = []

        def run(attack=attack, count=len(y)) -> None:
            torch.manual_seed(0)
            found.append(attack(x[:count], y[:count]))

        run(count=min(8, len(y)))  # warm-up on a few images
        found.clear()
        seconds = timed(run, repeats, device, warmup=0)
        with torch.no_grad():
            standing = [(predictor(images).argmax(1) == y).float().mean().item() for images in found]
        name = f"APGD-CE L1 (ε = {eps:g}, {steps} iterations) on {len(y)} images, {library}"
        figures.append(Figure(f"l1/{library}", f"{name}: time", "ms/image", [1000 * s / len(y) for s in seconds]))
        figures.append(Figure(f"l1-acc/{library}", f"{name}: robust accuracy", "%", [100 * a for a in standing]))
    return figures


# -- 2. adversarial training: whole epochs, and the framework's cost per step ---------------------------
TRAINING = ["defense=adv_train", "trainer.max_epochs=1", "trainer.limit_val_batches=0"]
QUIET = ["logger=none", "~callbacks.model_checkpoint", "+trainer.enable_checkpointing=false", "~callbacks.progress_bar",
         "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
WARM_STEPS = 10  # steps left out of a per-step time: the first ones pay for allocations and caches


def plain_adversarial_training(cfg, datamodule, device: torch.device, batches: int | None) -> float:
    """What a user writes by hand: the same data (on the device), model, PGD-7 and optimizer, in fp32, one epoch
    (or `batches` steps). Returns the seconds per step after the first `WARM_STEPS`."""
    torch.manual_seed(0)
    model = build_classifier(cfg).model.to(device, memory_format=torch.contiguous_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    eps, steps = cfg.defense.attack.eps, cfg.defense.attack.steps
    alpha = 2.5 * eps / steps
    images, labels = (tensor.to(device) for tensor in datamodule.train_set.tensors)
    order = torch.randperm(len(labels), device=device)
    started, index = time.perf_counter(), 0
    for index, batch in enumerate(order.split(datamodule.batch_size)):
        if batches is not None and index == batches:
            break
        if index == WARM_STEPS:
            started = synchronized(device)
        x, y = images[batch], labels[batch]
        delta = torch.empty_like(x).uniform_(-eps, eps)
        x_adv = (x + delta).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = x_adv.detach() + alpha * grad.sign()
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
        optimizer.zero_grad()
        F.cross_entropy(model(x_adv), y).backward()
        optimizer.step()
    return (synchronized(device) - started) / max(index - WARM_STEPS, 1)


def synchronized(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StepClock(pl.Callback):
    """The seconds per training step after the first `WARM_STEPS`, as Lightning runs them."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == WARM_STEPS:
            self.started = synchronized(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.ended, self.steps = synchronized(pl_module.device), batch_idx + 1 - WARM_STEPS

    @property
    def seconds_per_step(self) -> float:
        return (self.ended - self.started) / max(self.steps, 1)


def training_epoch(sizes: Sizes, repeats: int, output_dir: str, device: torch.device) -> list[Figure]:
    limit = [] if sizes.train_batches is None else [f"trainer.limit_train_batches={sizes.train_batches}"]
    trainer = ["trainer=gpu"] if device.type == "cuda" else []
    models = model_overrides(sizes) if device.type == "cuda" else model_overrides(sizes)[:1]
    figures = []
    for model_name, overrides in models:
        cfg = compose_config([*sizes.dataset, *overrides, *TRAINING, *trainer, *QUIET, *limit], output_dir)
        datamodule = build_datamodule(cfg.dataset)

        def robustlab_epoch() -> None:
            torch.manual_seed(0)
            classifier, trainer = build_classifier(cfg), build_trainer(cfg)
            trainer.fit(classifier, datamodule=datamodule)

        def plain_epoch() -> None:
            plain_adversarial_training(cfg, datamodule, device, sizes.train_batches)

        for name, run in tqdm([("robustlab", robustlab_epoch), ("plain PyTorch loop", plain_epoch)],
                              desc=f"PGD-7 training epoch, {model_name}", leave=False):
            figures.append(Figure(f"epoch/{model_name}/{name}",
                                  f"PGD-7 adversarial-training epoch, {model_name}: {name}", "s",
                                  timed(run, repeats, device, warmup=0 if device.type == "cpu" else 1)))
    return figures


def step_overhead(sizes: Sizes, repeats: int, output_dir: str, device: torch.device) -> list[Figure]:
    """One PGD-7 adversarial-training step of a one-linear-layer model (`model=linear`: compute is negligible,
    so the time is the framework's), through `python train.py`'s config with its default progress bar,
    TensorBoard logging and checkpointing, against the plain loop; alternated, per step after the first ten."""
    limit = [] if sizes.train_batches is None else [f"trainer.limit_train_batches={WARM_STEPS + sizes.train_batches}"]
    trainer = ["trainer=gpu"] if device.type == "cuda" else []
    cfg = compose_config([*sizes.dataset, "model=linear", *TRAINING, *trainer, *limit,
                          f"paths.output_root={output_dir}"],
                         output_dir)
    datamodule = build_datamodule(cfg.dataset)
    batches = None if sizes.train_batches is None else WARM_STEPS + sizes.train_batches
    ours, plain = [], []
    for _ in tqdm(range(repeats), desc="per-step overhead, linear model", leave=False):
        torch.manual_seed(0)
        clock = StepClock()
        classifier, lightning = build_classifier(cfg), build_trainer(cfg)
        lightning.callbacks.append(clock)
        lightning.fit(classifier, datamodule=datamodule)
        ours.append(1000 * clock.seconds_per_step)
        plain.append(1000 * plain_adversarial_training(cfg, datamodule, device, batches))
    return [Figure("step/robustlab", "PGD-7 adversarial-training step, linear model: robustlab (train.py defaults)",
                   "ms", ours),
            Figure("step/plain PyTorch loop", "PGD-7 adversarial-training step, linear model: plain PyTorch loop", "ms",
                   plain)]


# -- 3. evaluation memory ---------------------------------------------------------------------------------
def measure_evaluation_memory(count: int, dataset: list[str], output_dir: str, device: torch.device) -> float:
    """In this (fresh) process: evaluate BasicNet with PGD-10 on `count` test images; peak memory in MiB."""
    trainer = ["trainer=gpu"] if device.type == "cuda" else []
    cfg = compose_config([*dataset, *trainer, "eval=quick", f"eval.n_samples={count}", "attack.steps=10",
                          "logger=none", "callbacks=evaluate", "~callbacks.progress_bar",
                          "+trainer.enable_progress_bar=false"], output_dir)
    datamodule = build_datamodule(cfg.dataset)
    classifier = build_classifier(cfg)
    results = build_evaluation(cfg).run(classifier.model, classifier.defense, datamodule, build_runtime(cfg))
    assert list(results.n_eval.values()) == [count]
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the current program only; getrusage's
    maxrss would also count the forked parent's pages from before `exec`."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def evaluation_memory(sizes: Sizes, repeats: int, device: torch.device) -> list[Figure]:
    figures = []
    what = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    for count in tqdm(sizes.eval_counts, desc="evaluation memory", leave=False):
        samples = []
        for _ in range(repeats):
            command = [sys.executable, __file__, "--device", device.type, "--evaluation-memory", str(count),
                       *sizes.dataset]
            result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            samples.append(float(result.stdout.strip().splitlines()[-1]))
        figures.append(Figure(f"memory/{count}", f"evaluation {what}, PGD-10 on {count:,} test images", "MiB",
                              samples))
    return figures


# -- 4. the cold matrix ----------------------------------------------------------------------------------
def cold_matrix(sizes: Sizes, device: torch.device) -> list[Figure]:
    """`python train.py sweep=matrix` from an empty output directory: every defense trained and evaluated."""
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none",
            "eval.n_samples=16", "eval.audit.n_samples=16", "eval.audit.square_queries=20",
            "eval.attacks.apgd_ce.steps=5", "eval.attacks.square.queries=20", "eval.accuracy_draws=2",
            "eval.attacks.a3.steps=5", "eval.attacks.a3.target_steps=5",
            "eval.certify.n_samples=16", "eval.certify.n=100"] if sizes.train_batches is not None else []
    trainer = ["trainer=gpu"] if device.type == "cuda" else []
    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, str(ROOT / "train.py"), "sweep=matrix", *sizes.dataset, *trainer, *tiny,
                   f"paths.output_root={root}"]
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seconds = time.perf_counter() - started
    return [Figure("matrix",
                   "cold `python train.py sweep=matrix" + (" trainer=gpu" if trainer else "") + "`, wall time",
                   "s", [seconds])]


# -- report ----------------------------------------------------------------------------------------------
@dataclass
class Ratio:
    name: str
    value: float
    target: tuple[str, float] | None  # ("≥", 1.3): what the value should reach; None: measured, no target

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        operator, threshold = self.target
        return self.value >= threshold if operator == "≥" else self.value <= threshold

    def target_text(self) -> str:
        return "measured" if self.target is None else f"{self.target[0]} {self.target[1]:g}"

    def verdict(self) -> str:
        return {None: "", True: "met", False: "NOT met"}[self.met]


def ratios(figures: dict[str, Figure], sizes: Sizes, device: torch.device) -> list[Ratio]:
    def find(key: str) -> float:
        if key not in figures:
            raise KeyError(f"bench: no figure {key!r} was measured (measured: {', '.join(figures)})")
        return figures[key].median

    gpu = device.type == "cuda"
    wrn = f"WRN-{sizes.wrn[0]}-{sizes.wrn[1]}"
    lines = []
    for model in ["BasicNet", wrn]:
        ours = find(f"pgd/{model}/robustlab")
        lines.append(Ratio(f"PGD throughput robustlab / torchattacks, {model}",
                           ours / find(f"pgd/{model}/torchattacks"),
                           ("≥", 1.5) if gpu else ("≥", 1.3) if model == "BasicNet" else None))
        lines.append(Ratio(f"PGD throughput robustlab / ART, {model}", ours / find(f"pgd/{model}/ART"),
                           ("≥", 2.0) if model == "BasicNet" and not gpu else None))
    lines.append(Ratio(f"EOT gradient ({EOT_DRAWS} draws) batched / one pass per draw",
                       find("eot/batched draws") / find("eot/one pass per draw"), ("≤", 1.0)))
    lines.append(Ratio("input gradient through the denoiser's predictor robustlab / plain PyTorch",
                       find("denoiser/robustlab") / find("denoiser/plain PyTorch"), ("≤", 1.0)))
    for stage, peer in [*((stage, "torchattacks") for stage in AA_STAGES),
                        ("cascade", "torchattacks at AutoAttack's settings"),
                        ("cascade", "torchattacks AutoAttack as shipped")]:
        what = f"AutoAttack {stage}" + ("" if stage == "cascade" else " (its images in the cascade)")
        shipped = peer.endswith("as shipped")  # 10 iterations per gradient stage: not the same attack
        lines.append(Ratio(f"{what}: time robustlab / {peer}",
                           find(f"aa/{stage}/robustlab") / find(f"aa/{stage}/{peer}"), None if shipped else ("≤", 1.0)))
        lines.append(Ratio(f"{what}: robust accuracy robustlab − {peer} (points)",
                           find(f"aa-acc/{stage}/robustlab") - find(f"aa-acc/{stage}/{peer}"),
                           None if shipped else ("≤", 0.0)))
    lines.append(Ratio("APGD-CE L1: time robustlab / adv-lib", find("l1/robustlab") / find("l1/adv-lib"), ("≤", 1.0)))
    lines.append(Ratio("APGD-CE L1: robust accuracy robustlab − adv-lib (points)",
                       find("l1-acc/robustlab") - find("l1-acc/adv-lib"), ("≤", 0.0)))
    lines.append(Ratio("PGD throughput compile=true / compile=false, BasicNet",
                       find("pgd/BasicNet/robustlab compile=true") / find("pgd/BasicNet/robustlab"), None))
    for model in [name for name, _ in model_overrides(sizes) if f"epoch/{name}/robustlab" in figures]:
        lines.append(Ratio(f"adversarial-training epoch robustlab / plain loop, {model}",
                           find(f"epoch/{model}/robustlab") / find(f"epoch/{model}/plain PyTorch loop"),
                           ("≤", 0.5) if gpu else ("≤", 1.10)))
    lines.append(Ratio("adversarial-training step robustlab / plain loop, linear model (framework overhead)",
                       find("step/robustlab") / find("step/plain PyTorch loop"), ("≤", 1.10)))
    small, large = sizes.eval_counts
    lines.append(Ratio(f"evaluation peak memory {large:,} / {small:,} images",
                       find(f"memory/{large}") / find(f"memory/{small}"), ("≤", 1.2)))
    return lines


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


DEVICE_TITLES = {"cpu": "CPU", "cuda": "GPU"}


def device_section(device: str, entry: dict | None) -> list[str]:
    title = f"## {DEVICE_TITLES[device]}"
    if entry is None:
        return [title, "", "Not measured yet: no GPU has been available to a session that ran "
                           "`python scripts/bench.py --device cuda --matrix`. No GPU figure is estimated.", ""]
    info = entry["machine"]
    where = f"{info['gpu']}; host CPU {info['cpu']}" if info["gpu"] else \
        f"{info['cpu']}, {info['torch_threads']} torch threads"
    figures = entry["figures"]
    repetitions = max(len(figure["samples"]) for figure in figures.values())
    return [
        title, "",
        f"Measured by `{entry['command']}` (one run, up to {repetitions} repetitions per figure; median, min, max) "
        f"on {where}, PyTorch {info['torch']}, Python {info['python']}."
        + (f" {entry['note']}" if "note" in entry else ""),
        "",
        "| figure | median | min | max | unit |", "| --- | ---: | ---: | ---: | --- |",
        *[Figure(name, name, figure["unit"], figure["samples"]).row() for name, figure in figures.items()], "",
        "| ratio | value | target | met |", "| --- | ---: | --- | --- |",
        *[f"| {name} | {value:.2f} | {entry['targets'].get(name, '')} | {entry.get('met', {}).get(name) or ''} |"
          for name, value in entry["ratios"].items()],
        "",
    ]


def write_markdown(path: Path, results: dict) -> None:
    lines = ["# Benchmarks", ""]
    for device in DEVICE_TITLES:
        lines += device_section(device, results.get(device))
    lines += [
        "The competitors get the model in PyTorch's default (NCHW) memory format and fp32, as a user builds it;",
        "robustlab deploys it channels-last (`performance.channels_last=true`), attacks eval-mode CPU batches in",
        "chunks of 256 images (`robustlab/attacks/batching.py`), and on a GPU runs under the bf16 autocast of",
        "`trainer=gpu` with losses in fp32. Those choices are where its speed comes from.", "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--matrix", action="store_true", help="also time a cold `python train.py sweep=matrix`")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks.json")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="measure only these sections (repeatable): their figures are printed, nothing is written")
    parser.add_argument("--evaluation-memory", type=int, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU on this machine")
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as output_dir:
        if args.evaluation_memory is not None:  # the child process of `evaluation_memory`
            print(measure_evaluation_memory(args.evaluation_memory, rest, output_dir, device))
            return
        sizes = Sizes.tiny() if args.tiny else Sizes.full()
        figures = []
        sections = {
            "pgd": lambda: attack_throughput(sizes, args.repeats, output_dir, device),
            "eot": lambda: eot_gradient(sizes, args.repeats, output_dir, device),
            "denoiser": lambda: denoiser_gradient(sizes, max(args.repeats, 5), output_dir, device),
            "autoattack": lambda: autoattack_stages(sizes, AA_REPEATS, output_dir, device),
            "l1": lambda: l1_attack(sizes, args.repeats, output_dir, device),
            "epoch": lambda: training_epoch(sizes, args.repeats, output_dir, device),
            "step": lambda: step_overhead(sizes, args.repeats, output_dir, device),
            "memory": lambda: evaluation_memory(sizes, args.repeats, device),
            **({"matrix": lambda: cold_matrix(sizes, device)} if args.matrix else {})}
        assert set(sections) <= SECTIONS | {"matrix"}
        for name, measure in sections.items():
            if args.only and name not in args.only:
                continue
            measured = measure()
            for figure in measured:  # as soon as measured: a run stopped part way still says what it found
                print(f"measured {figure.name}: {figure.median:,.1f} {figure.unit}", flush=True)
            figures += measured
    if args.only:  # a part of the run: no ratios (they need every figure), BENCHMARKS.md left as it is
        return
    ratio_lines = ratios({figure.key: figure for figure in figures}, sizes, device)
    command = "python scripts/bench.py" + (" --tiny" if args.tiny else "") + \
              (f" --device {args.device}" if args.device != "cpu" else "") + (" --matrix" if args.matrix else "") + \
              (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    for figure in figures:
        print(f"{figure.name}: {figure.median:,.1f} {figure.unit} (min {min(figure.samples):,.1f}, "
              f"max {max(figure.samples):,.1f})")
    for ratio in ratio_lines:
        print(f"ratio  {ratio.name}: {ratio.value:.2f}  (target {ratio.target_text()}"
              + (f": {ratio.verdict()})" if ratio.met is not None else ")"))
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    results[args.device] = {"command": command, "machine": machine(device),
                            "figures": {f.name: {"unit": f.unit, "samples": f.samples, "median": f.median}
                                        for f in figures},
                            "ratios": {ratio.name: ratio.value for ratio in ratio_lines},
                            "targets": {ratio.name: ratio.target_text() for ratio in ratio_lines},
                            "met": {ratio.name: ratio.verdict() for ratio in ratio_lines}}
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(args.markdown, results)
    print(f"wrote {args.markdown} and {args.json}")


if __name__ == "__main__":
    main()
