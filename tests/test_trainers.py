"""Every trainer config runs as a user types it: `trainer=gpu` and `trainer=ddp` in their CPU forms
(`trainer.accelerator=cpu`; DDP over gloo with 2 processes), single runs and multiruns, as subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_script
from torch.utils.data import BatchSampler, RandomSampler, TensorDataset

from robustlab.classifier import RobustClassifier
from robustlab.configuration import gpu_for_job
from robustlab.data.base import ShardedBatches, _batches
from robustlab.defenses import AdversarialTraining
from robustlab.errors import TrainingDiverged
from robustlab.models import BasicNet

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_gpu_trainer_single_run_in_its_cpu_form(tmp_path):
    """`python train.py trainer=gpu` has no job number outside a multirun; it once crashed on that."""
    result = run_script("train.py", *TINY, "trainer=gpu", "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}",
                        output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert metrics_of(tmp_path)["n_clean"] == 256
    assert "Using bfloat16 Automatic Mixed Precision" in result.stdout + result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_gpu_trainer_without_a_gpu_is_refused_before_training(trainer, tmp_path):
    result = run_script("train.py", *TINY, f"trainer={trainer}", f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "trainer.accelerator='gpu'" in result.stderr and "trainer=default" in result.stderr
    assert not (tmp_path / "outputs" / "checkpoints").exists()


def test_gpu_trainer_multirun_with_the_local_gpus_launcher(tmp_path):
    result = run_script("train.py", "-m", *TINY, "trainer.max_epochs=1", "trainer=gpu", "trainer.accelerator=cpu",
                        "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2", "attack=fgsm,pgd_l2",
                        output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((tmp_path / "runs" / "synthetic" / "basic_net" / "none").glob("*/metrics.json"))
    assert [json.loads(path.read_text())["attack"] for path in runs] == ["fgsm", "pgd_l2"]


def test_gpu_for_job_gives_a_single_run_one_gpu_and_sweep_jobs_a_gpu_each(monkeypatch):
    """Job k of a multirun on GPU k mod (number of GPUs); a single run (no job number) and a one-GPU machine
    get `devices: 1`."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [gpu_for_job(job) for job in (0, 1, 5, "6")] == [[0], [1], [1], [2]]
    assert gpu_for_job(None) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_for_job(5) == 1


