"""The model zoo: shapes, the DnCNN's residual form, and one epoch of training on 1×28² and 3×32² data."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import CONF, DATA_DIR, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

import robustlab.train
from robustlab.errors import InvalidValue
from robustlab.models import DnCNN, PreActResNet18, SmallCNN, WideResNet

TINY_WIDTHS = {"wide_resnet": ["model.depth=10", "model.widen_factor=1"], "preact_resnet18": ["model.width=4"]}
CIFAR_SHAPED = ["dataset=synthetic", "dataset.channels=3", "dataset.image_size=32", "dataset.mean=[0.5,0.5,0.5]",
                "dataset.std=[0.25,0.25,0.25]"]
ONE_EPOCH = ["trainer.max_epochs=1", "eval=quick", "eval.n_samples=32", "logger=none", "attack=fgsm",
             "eval.audit.n_samples=16", "eval.audit.square_queries=50"]  # the audit runs; its size is not tested here


@pytest.mark.parametrize("model", sorted(TINY_WIDTHS))
def test_wide_and_residual_nets_train_one_epoch_on_cifar_shaped_data(model, tmp_path):
    results = robustlab.train.run(compose_config([*CIFAR_SHAPED, f"model={model}", *TINY_WIDTHS[model], *ONE_EPOCH],
                                                 tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["model"] == model
    assert results.clean_acc > 0.2  # ten well-separated prototypes: one epoch is far above chance


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(TINY_WIDTHS))
def test_wide_and_residual_nets_train_one_epoch_on_fashion_mnist(model, tmp_path):
    results = robustlab.train.run(compose_config([f"paths.data_dir={DATA_DIR}", f"model={model}", *TINY_WIDTHS[model],
                                                  *ONE_EPOCH], tmp_path))
    assert results.n_clean == 10_000 and results.clean_acc > 0.7


def test_paper_sizes():
    def parameters(net):
        return sum(p.numel() for p in net.parameters())
    common = dict(in_channels=3, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)
    assert 11.1e6 < parameters(PreActResNet18(**common)) < 11.2e6
    assert 36.4e6 < parameters(WideResNet(**common, depth=28, widen_factor=10)) < 36.6e6
    assert parameters(DnCNN(1)) == pytest.approx(556_033, rel=0.01)  # DnCNN-S: 17 layers, 64 features


@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_models_map_images_to_class_logits(shape):
    channels, side = shape
    x = torch.rand(2, channels, side, side)
    common = dict(in_channels=channels, num_classes=10, mean=[0.5] * channels, std=[0.25] * channels)
    for net in (PreActResNet18(**common, width=4), SmallCNN(**common, image_size=side),
                WideResNet(**common, depth=10, widen_factor=1)):
        assert net.eval()(x).shape == (2, 10)


def test_dncnn_predicts_the_perturbation_and_subtracts_it():
    torch.manual_seed(0)
    denoiser = DnCNN(channels=1, depth=5, features=8).eval()
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(denoiser(x), x - denoiser.residual(x))
    torch.nn.init.zeros_(denoiser.residual[-1].weight)
    torch.nn.init.zeros_(denoiser.residual[-1].bias)
    assert torch.equal(denoiser(x), x)  # a zero residual is the identity
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in denoiser.modules()) == 3


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_dncnn_in_eval_mode_folds_its_batchnorms_without_changing_the_function_or_its_gradients(layout):
    """After training steps (running statistics and affine parameters far from their initial values), eval mode's
    folded convolutions give the layers' output, input gradient and every parameter's gradient."""
    torch.manual_seed(0)
    denoiser = DnCNN(channels=1, depth=5, features=8).to(memory_format=layout)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=0.05)
    for _ in range(10):
        clean = torch.rand(16, 1, 12, 12)
        optimizer.zero_grad()
        ((denoiser(clean + 0.3 * torch.randn_like(clean)) - clean) ** 2).mean().backward()
        optimizer.step()
    denoiser.eval()
    x = torch.rand(4, 1, 12, 12).contiguous(memory_format=layout)
    gradients = []
    for forward in (denoiser, lambda images: images - denoiser.residual(images)):  # folded, then layer by layer
        images = x.clone().requires_grad_(True)
        denoiser.zero_grad()
        out = forward(images)
        (out ** 2).sum().backward()
        gradients.append((out.detach(), images.grad, [p.grad.clone() for p in denoiser.parameters()]))
    (out_folded, input_folded, params_folded), (out_plain, input_plain, params_plain) = gradients
    assert torch.allclose(out_folded, out_plain, atol=1e-5) and torch.allclose(input_folded, input_plain, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(params_folded, params_plain))
    assert not torch.allclose(denoiser.residual[3].running_mean, torch.zeros(8))  # the statistics are not trivial
    ran = []
    for layer in denoiser.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.register_forward_hook(lambda *_: ran.append(1))
    denoiser(x)
    assert ran == []  # folded: no BatchNorm pass in eval mode
    denoiser.train()(x)
    assert len(ran) == 3  # training normalises by the batch's statistics, layer by layer


def test_bad_model_sizes_are_refused_with_their_names():
    common = dict(in_channels=1, num_classes=10, mean=[0.5], std=[0.25])
    with pytest.raises(InvalidValue, match="width"):
        PreActResNet18(**common, width=0)
    with pytest.raises(InvalidValue, match="depth"):
        DnCNN(channels=1, depth=2)
    with pytest.raises(InvalidValue, match="image_size"):
        SmallCNN(**common, image_size=8)


def test_sweep_directory_resolves_before_any_job_starts():
    """A multirun resolves hydra.sweep.dir before Hydra sets up a job, so it may not depend on the job."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sweep=zoo"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    assert cfg.hydra.sweep.dir == os.path.join(os.getcwd(), "outputs", "sweeps", "zoo")
    assert cfg.hydra.mode.name == "MULTIRUN"
