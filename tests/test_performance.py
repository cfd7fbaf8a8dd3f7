"""What makes robustlab fast: chunked CPU attacks, channels-last deployment, device-resident data; the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, compose_config
from torch import nn

from robustlab.attacks import PGD
from robustlab.builders import build_classifier
from robustlab.data import SyntheticDataModule
from robustlab.models import BasicNet


class BatchSizeRecorder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


def small_net() -> BasicNet:
    torch.manual_seed(0)
    return BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25])


def test_eval_mode_cpu_batches_are_attacked_in_chunks():
    model = BatchSizeRecorder(small_net()).eval()
    x, y = torch.rand(600, 1, 28, 28), torch.randint(0, 10, (600,))
    x_adv = PGD(eps=0.1, steps=2, chunk_size=256, eot_samples=1)(model, x, y)  # no randomness probe
    assert x_adv.shape == x.shape and max(model.sizes) == 256 and sum(model.sizes) == 600 * 2


def test_train_mode_batches_are_attacked_whole():
    """Batch norm couples the examples of a batch in train mode, so splitting would change the attack."""
    model = BatchSizeRecorder(small_net()).train()
    x, y = torch.rand(600, 1, 28, 28), torch.randint(0, 10, (600,))
    PGD(eps=0.1, steps=2, chunk_size=256, eot_samples=1)(model, x, y)  # no randomness probe
    assert model.sizes == [600, 600]


def test_chunked_attack_matches_the_whole_batch_attack():
    model = small_net().eval()
    x, y = torch.rand(300, 1, 28, 28), torch.randint(0, 10, (300,))
    whole = PGD(eps=0.1, steps=5, random_start=False, chunk_size=None)(model, x, y)
    chunked = PGD(eps=0.1, steps=5, random_start=False, chunk_size=128)(model, x, y)
    assert (whole - chunked).abs().gt(1e-4).float().mean() < 1e-3  # equal up to float summation order


def test_channels_last_deployment_predicts_like_the_default_format(tmp_path):
    torch.manual_seed(0)
    fast = build_classifier(compose_config(["dataset=synthetic", "performance.channels_last=true"], tmp_path))
    torch.manual_seed(0)
    plain = build_classifier(compose_config(["dataset=synthetic", "performance.channels_last=false"], tmp_path))
    assert fast.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert set(fast.state_dict()) == set(plain.state_dict())
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)


def test_resident_data_moves_once_to_the_trainers_device():
    datamodule = SyntheticDataModule(val_size=64)
    datamodule.setup()
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), global_rank=0,
                                         world_size=1)
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.device.type == "meta" and datamodule.train_set.tensors[0].device.type == "meta"
    datamodule.resident_on_device = False
    assert next(iter(datamodule.test_dataloader()))[0].device.type == "cpu"


@pytest.mark.slow  # about 100 s: its cold sweep=matrix trains the whole zoo (12 defenses), tiny
def test_benchmark_script_runs_in_tiny_mode(tmp_path):
    markdown, output = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--matrix", "--repeats", "2",
                             "--markdown", str(markdown), "--json", str(output)],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report) == {"cpu"}  # kept per device
    report = report["cpu"]
    libraries = {name.rsplit(": ", 1)[1] for name in report["figures"] if "throughput" in name}
    assert libraries == {"robustlab", "robustlab compile=true", "torchattacks", "ART"}
    counts = {name: len(figure["samples"]) for name, figure in report["figures"].items() if "sweep=matrix" not in name}
    # --repeats for each figure; AutoAttack's stages run once, the denoiser's gradient at least 5 times
    assert all(count == (1 if name.startswith("AutoAttack") else 5 if "denoiser" in name else 2)
               for name, count in counts.items()), counts
    assert report["figures"]["cold `python train.py sweep=matrix`, wall time"]["median"] > 0
    assert all(value > 0 for name, value in report["ratios"].items() if "(points)" not in name)  # not differences
    assert {f"AutoAttack {stage} (its images in the cascade): time robustlab / torchattacks"
            for stage in ("apgd_ce", "apgd_t", "fab_t", "square")} <= set(report["ratios"])
    assert report["ratios"]["evaluation peak memory 400 / 100 images"] <= 1.2
    # Every target is checked and its verdict kept: met where the ratio reaches it, "" where none is set.
    assert set(report["met"]) == set(report["ratios"]) and set(report["met"].values()) <= {"", "met", "NOT met"}
    assert report["met"]["evaluation peak memory 400 / 100 images"] == "met"
    assert report["met"]["PGD throughput compile=true / compile=false, BasicNet"] == ""
    text = markdown.read_text()
    assert "## CPU" in text and "python scripts/bench.py --tiny --matrix --repeats 2" in text
    assert "## GPU" in text and "Not measured yet" in text  # never an estimate
    assert result.stdout.strip().splitlines()[-1].startswith("wrote ")


@pytest.mark.slow  # about 40 s: AutoAttack's stages and the denoiser's gradient, tiny
def test_benchmark_measures_only_the_sections_asked_for_and_writes_nothing(tmp_path):
    markdown, output = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--repeats", "1",
                             "--only", "denoiser", "--only", "autoattack", "--markdown", str(markdown),
                             "--json", str(output)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = [line for line in result.stdout.splitlines() if line.startswith("measured ")]
    assert any("denoiser's predictor" in line and "plain PyTorch" in line for line in measured)
    assert {stage for stage in ("apgd_ce", "apgd_t", "fab_t", "square", "cascade")
            if any(f"AutoAttack {stage}" in line and "torchattacks" in line for line in measured)} == {
        "apgd_ce", "apgd_t", "fab_t", "square", "cascade"}
    assert not any("throughput" in line or "epoch" in line for line in measured)
    assert not markdown.exists() and not output.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_benchmark_refuses_a_gpu_it_cannot_see(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--device", "cuda",
                             "--json", str(tmp_path / "bench.json")], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr
    assert not (tmp_path / "bench.json").exists()


def test_channels_last_is_not_applied_to_pointwise_convolutions_on_the_cpu(caplog):
    """oneDNN's AVX2 kernel for a channels-last 1×1 convolution's weight gradient hangs (or corrupts memory) on
    CPUs without AVX-512 (PyTorch 2.14.1): on the CPU a network with 1×1 convolutions stays NCHW, and says so;
    BasicNet (5×5 only) is converted; on a GPU every network is."""
    import logging

    from robustlab.defenses import AdversarialTraining
    from robustlab.models import BasicNet, PreActResNet18
    from robustlab.performance import speed_up

    def converted(model) -> bool:
        weights = [layer.weight for layer in model.modules() if isinstance(layer, torch.nn.Conv2d) and
                   layer.in_channels > 1 and layer.kernel_size != (1, 1)]  # where the two layouts differ
        return all(weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
                   for weight in weights)

    common = dict(in_channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    with caplog.at_level(logging.WARNING, logger="robustlab.classifier"):
        resnet = PreActResNet18(**common, width=4)
        speed_up(resnet, AdversarialTraining(), channels_last=True, on_cpu=True)
    assert not converted(resnet) and "performance.channels_last=true is not applied" in caplog.text
    basic = BasicNet(1, 28, 10, [0.5], [0.25])
    speed_up(basic, AdversarialTraining(), channels_last=True, on_cpu=True)
    assert converted(basic)
    on_gpu = PreActResNet18(**common, width=4)
    speed_up(on_gpu, AdversarialTraining(), channels_last=True, on_cpu=False)
    assert converted(on_gpu)
