"""robustlab's speed and memory, measured side by side with what users would pick instead.

    python scripts/bench.py            # the full run (about 15 minutes on 2 CPU cores); writes BENCHMARKS.md
    python scripts/bench.py --tiny     # seconds, tiny sizes: keeps the script from rotting (tests run it)

In one process, on the same model weights, batch and machine:
  1. PGD-L∞ (10 steps) throughput: robustlab vs torchattacks.PGD vs ART's ProjectedGradientDescentPyTorch,
     for BasicNet and WRN-16-4 on Fashion-MNIST shapes; robustlab with `performance.compile=true` too.
  2. One PGD-7 adversarial-training epoch: robustlab (Lightning, the real config path) vs a plain PyTorch loop.
  3. Evaluation peak memory (RSS) for 1,000 and 10,000 test images, each in a fresh process.
Each figure is the median of --repeats runs (min and max beside it); ratios come last.
The competitors get the model as a user would build it (PyTorch's default memory format); robustlab gets
the model as its pipeline deploys it (`performance.*` defaults of conf/train.yaml).
"""

from __future__ import annotations

import argparse
import copy
import json
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
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from robustlab.attacks import PGD  # noqa: E402
from robustlab.experiment import build_classifier, build_datamodule, build_trainer  # noqa: E402
from robustlab.evaluation.runner import evaluate  # noqa: E402


@dataclass
class Sizes:
    dataset: list[str]
    batch: int
    pgd_steps: int
    wrn: tuple[int, int]
    train_batches: int | None  # None: a whole epoch
    eval_counts: tuple[int, int]

    @classmethod
    def full(cls) -> "Sizes":
        return cls(["dataset=fashion_mnist"], 1000, 10, (16, 4), None, (1000, 10000))

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(["dataset=synthetic", "dataset.datamodule.num_test=400"], 64, 2, (10, 1), 5, (100, 400))


@dataclass
class Figure:
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def row(self) -> str:
        return f"| {self.name} | {self.median:,.1f} | {min(self.samples):,.1f} | {max(self.samples):,.1f} | {self.unit} |"


