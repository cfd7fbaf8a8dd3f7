"""Models robustlab did not train: `evaluate.py weights=... model=...` (a state_dict) and `evaluate.py
torchscript=...`, as a user types them, and what each refuses."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config, run_script

pytestmark = pytest.mark.xdist_group("external_models")  # one worker runs the module: its fixtures once

EVALUATION = ["dataset=synthetic", "eval=quick", "eval.n_samples=64", "eval.audit.n_samples=32",
              "eval.audit.square_queries=50", "logger=none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A robustlab-trained BasicNet, its checkpoint evaluated by `evaluate.py ckpt_path=...`; a state_dict and a
    TorchScript file of its network saved as a user would."""
    root = tmp_path_factory.mktemp("external")
    training = run_script("train.py", "dataset=synthetic", "trainer.max_epochs=1", "eval=quick", "eval.n_samples=16",
                          "logger=none", f"hydra.run.dir={root / 'train'}", output_root=root)
    assert training.returncode == 0, training.stderr[-3000:]
    checkpoint = json.loads((root / "train" / "metrics.json").read_text())["checkpoint"]
    evaluated = run_script("evaluate.py", f"ckpt_path={checkpoint}", *EVALUATION, f"hydra.run.dir={root / 'ckpt'}",
                           output_root=root)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    from robustlab.checkpoints import load_classifier

    model = load_classifier(checkpoint).model.to(memory_format=torch.contiguous_format).eval()
    torch.save(model.state_dict(), root / "weights.pt")
    torch.jit.save(torch.jit.trace(model, torch.rand(2, 1, 28, 28)), root / "traced.pt")
    return {"root": root, "checkpoint": checkpoint, "record": json.loads((root / "ckpt" / "metrics.json").read_text())}


def evaluate(trained: dict, name: str, *overrides: str):
    return run_script("evaluate.py", *overrides, *EVALUATION, f"hydra.run.dir={trained['root'] / name}",
                      output_root=trained["root"])


def test_a_state_dict_gives_the_numbers_of_its_checkpoint(trained):
    result = evaluate(trained, "weights", f"weights={trained['root'] / 'weights.pt'}", "model=basic_net")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((trained["root"] / "weights" / "metrics.json").read_text())
    assert (record["model"], record["defense"]) == ("basic_net", "external")
    assert record["per_image"] == trained["record"]["per_image"]  # image by image, every attack and the worst case
    assert record["clean_acc"] == trained["record"]["clean_acc"]


def test_a_torchscript_model_is_evaluated_as_it_is(trained):
    result = evaluate(trained, "traced", f"torchscript={trained['root'] / 'traced.pt'}")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((trained["root"] / "traced" / "metrics.json").read_text())
    assert (record["model"], record["defense"]) == ("traced", "external")
    assert record["clean_acc"] == trained["record"]["clean_acc"]
    ours, theirs = (record["per_image"]["worst_case"].split(","),
                    trained["record"]["per_image"]["worst_case"].split(","))
    assert sum(a != b for a, b in zip(ours, theirs)) <= 1  # the traced graph: the same network, up to float noise


