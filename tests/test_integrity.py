"""A user's attack cannot fool the evaluation: a family of faulty attacks in a file outside the repository, each on a
model with BatchNorm, run the way a user runs them. Each run finishes (or is refused before it starts, naming the
attack), the faulty column is no lower than what the attack broke fairly (here: the clean accuracy of those
images, as every fault is built on a perturbation that breaks nothing within the budget), the other columns equal
an honest run's with the same seed, and the record names what happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, script_environment
from hypothesis import given
from hypothesis import strategies as st

import robustlab
from robustlab.attacks.base import ABSOLUTE_TOLERANCE, EPS_RELATIVE_TOLERANCE, outside_threat_model
from robustlab.errors import ConfigError
from robustlab.evaluation.record import decode_per_image

# The user's file: a BatchNorm CNN and the faulty attacks. Every attack but `Honest` moves its images 4ε away
# (outside the ball: nothing it does may count) or not at all, and commits one fault on the way.
FAULTY = '''
import torch
from torch import nn

from robustlab.attacks.base import Attack


class BatchNormNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(8 * 16, num_classes)

    def forward(self, x):
        return self.head(self.features((x - 0.5) / 0.25))


class Faulty(Attack):
    def __init__(self, eps: float = 0.1, norm: str = "linf", eot_samples=1) -> None:
        self.eps, self.norm, self.eot_samples = eps, norm, eot_samples

    def far(self, x):
        return (x + 4 * self.eps * torch.sign(torch.randn_like(x))).clamp(0, 1)


class WritesIntoItsInput(Faulty):
    def attack(self, model, x, y, draws):
        x.copy_(self.far(x))
        return x


class DeclaresABiggerBudget(Faulty):
    def __init__(self, eps: float = 0.1, norm: str = "linf", eot_samples=1) -> None:
        super().__init__(4 * eps, norm, eot_samples)

    def attack(self, model, x, y, draws):
        return self.far(x)


class GrowsItsBudgetWhileAttacking(Faulty):
    def attack(self, model, x, y, draws):
        self.eps = 4 * 0.1
        return self.far(x)


class ReturnsNaN(Faulty):
    def attack(self, model, x, y, draws):
        return torch.full_like(x, float("nan"))


class ReturnsInfinity(Faulty):
    def attack(self, model, x, y, draws):
        return torch.where(torch.rand_like(x) < 0.5, float("inf"), float("-inf"))


class ReturnsAnotherDtype(Faulty):
    def attack(self, model, x, y, draws):
        return self.far(x).double()


class ReturnsAnotherShape(Faulty):
    def attack(self, model, x, y, draws):
        return self.far(x)[:, :, 1:]


class LeavesTrainMode(Faulty):
    def attack(self, model, x, y, draws):
        model.train()
        model(x)  # BatchNorm's statistics move too
        return x


class ChangesParameters(Faulty):
    def attack(self, model, x, y, draws):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(-1)
        return x


class LeavesAForwardHook(Faulty):
    def attack(self, model, x, y, draws):
        model.register_forward_hook(lambda module, inputs, output: -output)
        return x


class LeavesGradients(Faulty):
    def attack(self, model, x, y, draws):
        nn.functional.cross_entropy(model(x), y).backward()
        return x


class FailsAtAnotherBudget(Faulty):
    def attack(self, model, x, y, draws):
        if abs(self.eps - 0.1) > 1e-9:  # the audit's robustness curves build it at other budgets
            raise RuntimeError(f"written for eps=0.1 only, got {self.eps}")
        return x
'''
FAULTS = {  # attack → what the record names (None: refused before the run)
    "WritesIntoItsInput": {"input"},
    "DeclaresABiggerBudget": None,
    "GrowsItsBudgetWhileAttacking": set(),
    "ReturnsNaN": set(),
    "ReturnsInfinity": set(),
    "ReturnsAnotherDtype": {"output"},
    "ReturnsAnotherShape": {"output"},
    "LeavesTrainMode": {"mode", "buffers"},
    "ChangesParameters": {"parameters"},
    "LeavesAForwardHook": {"hooks"},
    "LeavesGradients": {"gradients"},
}
SUITE = ["fgsm", "pgd_linf", "pgd_l2"]
QUICK = ["eval.n_samples=64", "eval.audit.n_samples=16", "eval.audit.square_queries=20", "eval.image_grid=0",
         "eval.audit.enabled=false"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("faulty")
    (directory / "faulty.py").write_text(FAULTY)
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))


@pytest.fixture(scope="module")
def trained(user_files):
    """The BatchNorm net trained a little on the synthetic data, and 64 test images."""
    import faulty

    from robustlab.data import SyntheticDataModule

    torch.manual_seed(0)
    data = SyntheticDataModule(num_train=2048, num_test=256, noise=0.15, batch_size=64, val_size=128)
    data.prepare_data()
    data.setup("fit")
    model = trained_briefly(faulty.BatchNormNet(), *data.split("train").tensors, epochs=3, batch_size=64)
    test_images, test_labels = data.split("test").tensors
    return model, test_images[:64], test_labels[:64]


def trained_briefly(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int,
                    batch_size: int) -> torch.nn.Module:
    """`model` trained with Adam on cross-entropy, a few epochs in order, then in eval mode (also used by
    scripts/faulty_attacks.py)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for start in range(0, len(labels), batch_size):
            optimizer.zero_grad()
            batch = slice(start, start + batch_size)
            torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