def compose_config(overrides: list[str], output_dir: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.root_dir={ROOT}", f"paths.output_dir={output_dir}", *overrides])


def timed(function, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


# -- 1. attack throughput ---------------------------------------------------------------------------------
def attack_throughput(sizes: Sizes, repeats: int, output_dir: str) -> list[Figure]:
    import torchattacks
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    eps, step = 0.1, 0.01
    figures = []
    for model_name, model_overrides in [("BasicNet", ["model=basic_net"]),
                                         (f"WRN-{sizes.wrn[0]}-{sizes.wrn[1]}",
                                          ["model=wide_resnet", f"model.depth={sizes.wrn[0]}",
                                           f"model.widen_factor={sizes.wrn[1]}"])]:
        torch.manual_seed(0)
        cfg = compose_config([*sizes.dataset, *model_overrides, "defense=none"], output_dir)
        classifier = build_classifier(cfg)
        reference = copy.deepcopy(classifier.model).to(memory_format=torch.contiguous_format).eval()
        predictor = classifier.predictor().eval()
        shape = (sizes.batch, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
        x, y = torch.rand(shape), torch.randint(0, cfg.dataset.num_classes, (sizes.batch,))

        ours = PGD(eps=eps, norm="linf", steps=sizes.pgd_steps, step_size=step)
        theirs = torchattacks.PGD(reference, eps=eps, alpha=step, steps=sizes.pgd_steps, random_start=True)
        art_model = PyTorchClassifier(model=reference, loss=torch.nn.CrossEntropyLoss(), input_shape=shape[1:],
                                      nb_classes=cfg.dataset.num_classes, clip_values=(0.0, 1.0))
        art = ProjectedGradientDescentPyTorch(art_model, norm=np.inf, eps=eps, eps_step=step,
                                              max_iter=sizes.pgd_steps, num_random_init=1,
                                              batch_size=sizes.batch, verbose=False)
        x_np, y_np = x.numpy(), y.numpy()
        contenders = [("robustlab", lambda: ours(predictor, x, y)),
                      ("torchattacks", lambda: theirs(x, y)),
                      ("ART", lambda: art.generate(x_np, y_np))]
        if model_name == "BasicNet":
            compiled = build_classifier(compose_config([*sizes.dataset, "performance.compile=true"], output_dir))
            compiled_predictor = compiled.predictor().eval()
            contenders.insert(1, ("robustlab compile=true", lambda: ours(compiled_predictor, x, y)))
        for library, run in tqdm(contenders, desc=f"PGD-{sizes.pgd_steps} on {model_name}", leave=False):
            seconds = timed(run, repeats)
            figures.append(Figure(f"PGD-{sizes.pgd_steps} L∞ throughput, {model_name}, batch {sizes.batch}: "
                                  f"{library}", "images/s", [sizes.batch / s for s in seconds]))
    return figures


# -- 2. adversarial-training epoch ------------------------------------------------------------------------
def training_epoch(sizes: Sizes, repeats: int, output_dir: str) -> list[Figure]:
    limit = [] if sizes.train_batches is None else [f"trainer.limit_train_batches={sizes.train_batches}"]
    overrides = [*sizes.dataset, "defense=adv_train", "trainer.max_epochs=1", "trainer.limit_val_batches=0",
                 "logger=none", "~callbacks.model_checkpoint", "+trainer.enable_checkpointing=false",
                 "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                 *limit]
    cfg = compose_config(overrides, output_dir)
    datamodule = build_datamodule(cfg.dataset)

    def robustlab_epoch() -> None:
        torch.manual_seed(0)
        classifier, trainer = build_classifier(cfg), build_trainer(cfg)
        trainer.fit(classifier, datamodule=datamodule)

    def plain_epoch() -> None:
        """What a user writes by hand: the same data, model, PGD-7 and optimizer, in a bare loop."""
        torch.manual_seed(0)
        model = build_classifier(cfg).model.to(memory_format=torch.contiguous_format).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
        eps, steps = cfg.defense.attack.eps, cfg.defense.attack.steps
        alpha = 2.5 * eps / steps
        for index, (x, y) in enumerate(datamodule.train_dataloader()):
            if sizes.train_batches is not None and index == sizes.train_batches:
                break
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

    figures = []
    for name, run in tqdm([("robustlab", robustlab_epoch), ("plain PyTorch loop", plain_epoch)],
                          desc="PGD-7 training epoch", leave=False):
        figures.append(Figure(f"PGD-7 adversarial-training epoch, BasicNet: {name}", "s",
                              timed(run, repeats, warmup=0)))
    return figures


# -- 3. evaluation memory ---------------------------------------------------------------------------------
def measure_evaluation_memory(count: int, dataset: list[str], output_dir: str) -> float:
    """In this (fresh) process: evaluate BasicNet with PGD-10 on `count` test images; peak RSS in MiB."""
    cfg = compose_config([*dataset, "eval=quick", f"eval.n_samples={count}", "attack.steps=10", "logger=none",
                          "callbacks=evaluate", "~callbacks.progress_bar",
                          "+trainer.enable_progress_bar=false"], output_dir)
    datamodule = build_datamodule(cfg.dataset)
    classifier = build_classifier(cfg)
    evaluate(build_trainer(cfg), classifier, datamodule, checkpoint=None)
    assert list(classifier.results["n_eval"].values()) == [count]
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the current program only; getrusage's
    maxrss would also count the forked parent's pages from before `exec`."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def evaluation_memory(sizes: Sizes, repeats: int) -> list[Figure]:
    figures = []
    for count in tqdm(sizes.eval_counts, desc="evaluation memory", leave=False):
        samples = []
        for _ in range(repeats):
            command = [sys.executable, __file__, "--evaluation-memory", str(count), *sizes.dataset]
            result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            samples.append(float(result.stdout.strip().splitlines()[-1]))
        figures.append(Figure(f"evaluation peak RSS, PGD-10 on {count:,} test images", "MiB", samples))
    return figures


# -- report ----------------------------------------------------------------------------------------------
def ratios(figures: dict[str, Figure], sizes: Sizes) -> list[tuple[str, float, str]]:
    def find(fragment: str) -> float:
        return next(f.median for name, f in figures.items() if name.endswith(fragment))

    lines = []
    for model in ["BasicNet", f"WRN-{sizes.wrn[0]}-{sizes.wrn[1]}"]:
        ours = find(f"{model}, batch {sizes.batch}: robustlab")
        lines.append((f"PGD throughput robustlab / torchattacks, {model}",
                      ours / find(f"{model}, batch {sizes.batch}: torchattacks"), "≥ 1.3 on BasicNet"))
        lines.append((f"PGD throughput robustlab / ART, {model}",
                      ours / find(f"{model}, batch {sizes.batch}: ART"), "≥ 2 on BasicNet"))
    lines.append(("PGD throughput compile=true / compile=false, BasicNet",
                  find("robustlab compile=true") / find(f"BasicNet, batch {sizes.batch}: robustlab"), "measured"))
    lines.append(("adversarial-training epoch robustlab / plain loop",
                  find("BasicNet: robustlab") / find("BasicNet: plain PyTorch loop"), "≤ 1.10"))
    small, large = sizes.eval_counts
    lines.append((f"evaluation peak RSS {large:,} / {small:,} images",
                  find(f"{large:,} test images") / find(f"{small:,} test images"), "≤ 1.2"))
    return lines


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_markdown(path: Path, figures: list[Figure], ratio_lines, info: dict, command: str) -> None:
    gpu = info["gpu"] or "none on the measuring machine: GPU figures (WRN-16-4 PGD-AT epoch time, attack " \
                         "throughput with bf16 autocast) are not measured here"
    lines = [
        "# Benchmarks", "",
        f"Measured by `{command}` (one run, {len(figures[0].samples)} repetitions per figure; median, min, max).", "",
        f"Machine: {info['cpu']}, {info['torch_threads']} torch threads, PyTorch {info['torch']}, "
        f"Python {info['python']}. GPU: {gpu}.", "",
        "| figure | median | min | max | unit |", "| --- | ---: | ---: | ---: | --- |",
        *[figure.row() for figure in figures], "",
        "## Ratios", "", "| ratio | value | target |", "| --- | ---: | --- |",
        *[f"| {name} | {value:.2f} | {target} |" for name, value, target in ratio_lines], "",
        "The competitors get the model in PyTorch's default (NCHW) memory format, as a user builds it; robustlab",
        "deploys it channels-last (`performance.channels_last=true`) and attacks eval-mode CPU batches in chunks",
        "of 256 images (`robustlab/attacks/batching.py`). Those two choices are where its speed comes from.", "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks.json")
    parser.add_argument("--evaluation-memory", type=int, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as output_dir:
        if args.evaluation_memory is not None:  # the child process of `evaluation_memory`
            print(measure_evaluation_memory(args.evaluation_memory, rest, output_dir))
            return
        sizes = Sizes.tiny() if args.tiny else Sizes.full()
        figures = [*attack_throughput(sizes, args.repeats, output_dir),
                   *training_epoch(sizes, args.repeats, output_dir),
                   *evaluation_memory(sizes, args.repeats)]
    by_name = {figure.name: figure for figure in figures}
    ratio_lines = ratios(by_name, sizes)
    info = machine()
    command = "python scripts/bench.py" + (" --tiny" if args.tiny else "") + \
              (f" --repeats {args.repeats}" if args.repeats != 3 else "")
    for figure in figures:
        print(f"{figure.name}: {figure.median:,.1f} {figure.unit} (min {min(figure.samples):,.1f}, "
              f"max {max(figure.samples):,.1f})")
    for name, value, target in ratio_lines:
        print(f"ratio  {name}: {value:.2f}  (target {target})")
    write_markdown(args.markdown, figures, ratio_lines, info, command)
    args.json.write_text(json.dumps({"command": command, "machine": info,
                                     "figures": {f.name: {"unit": f.unit, "samples": f.samples, "median": f.median}
                                                 for f in figures},
                                     "ratios": {name: value for name, value, _ in ratio_lines}}, indent=2) + "\n")
    print(f"wrote {args.markdown} and {args.json}")


if __name__ == "__main__":
    main()
