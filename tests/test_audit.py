"""Each gradient-masking check fires on a model broken for it and stays quiet on a standard trained model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.attacks import PGD
from robustlab.defenses import MixturePredictor
from robustlab.evaluation.audit import audit, flags, robustness_curves
from robustlab.models import NoisyModel

FACTORS = [0.0, 0.5, 1.0, 1.5, 2.0]


class MeanShiftModel(nn.Module):
    """Two classes, decided by u = mean(x − 0.5): logits [0, h(u)], class 1 (wrong for label 0) when h > 0."""

    def __init__(self, h) -> None:
        super().__init__()
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - 0.5).flatten(1).mean(dim=1)
        return torch.stack([torch.zeros_like(u), self.h(u)], dim=1)


def grey_images(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 8, 8), 0.5), torch.zeros(n, dtype=torch.long)


def run_audit(model, x, y, eps=0.1, num_classes=2, eot_samples=None, randomized=False, pgd_steps=20, eps_l2=None):
    torch.manual_seed(0)
    factories = {"pgd_linf": (lambda budget: PGD(eps=budget, steps=pgd_steps), eps)}
    curves = robustness_curves(factories, model, x, y, draws=10 if randomized else 1, factors=FACTORS)
    return audit(model, x, y, eps_linf=eps, num_classes=num_classes, curves=curves, draws=10 if randomized else 1,
                 randomized=randomized, eot_samples=eot_samples or {"pgd_linf": None}, pgd_steps=pgd_steps,
                 square_queries=200, eps_l2=eps_l2)


@pytest.fixture(scope="module")
def batch(noisy_synthetic):
    x, y = noisy_synthetic.test_set.tensors
    return x[:100], y[:100]


def test_a_standard_trained_model_raises_no_flag(standard_net, batch):
    record = run_audit(standard_net, *batch, eps=0.1, num_classes=10, eps_l2=1.0)
    assert "black_box_beats_white_box_l2" in record  # c, d and e under L2 too, quiet as well
    assert flags(record) == "", {name: check["detail"] for name, check in record.items() if check["flagged"]}


def test_a_and_b_fire_when_larger_budgets_help_the_model():
    """The model turns right again once the perturbation is large: accuracy rises with ε and survives ε = 0.5."""
    model = MeanShiftModel(lambda u: torch.where(u < 0.12, 100 * u - 0.01, torch.full_like(u, -5.0)))
    record = run_audit(model, *grey_images())
    assert record["non_monotone_curve"]["flagged"] and record["large_eps_not_broken"]["flagged"]


def test_c_fires_when_pgd_is_trapped_where_fgsm_is_not():
    """A local maximum of the loss near x: PGD's small steps circle it, FGSM's one ε step jumps past it."""
    model = MeanShiftModel(lambda u: torch.where(u < 0.09, -0.5 - 1000 * (u - 0.03) ** 2, torch.full_like(u, 5.0)))
    record = run_audit(model, *grey_images())
    assert record["pgd_weaker_than_fgsm"]["flagged"]
    assert record["pgd_weaker_than_fgsm"]["value"] == 1.0


def test_d_and_f_fire_on_saturated_softmax_outputs(standard_net, batch):
    """×10⁴ logits: cross-entropy gradients are exactly zero, so PGD stalls; Square reads scores and does not."""
    saturated = nn.Sequential(standard_net)
    saturated.forward = lambda inputs: 1e4 * standard_net(inputs)
    record = run_audit(saturated, *batch, eps=0.1, num_classes=10, eps_l2=1.0)
    assert record["zero_gradients"]["flagged"] and record["zero_gradients"]["value"] > 0.5
    assert record["black_box_beats_white_box"]["flagged"] and record["black_box_beats_white_box_l2"]["flagged"]
    assert "Square L2" in record["black_box_beats_white_box_l2"]["detail"]
    assert sorted(flags(record)) == sorted(set(flags(record)))  # a letter raised under both norms is listed once


def test_e_fires_when_the_attack_needs_finer_steps():
    """Wrong only in a narrow band of u, beyond a loss that rises towards it: PGD-20's steps (0.0125) often jump
    the band (0.006 wide) and stall on the flat far side; PGD-40's halved steps land in it."""
    low, width = 0.06, 0.006
    model = MeanShiftModel(lambda u: torch.where(u < low, 100 * (u - low) - 0.01,
                                                 torch.where(u < low + width, torch.ones_like(u), -torch.ones_like(u))))
    record = run_audit(model, *grey_images(200))
    assert record["more_steps_help"]["flagged"] and record["more_steps_help"]["value"] > 0.1