def test_ddp_trains_once_and_evaluates_every_image_once(tmp_path):
    result = run_script("train.py", *TINY, *DDP_CPU, f"hydra.run.dir={tmp_path}", output_root=tmp_path, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = metrics_of(tmp_path)
    assert metrics["n_clean"] == 256 and metrics["n_eval"] == 64  # no padded duplicates, nothing missing
    assert metrics["epochs"] == 2
    checkpoint_dir = Path(metrics["checkpoint"]).parent
    assert json.loads((checkpoint_dir / "trained.json").read_text())["checkpoint"] == metrics["checkpoint"]
    assert "All distributed processes registered. Starting with 2 processes" in result.stdout + result.stderr
    assert result.stdout.count("metrics: ") == 1  # process 0 alone writes and reports
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow  # 47 s; the default suite runs DDP over gloo in the test above
def test_ddp_evaluation_equals_a_single_device_evaluation(tmp_path):
    """Same checkpoint, same images, same precision: 2 gloo processes give exactly the single-process numbers,
    per attack, worst case and curves, even when the passes' batches do not divide evenly between them."""
    train_dir = tmp_path / "train"
    trained = run_script("train.py", *TINY, "logger=none", f"hydra.run.dir={train_dir}", output_root=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = metrics_of(train_dir)["checkpoint"]
    evaluation = ["dataset=synthetic", "dataset.datamodule.eval_batch_size=48", "eval.n_samples=100",
                  "dataset.eps.linf=0.02", "dataset.eps.l2=0.2", "logger=none"]  # robust accuracy neither 0 nor 1
    numbers = {}
    for name, trainer in [("single", ["trainer=default"]), ("ddp", [*DDP_CPU, "trainer.precision=32-true"])]:
        run_dir = tmp_path / name
        result = run_script("evaluate.py", f"ckpt_path={checkpoint}", *evaluation, *trainer,
                            f"hydra.run.dir={run_dir}", output_root=tmp_path, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        numbers[name] = metrics_of(run_dir)
    single, ddp = numbers["single"], numbers["ddp"]
    assert 0.05 < single["robust_acc"]["pgd_linf"] < single["clean_acc"]  # a comparison that can tell
    for key in ("clean_acc", "n_clean", "n_eval", "robust_acc", "curves"):
        assert ddp[key] == single[key], key
    assert single["n_eval"] == 100 and single["n_clean"] == 256


@pytest.mark.slow  # 37 s; the default suite runs DDP above and a trainer=gpu multirun in its CPU form
def test_ddp_inside_a_multirun_runs_each_cell_once(tmp_path):
    """Lightning starts DDP process 1 by re-running the command; in a multirun that must be the cell alone."""
    result = run_script("train.py", "-m", *TINY, "trainer.max_epochs=1", *DDP_CPU, "attack=fgsm,pgd_l2",
                        output_root=tmp_path, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    runs = sorted((tmp_path / "runs" / "synthetic" / "basic_net" / "none").glob("*/metrics.json"))
    assert [json.loads(path.read_text())["attack"] for path in runs] == ["fgsm", "pgd_l2"]
    assert len(list((tmp_path / "checkpoints").rglob("stage*/trained.json"))) == 1  # the second cell reused it


# -- the sharding itself ----------------------------------------------------------------------------------
def test_evaluation_shards_cover_every_image_exactly_once():
    shards = [list(ShardedBatches(100, 48, shuffle=False, rank=rank, world_size=2)) for rank in range(2)]
    indices = sorted(i for shard in shards for batch in shard for i in batch.tolist())
    assert indices == list(range(100))
    assert [len(shard) for shard in shards] == [2, 1]


def test_training_shards_share_one_permutation_and_take_equal_steps():
    shards = [ShardedBatches(100, 16, shuffle=True, rank=rank, world_size=2) for rank in range(2)]
    for shard in shards:
        shard.set_epoch(3)
    batches = [[batch.tolist() for batch in shard] for shard in shards]
    assert len(batches[0]) == len(batches[1]) == 4  # 7 batches padded to 8
    seen = {i for shard in batches for batch in shard for i in batch}
    assert seen == set(range(100))
    shards[0].set_epoch(4)
    assert [batch.tolist() for batch in shards[0]] != batches[0]  # a new order every epoch



def test_more_processes_than_training_batches_still_take_equal_steps():
    shards = [ShardedBatches(30, 10, shuffle=True, rank=rank, world_size=8) for rank in range(8)]
    assert [len(list(shard)) for shard in shards] == [len(shard) for shard in shards] == [1] * 8


def test_a_single_process_keeps_the_plain_batches():
    dataset = TensorDataset(torch.arange(10))
    assert [batch[0].tolist() for batch in _batches(dataset, 4, shuffle=False)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_single_process_shuffles_as_torchs_random_sampler():
    """Tensor index batches, in the order `BatchSampler(RandomSampler)` gives from the same global seed: the
    trained weights of a single-process run do not depend on how the batches are cut."""
    dataset = TensorDataset(torch.arange(50))
    torch.manual_seed(3)
    ours = [batch[0].tolist() for batch in _batches(dataset, 8, shuffle=True)]
    torch.manual_seed(3)
    theirs = list(BatchSampler(RandomSampler(dataset), 8, drop_last=False))
    assert ours == theirs


# -- the GPU's non-finite-loss check ---------------------------------------------------------------------
class FakeTrainer:
    """What `_check_finite` reads of a Trainer in the middle of epoch 0 of a 10-batch fit."""
    num_training_batches = 10
    current_epoch = 0


def nan_check_classifier(every: int) -> RobustClassifier:
    classifier = RobustClassifier(BasicNet(1, 28, 10, [0.5], [0.25]), AdversarialTraining(), optimizer=torch.optim.SGD)
    classifier.nan_check_every = every
    classifier._trainer = FakeTrainer()
    classifier.optimizers = lambda: torch.optim.SGD(classifier.parameters(), lr=0.1)
    return classifier


def test_on_the_cpu_every_step_is_checked():
    classifier = nan_check_classifier(every=4)
    with pytest.raises(TrainingDiverged, match="train/loss is nan at epoch 0, batch 1"):
        classifier._check_finite(torch.tensor(float("nan")), 1)


def test_a_counted_check_raises_at_its_cadence_and_at_the_epoch_end(monkeypatch):
    """The GPU form: non-finite steps are counted on the device and read every `nan_check_every` steps."""
    classifier = nan_check_classifier(every=4)
    nan = torch.tensor(float("nan"))
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    classifier._check_finite(torch.tensor(1.0), 0)
    classifier._check_finite(nan, 1)  # counted, not read yet
    classifier._check_finite(torch.tensor(1.0), 2)
    with pytest.raises(TrainingDiverged, match="1 of the batches up to 3"):
        classifier._check_finite(torch.tensor(1.0), 3)
    classifier._check_finite(torch.tensor(1.0), 8)
    with pytest.raises(TrainingDiverged, match="batches up to 9"):  # the epoch's last step is always read
        classifier._check_finite(torch.tensor(float("inf")), 9)


# -- the progress bar on a GPU ------------------------------------------------------------------------------
def test_the_progress_bar_redraws_less_often_on_a_gpu():
    """Each redraw reads the shown loss back from the device: on a GPU the automatic rate is at most every
    `GPU_REFRESH_RATE` batches; a rate the user chose is kept."""
    from types import SimpleNamespace

    from robustlab.evaluation.progress import GPU_REFRESH_RATE, ProgressBar

    def trainer_on(device: str):
        return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), is_global_zero=True)

    automatic, chosen, on_cpu = ProgressBar(), ProgressBar(refresh_rate=2), ProgressBar()
    automatic.setup(trainer_on("cuda"), None, "fit")
    chosen.setup(trainer_on("cuda"), None, "fit")
    on_cpu.setup(trainer_on("cpu"), None, "fit")
    assert automatic.refresh_rate >= GPU_REFRESH_RATE and chosen.refresh_rate == 2
    assert on_cpu.refresh_rate == ProgressBar().refresh_rate


# -- the training step without per-step framework cost ----------------------------------------------------
def fit_tiny(compose, *overrides: str, epochs: int = 1):
    from pytorch_lightning import Callback

    from robustlab.builders import build_classifier, build_datamodule, build_trainer

    class Losses(Callback):
        """Each step's loss and batch size, as the step returned them."""
        def __init__(self) -> None:
            self.seen: list[tuple[float, int]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.seen.append((float(loss), len(batch[1])))

    cfg = compose("dataset=synthetic", "defense=adv_train", f"trainer.max_epochs={epochs}",
                  "trainer.limit_train_batches=5", "trainer.limit_val_batches=1", "logger=none", *overrides)
    torch.manual_seed(0)
    datamodule, classifier, trainer = build_datamodule(cfg.dataset), build_classifier(cfg), build_trainer(cfg)
    losses = Losses()
    trainer.callbacks.append(losses)
    trainer.fit(classifier, datamodule=datamodule)
    return classifier, trainer, losses.seen


def test_the_step_that_steps_its_own_optimizer_trains_the_weights_lightnings_automatic_step_does(compose_train):
    """No clipping or accumulation asked for: the module steps the optimizer itself. A clipping bound no
    gradient reaches puts Lightning's automatic loop back; both give the same weights, step for step."""
    manual, trainer, _ = fit_tiny(compose_train)
    assert not manual.automatic_optimization
    automatic, trainer, _ = fit_tiny(compose_train, "+trainer.gradient_clip_val=1e9")
    assert automatic.automatic_optimization
    for (name, ours), (_, theirs) in zip(manual.state_dict().items(), automatic.state_dict().items()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_the_epoch_means_are_over_every_training_image(compose_train):
    """`train/loss` is summed on the device and logged once per epoch: the mean of every step's loss, weighted
    by its batch size, as the steps returned them."""
    classifier, trainer, seen = fit_tiny(compose_train)
    expected = sum(loss * count for loss, count in seen) / sum(count for _, count in seen)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0


def test_the_scheduler_steps_once_per_epoch_when_the_module_steps_the_optimizer(compose_train):
    classifier, trainer, _ = fit_tiny(compose_train, "scheduler=cosine", epochs=2)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 2
    assert classifier.optimizers().param_groups[0]["lr"] == pytest.approx(scheduler.get_last_lr()[0])