NORMS = ["linf", "l1", "l0"]  # every fault under a dense, the sparse and the pixel-count threat model


def evaluate(trained, user_files, attack: str, tmp_path: Path, norm: str = "linf"):
    model, images, labels = trained
    return robustlab.evaluate_model(model, images, labels, dataset="synthetic", output_dir=tmp_path / attack,
                                    attack="none", overrides=[*configured(attack, norm), *QUICK])


def configured(attack: str, norm: str = "linf") -> list[str]:
    """The user's attack as a config: its class, and the dataset's budget under `norm`."""
    return [f"attack._target_=faulty.{attack}", f"+attack.eps=${{dataset.eps.{norm}}}", f"+attack.norm={norm}"]


@pytest.fixture(scope="module")
def honest(trained, user_files, tmp_path_factory):
    model, images, labels = trained
    return robustlab.evaluate_model(model, images, labels, dataset="synthetic", attack="none",
                                    output_dir=tmp_path_factory.mktemp("honest"), overrides=QUICK)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attack", sorted(FAULTS))
def test_a_faulty_attack_fools_nothing(attack, norm, trained, user_files, honest, tmp_path):
    if FAULTS[attack] is None:
        declared, configured_eps = {"linf": ("0.4", "0.1"), "l1": ("30.0", "7.5"), "l0": ("72", "18")}[norm]
        with pytest.raises(ConfigError, match=rf"attack: faulty.DeclaresABiggerBudget declares eps={declared}.* its "
                                              rf"config says eps={configured_eps}"):
            evaluate(trained, user_files, attack, tmp_path, norm)
        return
    record = evaluate(trained, user_files, attack, tmp_path, norm)
    check = record.threat_model[attack]
    assert set(check.get("changed", {})) == FAULTS[attack]
    clean_of_those = decode_per_image(honest.per_image["clean"])[:record.n_eval]
    assert record.robust_acc[attack] == pytest.approx(sum(clean_of_those) / len(clean_of_those))
    for name in ["clean", *SUITE]:  # untouched by the faulty pass, whatever it did to the model
        theirs = record.clean_acc if name == "clean" else record.robust_acc[name]
        ours = honest.clean_acc if name == "clean" else honest.robust_acc[name]
        assert theirs == ours, name
    json.loads((tmp_path / attack / "metrics.json").read_text())  # written, and valid JSON


def test_nan_images_are_written_as_counts_not_crashes(trained, user_files, tmp_path):
    record = evaluate(trained, user_files, "ReturnsNaN", tmp_path)
    check = record.threat_model["ReturnsNaN"]
    assert check["violations"] == record.n_eval and check["non_finite"] == record.n_eval
    assert check["largest_perturbation"] is None or check["largest_perturbation"] == pytest.approx(0.0)


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2 * 16, max_size=2 * 16),
       st.sampled_from([("linf", 0.1), ("l2", 0.5), ("l1", 1.0), ("l0", 3.0)]))
def test_every_scored_image_is_its_clean_image_or_inside_the_configured_ball(values, ball):
    """For any tensor an attack returns, each image that is scored is the clean one, or lies in the configured
    ball (and [0, 1]) around the untouched clean image, within the stated tolerance."""
    from robustlab.attacks.norms import NORMS
    from robustlab.evaluation.engine import Evaluation

    torch.manual_seed(0)
    clean = torch.rand(2, 1, 4, 4)
    returned = torch.tensor(values, dtype=torch.float32).view(2, 1, 4, 4)
    evaluation = Evaluation({"attack": FixedBudget()}, budgets={"attack": [ball]})
    evaluation.start()
    scored = evaluation._within_threat_model("attack", clean, returned)
    norm, eps = ball
    for image, original in zip(scored, clean):
        if torch.equal(image, original):
            continue
        assert torch.isfinite(image).all() and image.min() >= -ABSOLUTE_TOLERANCE
        assert image.max() <= 1 + ABSOLUTE_TOLERANCE
        size = float(NORMS[norm].size((image - original).flatten()[None])[0])
        assert size <= eps * (1 + EPS_RELATIVE_TOLERANCE) + ABSOLUTE_TOLERANCE


class FixedBudget(robustlab.attacks.base.Attack):
    eps, norm = 1.0, "linf"  # what the object says: the evaluation's frozen budget is what counts