def test_g_fires_on_a_randomized_model_attacked_without_eot(standard_net, batch):
    noisy = NoisyModel(standard_net, sigma=0.1)
    x, y = batch[0][:40], batch[1][:40]
    flagged = run_audit(noisy, x, y, num_classes=10, randomized=True, eot_samples={"pgd_linf": 1})
    assert flagged["randomized_without_eot"]["flagged"]
    quiet = run_audit(noisy, x, y, num_classes=10, randomized=True, eot_samples={"pgd_linf": None})
    assert not quiet["randomized_without_eot"]["flagged"]


def test_g_stays_quiet_on_a_mixture_which_is_handled_exactly(standard_net, batch):
    mixture = MixturePredictor([standard_net, standard_net], [0.5, 0.5])
    x, y = batch[0][:40], batch[1][:40]
    record = run_audit(mixture, x, y, num_classes=10, randomized=True, eot_samples={"pgd_linf": 1})
    assert not record["randomized_without_eot"]["flagged"]


def test_paired_checks_rest_on_evidence_not_on_a_margin():
    """Square 65.0% vs PGD 67.5% on 200 images (the 2.5 pp that once raised d on an adv_train checkpoint): the
    fixed 2 pp margin flagged it whatever the images. Per image, 6 images Square breaks against 1 it misses is
    no evidence (exact McNemar, one-sided p = 8/128); 5 against 0 is (p = 1/32)."""
    from robustlab.evaluation.audit import paired_check

    pgd = torch.tensor([1.0] * 135 + [0.0] * 65)
    mixed = torch.cat([torch.zeros(6), torch.ones(129), torch.ones(1), torch.zeros(64)])  # 6 broken, 1 not broken
    check = paired_check(pgd, mixed, "resist PGD but fall to Square")
    assert abs(check.value - 0.025) < 1e-12 and not check.flagged
    assert check.evidence == {"a_better": 6.0, "b_better": 1.0, "p_value": 8 / 128, "method": "exact McNemar"}
    one_sided = torch.cat([torch.zeros(5), torch.ones(130), torch.zeros(65)])
    assert paired_check(pgd, one_sided, "").flagged and paired_check(pgd, one_sided, "").evidence["p_value"] == 1 / 32


def test_every_paired_check_records_its_counts_and_p_value(standard_net, batch):
    record = run_audit(standard_net, *batch, eps=0.1, num_classes=10, eps_l2=1.0)
    for name in ("pgd_weaker_than_fgsm", "black_box_beats_white_box", "more_steps_help", "pgd_weaker_than_fgsm_l2",
                 "black_box_beats_white_box_l2", "more_steps_help_l2"):
        assert set(record[name]["evidence"]) == {"a_better", "b_better", "p_value", "method"}, name


# -- escalation: each flag's remedy, on the model broken for that flag ---------------------------------------
SETTINGS = {"steps_factor": 5, "restarts": 5, "eot_samples": 20, "square_queries_factor": 5}


def escalated(model, x, y, flag, eps=0.1, draws=1, eot_samples=None, surrogate=None, bpda=True):
    """The suite (PGD-20 L∞ named pgd_linf) on (x, y), then the remedies for `flag`: (original, escalation)."""
    from robustlab.attacks.expectation import expected_correct
    from robustlab.evaluation.escalation import escalate, has_stand_ins, remedies
    from robustlab.models.preprocessing import backward_through_stand_ins

    torch.manual_seed(0)
    attack = PGD(eps=eps, steps=20, eot_samples=eot_samples)
    with backward_through_stand_ins(model, bpda):
        original = {"clean": expected_correct(model, x, y, draws),
                    "pgd_linf": expected_correct(model, attack(model, x, y), y, draws)}
    rebuild = lambda name, **changes: PGD(**{"eps": eps, "steps": 20, "eot_samples": eot_samples, **changes})
    found = remedies(flag, {"pgd_linf": attack}, rebuild, SETTINGS, surrogate, has_stand_ins(model), bpda,
                     square_queries=200)
    assert found and {remedy.flag for remedy in found} == {flag}
    return original, escalate(model, x, y, draws, original, flag, found, bpda, batch_size=256)


def assert_lowered(original, escalation):
    """The remedies found images the original attack did not break (never raising one holds by construction:
    `escalate` keeps the per-image minimum)."""
    assert escalation["robust_acc"]["pgd_linf"] < float(original["pgd_linf"].double().mean())