@pytest.mark.parametrize("arguments,fragments", [
    (["model=basic_net"], ["exactly one model to evaluate", "got none"]),
    (["weights={root}/weights.pt", "torchscript={root}/traced.pt"], ["got weights and torchscript"]),
    (["weights={root}/weights.pt", "model=small_cnn"], ["does not fit the model SmallCNN", "Missing key"]),
    (["weights={root}/weights.pt"], ["needs model="]),
    (["torchscript={root}/weights.pt"], ["is not a TorchScript file"]),
    (["weights={root}/traced.pt", "model=basic_net"], ["cannot be read as a state_dict"]),
    (["weights={root}/missing.pt", "model=basic_net"], ["missing.pt' does not exist"]),
])
def test_bad_model_files_are_refused_naming_the_file(trained, arguments, fragments, tmp_path):
    """In process, as `evaluate.run` sees them (the subprocess form: the test below)."""
    from robustlab.errors import RobustlabError
    from robustlab.evaluate import run

    cfg = compose_config([*(argument.format(root=trained["root"]) for argument in arguments), *EVALUATION],
                         tmp_path, config_name="evaluate")
    with pytest.raises(RobustlabError) as refused:
        run(cfg)
    for fragment in fragments:
        assert fragment in str(refused.value)
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_needs_a_dataset_for_a_file_from_elsewhere(trained, tmp_path):
    result = run_script("evaluate.py", f"torchscript={trained['root'] / 'traced.pt'}", "logger=none",
                        f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert result.returncode == 2 and "needs dataset=<option>" in result.stderr


# -- the Python API -----------------------------------------------------------------------------------------
API_SETTINGS = ["eval=quick", "eval.n_samples=64", "eval.audit.n_samples=32", "eval.audit.square_queries=50",
                "logger=none"]


def test_the_python_api_on_a_checkpoints_predictor_gives_evaluate_pys_numbers(trained, tmp_path):
    """`robustlab.evaluate_model` on `load_predictor(checkpoint)`: per image, every attack and the worst case, the
    numbers `python evaluate.py ckpt_path=...` wrote; on the dataset's split or on its tensors handed over."""
    import robustlab
    from robustlab.builders import build_datamodule

    predictor = robustlab.load_predictor(trained["checkpoint"])
    record = robustlab.evaluate_model(predictor, dataset="synthetic", overrides=API_SETTINGS,
                                      output_dir=tmp_path / "split")
    assert record.per_image == trained["record"]["per_image"]
    assert (tmp_path / "split" / "metrics.json").is_file() and record.defense == "external"

    images, labels = build_datamodule(compose_config(["dataset=synthetic"], tmp_path).dataset).test_set.tensors
    given = robustlab.evaluate_model(predictor, images, labels, dataset="synthetic", overrides=API_SETTINGS,
                                     output_dir=tmp_path / "tensors", name="mine")
    assert given.per_image == trained["record"]["per_image"] and given.model == "mine"
    assert given.audit and given.intervals["worst_case"] and given.attack_passes_per_image["pgd_linf"]["backward"] > 0
    assert next(predictor.parameters()).is_contiguous()  # the caller's model is not converted in place


class NoisyInput(torch.nn.Module):
    """A randomized model: Gaussian noise on the input, every forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.3 * torch.randn_like(x))


def test_the_python_api_attacks_a_randomized_model_with_eot(trained, tmp_path, monkeypatch):
    """EOT on a noisy model; and on one device no Lightning Trainer is built (only DDP needs one)."""
    import pytorch_lightning as pl

    import robustlab

    def refused(*args, **kwargs):
        raise AssertionError("a single-device evaluation built a Lightning Trainer")

    monkeypatch.setattr(pl.Trainer, "__init__", refused)
    record = robustlab.evaluate_model(NoisyInput(robustlab.load_predictor(trained["checkpoint"])), dataset="synthetic",
                                      overrides=[*API_SETTINGS, "eval.audit.enabled=false"], output_dir=tmp_path)
    assert record.randomized and record.accuracy_draws == 10
    assert "pgd_linf" in record.robust_acc_without_eot  # the single-draw pass, reported apart
    assert record.attacks["pgd_linf"]["eot_samples"] is None  # automatic: EOT on this predictor


@pytest.mark.parametrize("images,labels,fragment", [
    (torch.rand(4, 1, 28, 28) * 2, torch.zeros(4, dtype=torch.long), "values in [0, 1]"),
    (torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), "dataset=synthetic describes (1, 28, 28)"),
    (torch.rand(4, 1, 28, 28), torch.zeros(5, dtype=torch.long), "expected images (N, C, H, W) and labels (N,)"),
])
def test_the_python_api_refuses_bad_tensors(images, labels, fragment, tmp_path):
    import robustlab
    from robustlab.errors import ConfigError
    from robustlab.models import BasicNet

    with pytest.raises(ConfigError) as refused:
        robustlab.evaluate_model(BasicNet(1, 28, 10, [0.5], [0.25]), images, labels, dataset="synthetic",
                                 overrides=API_SETTINGS, output_dir=tmp_path)
    assert fragment in str(refused.value)