def test_a_faulty_attack_through_train_and_evaluate(user_files, tmp_path):
    """The command line: a model with BatchNorm trained by train.py with the in-place attack as its evaluation
    attack, then evaluate.py on its checkpoint with the parameter-changing one."""
    environment = {**script_environment(), "PYTHONPATH": str(user_files)}
    common = ["dataset=synthetic", "trainer.max_epochs=1", "model._target_=faulty.BatchNormNet", "~model.image_size",
              "~model.mean", "~model.std", "logger=none", f"paths.output_root={tmp_path}", *QUICK]
    trained = subprocess.run([sys.executable, str(ROOT / "train.py"), "attack=none",
                              *configured("WritesIntoItsInput"), *common], env=environment, capture_output=True,
                             text=True, timeout=600, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    record = json.loads(Path(trained.stdout.strip().splitlines()[-1].removeprefix("metrics: ")).read_text())
    assert record["threat_model"]["WritesIntoItsInput"]["changed"] == {"input": 1}
    clean = decode_per_image(record["per_image"]["clean"])
    assert record["robust_acc"]["WritesIntoItsInput"] == pytest.approx(sum(clean) / len(clean))
    evaluated = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"ckpt_path={record['checkpoint']}",
                                "attack=none", *configured("ChangesParameters"), "logger=none",
                                f"paths.output_root={tmp_path}", *QUICK], env=environment, capture_output=True,
                               text=True, timeout=600, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads(Path(evaluated.stdout.strip().splitlines()[-1].removeprefix("metrics: ")).read_text())
    assert again["threat_model"]["ChangesParameters"]["changed"] == {"parameters": 1}
    assert again["clean_acc"] == record["clean_acc"]
    assert {name: again["robust_acc"][name] for name in SUITE} == {name: record["robust_acc"][name] for name in SUITE}
    assert again["robust_acc"]["ChangesParameters"] == pytest.approx(sum(clean) / len(clean))


def test_the_scored_images_re_scored_by_a_plain_loop_give_the_same_answer(trained, user_files, tmp_path):
    """Correctness comes from fresh passes on the untouched model: the adversarial images the run saved, re-scored
    one by one here, give each image's recorded answer."""
    model, images, labels = trained
    record = robustlab.evaluate_model(model, images, labels, dataset="synthetic", attack="apgd_ce",
                                      output_dir=tmp_path, overrides=[*QUICK, "eval.save_adversarial=true",
                                                                      "attack.steps=10",
                                                                      "performance.channels_last=false"])
    saved = torch.load(tmp_path / "adversarial.pt", weights_only=True)
    assert set(saved) == {*SUITE, "apgd_ce"}
    model.eval()
    for name, found in saved.items():
        with torch.no_grad():
            answers = [float(model(image[None]).argmax(1) == labels[index]) for index, image in
                       zip(found["index"].tolist(), found["images"])]
        assert answers == decode_per_image(record.per_image[name]), name
        balls = [tuple(ball) for ball in record.threat_model[name]["balls"]]
        assert not outside_threat_model(balls, images[found["index"]], found["images"])[0].any()


def test_the_worst_case_is_taken_within_its_threat_model(trained, user_files, tmp_path):
    """An attack at a larger budget than the dataset's balls has its own column and is left out of the worst case;
    one at a smaller budget is inside it; the report says which."""
    from robustlab.report import write_report

    model, images, labels = trained
    record = robustlab.evaluate_model(model, images, labels, dataset="synthetic", attack="apgd_ce",
                                      output_dir=tmp_path / "run",
                                      overrides=[*QUICK, "attack.eps=0.3", "attack.steps=10",
                                                 "+attack@eval.attacks.small_fgsm=fgsm",
                                                 "eval.attacks.small_fgsm.eps=0.05"])
    assert record.worst_case["balls"] == [["linf", 0.1], ["l2", 1.5], ["l1", 7.5], ["l0", 18.0]]
    assert record.worst_case["left_out"] == ["apgd_ce"] and "small_fgsm" in record.worst_case["attacks"]
    columns = [decode_per_image(record.per_image[name]) for name in ["clean", *SUITE, "small_fgsm"]]
    assert decode_per_image(record.per_image["worst_case"]) == [min(values) for values in zip(*columns)]
    report = write_report(tmp_path, versions="mix")["markdown"].read_text()
    assert "Left out of the worst case" in report and "apgd_ce" in report.split("Left out of the worst case")[1]


def test_a_late_step_that_fails_leaves_its_results_and_a_reason(trained, user_files, tmp_path):
    """The audit's curves build the attack at other budgets, where this one raises: the evaluation's numbers are
    written with the audit's error, the call fails, and the same call runs again rather than taking it as done."""
    from robustlab.evaluation.record import RunRecord
    from robustlab.runs import LateStepFailed

    model, images, labels = trained
    arguments = dict(dataset="synthetic", attack="none", output_dir=tmp_path,
                     overrides=[*configured("FailsAtAnotherBudget"), *QUICK[:-1], "eval.audit.enabled=true"])
    with pytest.raises(LateStepFailed, match=r"audit failed .*written for eps=0.1 only"):
        robustlab.evaluate_model(model, images, labels, **arguments)
    record = RunRecord.read(tmp_path / "metrics.json")
    assert set(record.errors) == {"audit"} and "written for eps=0.1 only" in record.errors["audit"]
    assert record.clean_acc > 0 and set(SUITE) <= set(record.robust_acc)
    with pytest.raises(LateStepFailed):  # not a finished run: evaluated again
        robustlab.evaluate_model(model, images, labels, **arguments)