class CountingPGD(PGD):
    """PGD that counts its calls, per budget."""

    calls: dict[float, int] = {}

    def __call__(self, model, x, y):
        CountingPGD.calls[self.eps] = CountingPGD.calls.get(self.eps, 0) + 1
        return super().__call__(model, x, y)


def test_a_curve_reads_the_suites_result_at_its_own_eps_and_runs_every_other_budget(standard_net, batch):
    x, y = batch
    CountingPGD.calls = {}
    suite = torch.linspace(0, 1, len(y))  # what the suite measured on these images (any per-image values)
    factories = {"pgd_linf": (lambda budget: CountingPGD(eps=budget, steps=2), 0.1)}
    curves = robustness_curves(factories, standard_net, x, y, draws=1, factors=FACTORS,
                               known={"pgd_linf": (PGD(eps=0.1, steps=2), suite)})
    assert curves["pgd_linf"]["accuracy"][2] == pytest.approx(float(suite.double().mean()))
    assert sorted(CountingPGD.calls) == pytest.approx([0.0, 0.05, 0.15, 0.2])  # every budget but ε = 0.1


def test_checks_c_and_e_read_the_suites_pgd_and_run_what_the_suite_did_not(standard_net, batch, monkeypatch):
    """The suite ran FGSM and PGD-20 L∞ on the audit's images: c, d and e run only PGD-40 and Square under L∞,
    and every attack under L2; a PGD that differs in one setting is run."""
    from robustlab.evaluation import audit as audit_module

    ran = []
    original = audit_module.accuracy_under
    monkeypatch.setattr(audit_module, "accuracy_under",
                        lambda attack, *args: ran.append(repr(attack)) or original(attack, *args))
    x, y = batch
    fgsm, pgd = PGD(eps=0.1, steps=1, step_size=0.1, random_start=False), PGD(eps=0.1, steps=20)
    known = {"fgsm": (fgsm, torch.ones(len(y))), "pgd_linf": (pgd, torch.zeros(len(y))),
             "other": (PGD(eps=0.1, steps=20, restarts=2), torch.zeros(len(y)))}
    torch.manual_seed(0)
    record = audit(standard_net, x, y, eps_linf=0.1, num_classes=10, curves={}, draws=1, randomized=False,
                   eot_samples={"pgd_linf": None}, pgd_steps=20, square_queries=20, eps_l2=1.0, known=known)
    assert repr(fgsm) not in ran and repr(pgd) not in ran
    assert repr(PGD(eps=0.1, steps=40)) in ran and any(attack.startswith("Square(norm=linf") for attack in ran)
    assert repr(PGD(norm="l2", eps=1.0, steps=20)) in ran
    # The read results decide check c: every image stands under the suite's FGSM, none under its PGD.
    assert record["pgd_weaker_than_fgsm"]["value"] == -1.0 and not record["pgd_weaker_than_fgsm"]["flagged"]


def test_escalation_e_more_steps_and_restarts_find_the_narrow_band():
    low, width = 0.06, 0.006
    model = MeanShiftModel(lambda u: torch.where(u < low, 100 * (u - low) - 0.01,
                                                 torch.where(u < low + width, torch.ones_like(u), -torch.ones_like(u))))
    original, escalation = escalated(model, *grey_images(200), "e")
    assert_lowered(original, escalation)
    assert escalation["trust"] == "escalated" and "pgd_linf/steps×5,restarts=5" in escalation["remedies"]


def test_escalation_c_starts_pgd_where_fgsm_ended():
    model = MeanShiftModel(lambda u: torch.where(u < 0.09, -0.5 - 1000 * (u - 0.03) ** 2, torch.full_like(u, 5.0)))
    original, escalation = escalated(model, *grey_images(), "c")
    assert float(original["pgd_linf"].mean()) == 1.0 and escalation["robust_acc"]["pgd_linf"] == 0.0
    assert_lowered(original, escalation)


@pytest.mark.parametrize("flag", ["d", "f"])
def test_escalation_d_f_transfers_from_an_undefended_surrogate(flag, standard_net, batch):
    """Saturated logits (zero gradients, flags d and f): PGD stalls; the same network without the saturation,
    as a surrogate, crafts examples that transfer, and Square with 5× the queries reads the scores."""
    saturated = nn.Sequential(standard_net)
    saturated.forward = lambda inputs: 1e4 * standard_net(inputs)
    original, escalation = escalated(saturated, *batch, flag, surrogate=standard_net)
    assert {"pgd_linf/transfer", "square_linf/queries=1000"} <= set(escalation["remedies"])
    assert escalation["remedies"]["pgd_linf/transfer"]["after"] < 0.5 * float(original["pgd_linf"].mean())
    assert_lowered(original, escalation)


