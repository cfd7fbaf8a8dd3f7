"""End to end: `python train.py` on synthetic data and on real Fashion-MNIST, outputs, load_predictor."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, TINY, compose_config, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import robustlab
import robustlab.evaluate
import robustlab.train
from robustlab.checkpoints import load_classifier
from robustlab.evaluation.record import RunRecord

pytestmark = pytest.mark.xdist_group("train")  # one worker runs the module: its fixtures once

# The keys the README promises; metrics.json holds exactly the fields of its schema, RunRecord.
METRICS_KEYS = {"dataset", "model", "defense", "attack", "eps", "n_eval", "clean_acc", "robust_acc",
                "train_seconds", "attack_ms_per_image", "checkpoint"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny adversarial-training run on synthetic data, shared by the output checks."""
    output_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config([*TINY, "defense=adv_train", "attack=pgd_l2"], output_dir)
    results = robustlab.train.run(cfg)
    return output_dir, results


def test_metrics_json_has_the_promised_keys(trained_run):
    output_dir, results = trained_run
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert METRICS_KEYS <= metrics.keys() and list(metrics) == RunRecord.keys()
    assert RunRecord.read(output_dir / "metrics.json") == results  # what the run returned is what it wrote
    assert (metrics["dataset"], metrics["model"], metrics["defense"], metrics["attack"]) == \
        ("synthetic", "basic_net", "adv_train", "pgd_l2")
    assert set(metrics["robust_acc"]) == {"fgsm", "pgd_linf", "pgd_l2", "worst_case"}
    assert set(metrics["attack_ms_per_image"]) == {"fgsm", "pgd_linf", "pgd_l2"}
    assert set(metrics["audit"]) == {"non_monotone_curve", "large_eps_not_broken", "pgd_weaker_than_fgsm",
                                     "black_box_beats_white_box", "more_steps_help", "zero_gradients",
                                     "randomized_without_eot", "pgd_weaker_than_fgsm_l2",
                                     "black_box_beats_white_box_l2", "more_steps_help_l2"}
    assert set(metrics["curves"]) == {"fgsm", "pgd_linf", "pgd_l2"}
    assert (output_dir / "robustness_curves.png").stat().st_size > 0
    assert metrics["n_eval"] == 64 and metrics["n_clean"] == 256
    assert all(0.0 <= value <= 1.0 for value in [metrics["clean_acc"], *metrics["robust_acc"].values()])
    assert metrics["robust_acc"]["pgd_linf"] <= metrics["robust_acc"]["fgsm"] + 0.1
    assert metrics["eps"] == {"linf": 0.1, "l2": 1.5, "l1": 7.5, "l0": 18.0}
    assert metrics["epochs"] == 2
    assert metrics["train_seconds"] > 0 and all(ms > 0 for ms in metrics["attack_ms_per_image"].values())
    assert Path(metrics["checkpoint"]).is_file()
    assert results.robust_acc == metrics["robust_acc"]


def test_best_and_last_checkpoints_are_written(trained_run):
    output_dir, _ = trained_run
    checkpoint_dir = Path(json.loads((output_dir / "metrics.json").read_text())["checkpoint"]).parent
    assert checkpoint_dir.is_relative_to(output_dir / "outputs" / "checkpoints")
    names = {path.name for path in checkpoint_dir.glob("*.ckpt")}
    assert "last.ckpt" in names and any(name.startswith("epoch_") for name in names)


