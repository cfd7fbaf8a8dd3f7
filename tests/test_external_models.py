"""Models robustlab did not train: `evaluate.py weights=... model=...` (a state_dict) and `evaluate.py
torchscript=...`, as a user types them, and what each refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config, run_script

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
    (["weights={root}/missing.pt", "model=basic_net"], ["no such file"]),
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