def test_the_surrogate_is_found_by_what_the_trainings_record_wherever_their_checkpoints_are(tmp_path):
    """The newest finished defense=none training of the run's dataset and model under paths.checkpoint_store, in
    whatever layout `paths.checkpoint_dir` gave it; another defense, model or dataset is never taken."""
    import json
    import os

    from conftest import compose_config

    from robustlab.builders import find_surrogate

    store = tmp_path / "store"

    def training(where: str, age: int, defense="none", model="basic_net", dataset="synthetic") -> str:
        directory = store / where
        directory.mkdir(parents=True)
        checkpoint = directory / "best.ckpt"
        torch.save({"state_dict": {}, "robustlab": {"choices": {"defense": defense, "model": model},
                                                    "dataset": {"name": dataset}}}, checkpoint)
        marker = directory / "trained.json"
        marker.write_text(json.dumps({"checkpoint": str(checkpoint)}))
        os.utime(marker, (1_000_000 + age, 1_000_000 + age))
        return str(checkpoint)

    cfg = compose_config(["dataset=synthetic", "defense=adv_train", f"paths.checkpoint_store={store}"], tmp_path)
    assert find_surrogate(cfg) is None  # none trained yet
    training("anywhere/a", age=1)
    newest = training("elsewhere/deeper/b", age=2)
    for wrong in (dict(defense="adv_train"), dict(model="small_cnn"), dict(dataset="mnist")):
        training(f"wrong/{'-'.join(wrong.values())}", age=3, **wrong)
    assert find_surrogate(cfg) == newest
    named = compose_config(["dataset=synthetic", f"eval.audit.escalation.surrogate={newest}"], tmp_path)
    assert find_surrogate(named) == newest


def test_escalation_f_differentiates_a_non_differentiable_step_through_its_stand_in(standard_net, batch):
    from robustlab.models import BitDepthReduction, Preprocessed

    squeezed = Preprocessed(standard_net, BitDepthReduction(bits=4)).eval()
    original, escalation = escalated(squeezed, *batch, "f", bpda=False)
    assert escalation["remedies"]["pgd_linf/bpda"]["after"] < 0.5 * float(original["pgd_linf"].mean())
    assert_lowered(original, escalation)


def test_escalation_g_attacks_with_eot(standard_net, batch):
    noisy = NoisyModel(standard_net, sigma=0.3)
    x, y = batch[0][:40], batch[1][:40]
    # ε small enough that the single-draw attack leaves images unbroken, for EOT to find
    original, escalation = escalated(noisy, x, y, "g", eps=0.03, draws=10, eot_samples=1)
    assert "pgd_linf/eot20" in escalation["remedies"]
    assert_lowered(original, escalation)


def test_a_flag_without_remedy_stays_flagged():
    from robustlab.evaluation.escalation import escalate

    x, y = grey_images(8)
    escalation = escalate(MeanShiftModel(lambda u: u), x, y, 1, {"clean": torch.ones(8), "pgd_linf": torch.ones(8)},
                          "b", [], True, 8)
    assert escalation["trust"] == "still flagged" and escalation["without_remedy"] == "b"


@pytest.mark.parametrize("override, key", [
    ("eval.audit.escalation.steps_factor=0", "eval.audit.escalation.steps_factor"),
    ("eval.audit.escalation.restarts=0", "eval.audit.escalation.restarts"),
                                           ("eval.audit.escalation.surrogate=/no/such.ckpt",
                                            "eval.audit.escalation.surrogate")])