def test_tensorboard_has_one_tag_per_quantity_and_the_final_numbers_once_at_the_last_step(trained_run):
    """Read with TensorBoard's own loader: learning curves first (`train/`, `val/`: the two groups Time Series
    opens), `epoch` among them with all its training points, each final number once under `verdict/` at the
    last training step, labelled figures under `visual/`, and HParams with the swept settings."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    output_dir, _ = trained_run
    record = json.loads((output_dir / "metrics.json").read_text())
    log_dir = Path(record["tensorboard"])
    # <defense>/<attack>-<fingerprint>
    assert log_dir.relative_to(output_dir / "outputs" / "tensorboard").parts[0] == "adv_train"
    assert log_dir.name == f"pgd_l2-{record['run_fingerprint']}"
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    learning = {"train/loss", "train/acc", "train/lr", "val/loss", "val/acc", "val/robust_acc", "train/epoch"}
    attacks = ("fgsm", "pgd_linf", "pgd_l2")
    final = {"verdict/accuracy/clean", "verdict/accuracy/robust", "verdict/audit_flags", "verdict/train_seconds",
             "verdict/best_val_robust_acc", *(f"verdict/accuracy/under/{name}" for name in attacks),
             *(f"verdict/attack_ms_per_image/{name}" for name in attacks),
             *(f"verdict/attack_passes_per_image/{name}/{direction}" for name in attacks
               for direction in ("forward", "backward")),
             *(f"verdict/accuracy_interval/{name}/{end}"
               for name in ("clean", "robust", *(f"under/{a}" for a in attacks))
               for end in ("low", "high")),
             *(f"verdict/threat_model/{name}" for name in ("linf", "l2", "average")),  # the union is `robust`
             *(f"verdict/threat_model_interval/{name}/{end}" for name in ("linf", "l2", "average")
               for end in ("low", "high"))}
    # A cell the audit flagged also shows its escalated numbers (the tiny model is flagged on some random streams).
    escalated = {f"verdict/accuracy_escalated/{'robust' if name == 'worst_case' else f'under/{name}'}"
                 for name in record["escalation"].get("robust_acc", {})}
    escalated |= {"verdict/escalation_seconds"} if escalated else set()
    assert set(tags["scalars"]) == learning | final | escalated  # one tag per quantity: no loss_step/_epoch, no copies
    last_step = max(event.step for tag in learning for event in events.Scalars(tag))
    for tag in final:
        (event,) = events.Scalars(tag)  # logged once
        assert event.step == last_step, tag
    assert events.Scalars("verdict/accuracy/clean")[0].value == pytest.approx(record["clean_acc"])
    assert events.Scalars("verdict/accuracy/robust")[0].value == pytest.approx(record["robust_acc"]["worst_case"])
    assert events.Scalars("verdict/threat_model/l2")[0].value == pytest.approx(record["threats"]["l2"]["robust_acc"])
    assert sorted(final)[:5] == sorted(["verdict/accuracy/clean", "verdict/accuracy/robust",
                                        *(f"verdict/accuracy/under/{name}" for name in attacks)])  # HParams shows these
    groups = sorted({tag.split("/")[0] for kind in ("scalars", "images") for tag in tags[kind]})
    assert groups[:2] == ["train", "val"]  # Time Series sorts groups by name and opens the first two
    epoch_steps = [event.step for event in events.Scalars("train/epoch")]  # Lightning adds `epoch` to each log call
    assert sorted(set(epoch_steps)) == [event.step for event in events.Scalars("val/acc")]
    assert len(set(epoch_steps)) == 2
    assert set(tags["images"]) == {"visual/robustness_curves", *(f"visual/adversarial_examples/{a}" for a in attacks)}
    assert {event.step for tag in tags["images"] for event in events.Images(tag)} == {last_step}
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.summary_metadata["_hparams_/session_start_info"].plugin_data.content).session_start_info
    assert {"dataset", "model", "defense", "attack", "seed", "n_eval", "eps_linf", "eps_l2", "eps_l1", "eps_l0",
            "training.epochs",
            "training.optimizer", "training.lr", "training.batch_size", "training.max_epochs",
            "evaluation.attack.steps", "evaluation.attack.restarts", "training.defense.attack.steps",
            "training.defense.attack.eps"} <= set(start.hparams)
    assert sorted(start.hparams)[:5] == ["attack", "dataset", "defense", "eps_l0", "eps_l1"]  # ticked by default
    assert start.hparams["training.optimizer"].string_value == "adam"
    assert start.hparams["training.defense.attack.steps"].number_value == 7
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        events.summary_metadata["_hparams_/experiment"].plugin_data.content).experiment
    assert {info.name.tag for info in experiment.metric_infos} == final | escalated


def test_load_predictor_round_trips(trained_run):
    output_dir, _ = trained_run
    checkpoint = json.loads((output_dir / "metrics.json").read_text())["checkpoint"]
    predictor = robustlab.load_predictor(checkpoint)
    assert not predictor.training
    classifier = load_classifier(checkpoint)
    reference = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(reference[f"model.{k}"], v) for k, v in predictor.state_dict().items())
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(predictor(x), classifier(x))


def test_evaluate_reproduces_the_training_run_numbers(trained_run, tmp_path):
    output_dir, results = trained_run
    checkpoint = json.loads((output_dir / "metrics.json").read_text())["checkpoint"]
    cfg = compose_config([f"ckpt_path={checkpoint}", "attack=pgd_l2", "eval.n_samples=64"], tmp_path,
                         config_name="evaluate")
    evaluated = robustlab.evaluate.run(cfg)
    assert evaluated.clean_acc == results.clean_acc
    assert evaluated.robust_acc["fgsm"] == results.robust_acc["fgsm"]  # deterministic attack
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["defense"] == "adv_train" and metrics["dataset"] == "synthetic"
    assert metrics["train_seconds"] is None and metrics["epochs"] is None


def test_standard_training_learns_the_synthetic_task(tmp_path):
    cfg = compose_config([*TINY, "trainer.max_epochs=3", "logger=none"], tmp_path)
    results = robustlab.train.run(cfg)
    assert results.clean_acc > 0.9
    assert results.robust_acc["pgd_linf"] < results.clean_acc


def test_train_script_on_a_real_fashion_mnist_subset(tmp_path):
    result = run_script("train.py", f"hydra.run.dir={tmp_path}", f"paths.data_dir={DATA_DIR}",
                        "trainer.max_epochs=1", "trainer.limit_train_batches=40", "trainer.limit_val_batches=1",
                        "eval.n_samples=200", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line == f"metrics: {tmp_path / 'metrics.json'}"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == "fashion_mnist" and metrics["n_clean"] == 10000 and metrics["n_eval"] == 200
    assert metrics["clean_acc"] > 0.5  # 40 batches of real data already learn most of the task
    output = result.stdout + result.stderr
    assert "Evaluating pgd_linf" in output  # the per-attack progress bar, with its pass's running accuracy
    shown = re.findall(r"Evaluating pgd_linf: 100%.*?accuracy (\d+\.\d)%", output)
    assert shown and float(shown[-1]) == pytest.approx(100 * metrics["robust_acc"]["pgd_linf"], abs=0.05)
    assert "is deprecated" not in output  # no warning a user cannot act on
    log = (tmp_path / "train.log").read_text()  # the run's log lines, as Hydra keeps them
    assert f"][robustlab.runs][INFO] - metrics: {tmp_path / 'metrics.json'}" in log


def test_the_worst_case_is_the_per_image_minimum_in_test_split_order():
    """The one place the worst case is made (`Evaluation.finish`): per image, the least correctness over the
    clean pass and every attack, with the processes' batches put back in test-split order."""
    from robustlab.attacks import PGD
    from robustlab.evaluation.engine import Evaluation

    evaluation = Evaluation({"a": PGD(eps=0.1), "b": PGD(eps=0.1)}, n_eval=4)
    evaluation.start()
    batches = {"clean": [([2, 3], [1.0, 1.0]), ([0, 1], [1.0, 1.0])],  # as two processes would deliver them
               "a": [([0, 1, 2, 3], [1.0, 0.0, 1.0, 1.0])],
               "b": [([3, 2], [0.0, 1.0]), ([1, 0], [1.0, 1.0])]}
    for name, parts in batches.items():
        evaluation.share.correct[name] += [(torch.tensor(index), torch.tensor(correct)) for index, correct in parts]
    evaluation.finish()
    results = evaluation.finished()
    assert results.per_example["b"].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert results.per_example["worst_case"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert results.robust_acc == {"a": 0.75, "b": 0.75, "worst_case": 0.5}


def test_the_records_accuracies_are_the_means_of_its_per_image_results(trained_run):
    """metrics.json's per-image results (on the first n_eval images) and its accuracies tell the same story."""
    from robustlab.evaluation.record import decode_per_image

    _, results = trained_run
    per_image = {name: torch.tensor(decode_per_image(text)) for name, text in results.per_image.items()}
    worst = per_image["worst_case"]
    assert all(len(per_image[name]) == 64 for name in ("clean", "fgsm", "pgd_linf", "pgd_l2", "worst_case"))
    assert results.robust_acc["worst_case"] == pytest.approx(worst.double().mean().item())
    assert results.robust_acc["pgd_linf"] == pytest.approx(per_image["pgd_linf"].double().mean().item())


def test_an_unchanged_image_grid_says_so_instead_of_amplifying_rounding():
    """A perturbation column is scaled by one factor for the whole grid; a grid the attack left unchanged is
    labelled as such, never as δ × 5e+11 of float rounding."""
    from robustlab.evaluation.images import adversarial_figure

    x, y = torch.rand(2, 1, 8, 8) * 0.9, torch.tensor([0, 1])
    unchanged = adversarial_figure(x, x + 1e-9, y, y, y, title="unchanged")
    moved = adversarial_figure(x, x + 0.05, y, y, y, title="moved")
    assert unchanged.axes[2].get_xlabel() == "δ = 0 (unchanged)"
    assert moved.axes[2].get_xlabel() == "δ × 10"