def test_bad_escalation_settings_name_their_key(override, key, tmp_path):
    from conftest import compose_config

    from robustlab.builders import build_evaluation
    from robustlab.errors import ConfigError

    cfg = compose_config(["dataset=synthetic", override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_evaluation(cfg)


@pytest.mark.parametrize("override, key, allowed", [
    ("eval.audit.curve_attacks=[pgd_linf,apgd]", "eval.audit.curve_attacks", "fgsm, pgd_linf, pgd_l2"),
    ("eval.audit.curve_factors=[0,-1]", "eval.audit.curve_factors", "numbers ≥ 0"),
    ("eval.audit.n_samples=0", "eval.audit.n_samples", "an integer ≥ 1"),
    ("eval.audit.pgd_steps=0", "eval.audit.pgd_steps", "an integer ≥ 1")])
def test_bad_audit_settings_name_their_key_and_what_is_allowed(override, key, allowed, tmp_path):
    from conftest import compose_config

    from robustlab.builders import build_evaluation
    from robustlab.errors import ConfigError

    cfg = compose_config(["dataset=synthetic", override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        build_evaluation(cfg)
    assert allowed in str(error.value)


def test_bad_escalation_settings_are_refused_before_training(tmp_path):
    from conftest import TINY, run_script

    result = run_script("train.py", *TINY, "eval.audit.escalation.restarts=0", output_root=tmp_path)
    assert result.returncode == 2
    assert "eval.audit.escalation.restarts=0" in result.stderr and "an integer ≥ 1" in result.stderr
    assert "Epoch" not in result.stdout + result.stderr


def test_a_flagged_run_records_its_escalation(tmp_path):
    """`python train.py defense=bit_depth eval.bpda=false`: plain PGD meets zero gradients (flags b, d, f); the
    run attacks again through BPDA and with Square, and records the lower numbers beside the original ones."""
    import json

    from conftest import TINY, run_script

    result = run_script("train.py", *TINY, "defense=bit_depth", "eval.bpda=false", "eval.audit.n_samples=32",
                        "eval.audit.square_queries=50", f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    escalation = metrics["escalation"]
    assert "f" in escalation["flags"] and "pgd_linf/bpda" in escalation["remedies"]
    assert escalation["trust"] == ("still flagged" if "b" in escalation["flags"] else "escalated")
    assert escalation["robust_acc"]["worst_case"] <= metrics["robust_acc"]["worst_case"]
    assert escalation["robust_acc"]["pgd_linf"] < metrics["robust_acc"]["pgd_linf"]
    # No remedy strengthens the one-step FGSM: its number stands as measured, and the record says so.
    assert escalation["not_escalated"] == ["fgsm"]


def test_escalation_keeps_the_single_draw_copies_out_of_the_worst_case():
    """A randomized predictor's `/without_eot` passes are reported apart, never in its worst case."""
    from robustlab.evaluation.escalation import escalate

    x, y = grey_images(8)
    per_example = {"clean": torch.ones(8), "pgd_linf": torch.ones(8), "pgd_linf/without_eot": torch.zeros(8)}
    escalation = escalate(MeanShiftModel(lambda u: u), x, y, 1, per_example, "b", [], True, 8)
    assert escalation["robust_acc"] == {"pgd_linf": 1.0, "worst_case": 1.0}


def test_a_remedy_attacks_only_the_images_its_attack_left_standing():
    """Images 0–9 of 16 are already broken by pgd_linf: the remedy is handed images 10–15 only (each image
    carries its index as its value), in batches, and reports its accuracy on those 6."""
    from robustlab.evaluation.escalation import Remedy, escalate

    x = torch.arange(16.0).view(16, 1, 1, 1).expand(16, 1, 4, 4) / 100
    y = torch.zeros(16, dtype=torch.long)
    seen: list[float] = []

    def spy(model, xb, yb):
        seen.extend(xb[:, 0, 0, 0].mul(100).round().tolist())
        return xb.clone()

    original = {"clean": torch.ones(16), "pgd_linf": torch.cat([torch.zeros(10), torch.ones(6)])}
    remedy = Remedy("pgd_linf/spy", "e", "pgd_linf", spy, PGD(eps=0.1))
    escalation = escalate(MeanShiftModel(lambda u: -torch.ones_like(u)), x, y, 1, original, "e", [remedy], True, 4)
    assert seen == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    result = escalation["remedies"]["pgd_linf/spy"]
    assert result["attacked"] == 6 and result["accuracy"] == 1.0 and result["after"] == 6 / 16


def test_a_remedy_outside_its_threat_model_breaks_nothing():
    """A remedy that leaves pgd_linf's ε-ball (it moves every pixel by 0.3, ε = 0.1) would break every image of
    this model; each such image counts as not broken, and the record counts them."""
    from robustlab.evaluation.escalation import Remedy, escalate

    x, y = grey_images(8)
    model = MeanShiftModel(lambda u: torch.where(u > 0.2, torch.ones_like(u), -torch.ones_like(u)))
    original = {"clean": torch.ones(8), "pgd_linf": torch.ones(8)}
    remedy = Remedy("pgd_linf/cheat", "e", "pgd_linf", lambda model, xb, yb: (xb + 0.3).clamp(0, 1), PGD(eps=0.1))
    escalation = escalate(model, x, y, 1, original, "e", [remedy], True, 8)
    result = escalation["remedies"]["pgd_linf/cheat"]
    assert result["threat_model_violations"] == 8 and result["after"] == 1.0
    assert escalation["robust_acc"]["worst_case"] == 1.0
