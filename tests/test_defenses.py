"""The defense zoo: every training loss learns, every deployed pipeline is attacked whole, randomness is honest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY, compose_config
from omegaconf import OmegaConf

import robustlab.train
from robustlab.attacks import PGD
from robustlab.attacks.expectation import eot_draws, expected_correct, is_randomized
from robustlab.attacks.gradient import input_gradient
from robustlab.builders import build_classifier
from robustlab.checkpoints import load_classifier
from robustlab.data import SyntheticDataModule
from robustlab.defenses import MixturePredictor
from robustlab.defenses.mixed_adversarial_training import per_attack_losses
from robustlab.errors import InvalidValue
from robustlab.models import BasicNet, NoisyModel

pytestmark = pytest.mark.xdist_group("defenses")  # one worker runs the module: its fixtures once

# The zoo, as sweep=zoo and sweep=matrix run it (written once, in conf/sweep/zoo.yaml).
DEFENSES = OmegaConf.load(ROOT / "conf" / "sweep" / "zoo.yaml").hydra.sweeper.params.defense.split(",")
RANDOMIZED = {"noise_injection", "random_mixture", "randomized_smoothing"}


@pytest.fixture(scope="module")
def batch():
    datamodule = SyntheticDataModule(num_train=256, num_test=64, channels=1, image_size=28, num_classes=10,
                                     noise=0.15, seed=0, batch_size=64, eval_batch_size=64, val_size=32)
    datamodule.setup()
    x, y = datamodule.train_set.tensors
    return x[:64], y[:64]


def build(defense: str, tmp_path: Path, *overrides: str):
    torch.manual_seed(0)
    return build_classifier(compose_config(["dataset=synthetic", f"defense={defense}", *overrides], tmp_path))


def test_the_zoo_sweeps_every_defense_config():
    assert sorted(DEFENSES) == sorted(path.stem for path in (ROOT / "conf" / "defense").glob("*.yaml"))


@pytest.mark.parametrize("defense", DEFENSES)
def test_every_stage_of_every_defense_decreases_its_training_loss(defense, batch, tmp_path):
    # Budgets a tiny model can learn against within a few dozen steps (at ε∞ = 0.1 it first sits at log 10).
    classifier = build(defense, tmp_path, "dataset.eps.linf=0.03", "dataset.eps.l2=0.3", "dataset.eps.l1=1.0")
    x, y = batch
    for index in range(len(classifier.defense.stages())):
        classifier.defense.begin_stage(index)
        classifier.train()
        optimizer = torch.optim.Adam(list(classifier.defense.trainable_parameters(classifier.model)), lr=1e-2)
        losses = []
        for _ in range(30):
            optimizer.zero_grad()
            loss = classifier.defense.training_loss(classifier.model, x, y).loss
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < 0.95 * first, f"{defense} stage {index}: loss {first:.4f} → {last:.4f}"


def _parameters(module):
    return {id(p) for p in module.parameters()}


def test_denoiser_stages_train_disjoint_parts(tmp_path):
    classifier = build("denoiser", tmp_path)
    defense, model = classifier.defense, classifier.model
    defense.begin_stage(0)
    assert {id(p) for p in defense.trainable_parameters(model)} == _parameters(model)
    assert defense.wrap(model) is model  # while the classifier trains, the untrained denoiser is not deployed
    defense.begin_stage(1)
    assert {id(p) for p in defense.trainable_parameters(model)} == _parameters(defense.denoiser)
    defense.begin_stage(None)
    assert [type(part).__name__ for part in defense.wrap(model)] == ["DnCNN", "BasicNet"]


def test_denoiser_pipeline_has_an_end_to_end_input_gradient(batch, tmp_path):
    classifier = build("denoiser", tmp_path).eval()
    x, y = batch
    predictor = classifier.predictor()
    through_both = input_gradient(predictor, x, y)
    assert through_both.abs().sum() > 0
    # No shortcut: the gradient goes through the denoiser, so it is not the classifier's own gradient.
    assert not torch.allclose(through_both, input_gradient(classifier.model, x, y))
    for parameter in classifier.defense.denoiser.parameters():
        assert parameter.grad is None


@pytest.mark.parametrize("defense", DEFENSES)
def test_randomized_predictors_are_detected_and_deterministic_ones_are_not(defense, batch, tmp_path):
    predictor = build(defense, tmp_path).eval().predictor()
    assert is_randomized(predictor, batch[0]) == (defense in RANDOMIZED)
    assert eot_draws(None, predictor, batch[0]) == (10 if defense in RANDOMIZED else 1)


def _trained_net(seed: int, batch) -> BasicNet:
    torch.manual_seed(seed)
    net = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = batch
    for _ in range(3 * seed + 2):  # members of different quality
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


def test_mixture_accuracy_is_the_exact_expectation_over_members(batch):
    x, y = batch
    members = [_trained_net(seed, batch) for seed in (1, 2, 3)]
    weights = [0.2, 0.3, 0.5]
    mixture = MixturePredictor(members, weights).eval()
    x_adv = PGD(eps=0.1, steps=5)(mixture, x, y)
    per_member = [(member(x_adv).argmax(1) == y).float().mean().item() for member in members]
    expected = sum(weight * accuracy for weight, accuracy in zip(weights, per_member))
    assert len(set(per_member)) > 1
    assert expected_correct(mixture, x_adv, y).mean().item() == pytest.approx(expected, abs=1e-6)


def test_mixture_is_attacked_through_the_expected_loss(batch):
    x, y = batch
    members = [_trained_net(seed, batch) for seed in (1, 2)]
    mixture = MixturePredictor(members, [0.25, 0.75])
    x = x.requires_grad_(True)
    expected_loss = sum(w * F.cross_entropy(m(x), y, reduction="sum") for w, m in zip([0.25, 0.75], members))
    (manual,) = torch.autograd.grad(expected_loss, x)
    assert torch.allclose(input_gradient(mixture, x.detach(), y), manual, atol=1e-6)


def test_mixture_samples_members_by_their_weights(batch):
    x, _ = batch
    members = [_trained_net(seed, batch) for seed in (1, 2)]
    mixture = MixturePredictor(members, [0.25, 0.75])
    picks_first = torch.cat([(mixture(x) == members[0](x)).all(1).float() for _ in range(40)]).mean().item()
    assert 0.18 < picks_first < 0.32


def test_random_mixture_reports_the_expectation_in_a_real_run(tmp_path):
    cfg = compose_config([*TINY, "defense=random_mixture", "defense.weights=[0.3,0.7]", "defense.epochs_per_member=1",
                          "eval=quick", "attack=fgsm"], tmp_path)
    results = robustlab.train.run(cfg)
    classifier = load_classifier(json.loads((tmp_path / "metrics.json").read_text())["checkpoint"])
    members = classifier.defense.members(classifier.model)
    datamodule = SyntheticDataModule(**{k: v for k, v in cfg.dataset.datamodule.items() if k != "_target_"})
    datamodule.setup()
    x, y = datamodule.test_set.tensors
    with torch.no_grad():
        per_member = [(member.eval()(x).argmax(1) == y).float().mean().item() for member in members]
    assert results.randomized and results.robust_acc_without_eot == {}  # exact: no EOT to compare with
    assert results.clean_acc == pytest.approx(0.3 * per_member[0] + 0.7 * per_member[1], abs=1e-6)
    # A mixture is also attacked by ARC, under both norms, and the worst case includes it.
    assert {"arc", "arc_l2"} <= set(results.robust_acc) and results.attacks["arc"]["_target_"].endswith("ARC")


def test_arc_is_added_only_for_a_finite_mixture(tmp_path):
    from robustlab.builders import build_evaluation

    cfg = compose_config([*TINY], tmp_path)
    evaluation = build_evaluation(cfg)
    x = torch.rand(4, 1, 28, 28)
    for defense, expected in (("none", False), ("noise_injection", False), ("random_mixture", True)):
        evaluation.plan(build(defense, tmp_path).eval().predictor(), x)
        assert ({"arc", "arc_l2"} <= set(evaluation.attacks)) == expected, defense


def test_max_strategy_loss_is_at_least_each_single_norm_loss(batch, tmp_path):
    x, y = batch
    classifier = build("mixed_adv_train", tmp_path)
    defense, model = classifier.defense, classifier.model
    torch.manual_seed(1)
    losses, _ = per_attack_losses(defense.attacks, model, x, y)
    single = {name: loss.mean().item() for name, loss in zip(defense.attacks, losses)}
    torch.manual_seed(1)
    worst = defense.training_loss(model, x, y).loss.item()  # the same adversarial examples (same random starts)
    assert set(single) == {"linf", "l2"}
    assert worst >= single["linf"] - 1e-6 and worst >= single["l2"] - 1e-6
    assert worst > min(single.values())
    defense.strategy = "avg"
    torch.manual_seed(1)
    assert defense.training_loss(model, x, y).loss.item() == pytest.approx(sum(single.values()) / 2, rel=1e-5)


def test_an_unknown_mixed_strategy_is_refused_with_its_full_key(tmp_path):
    with pytest.raises(InvalidValue, match=r"defense\.strategy.*'median'.*max"):
        build("mixed_adv_train", tmp_path, "defense.strategy=median")


def test_fast_adversarial_training_is_fgsm_with_a_random_start_and_a_pgd_guard(tmp_path):
    cfg = compose_config(["defense=fast_adv_train"], tmp_path)
    attack = build_classifier(compose_config(["dataset=synthetic", "defense=fast_adv_train"], tmp_path)).defense.attack
    assert (attack.steps, attack.random_start) == (1, True)
    assert attack.step_size == pytest.approx(1.25 * cfg.dataset.eps.linf)


def test_noise_layers_add_noise_after_named_blocks_without_stacking_hooks(batch):
    x, _ = batch
    torch.manual_seed(0)
    net = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25]).eval()
    block_outputs, next_inputs = [], []
    net.features[2].register_forward_hook(lambda module, inputs, output: block_outputs.append(output.detach()))
    net.features[3].register_forward_hook(lambda module, inputs, output: next_inputs.append(inputs[0].detach()))
    with torch.no_grad():
        NoisyModel(net, sigma=0.5, layers=["features.2"])(x)
        added = next_inputs[-1] - block_outputs[-1]
        assert added.std().item() == pytest.approx(0.5, rel=0.05)  # N(0, σ²) after the named block
        assert torch.equal(NoisyModel(net, sigma=0.0, layers=["features.2"])(x), net(x))  # σ = 0: the model
        net(x)
        assert torch.equal(next_inputs[-1], block_outputs[-1])  # no hook survives the noisy forward pass
        noisy = NoisyModel(net, sigma=0.5)
        assert not torch.equal(noisy(x), noisy(x))


def test_noise_after_a_layer_the_model_lacks_fails_before_training_with_its_full_key(tmp_path):
    with pytest.raises(InvalidValue, match=r"defense\.wrapper\.layers.*'layer9'"):
        build("noise_injection", tmp_path, "defense.wrapper.layers=[layer9]")


def test_noisy_model_is_evaluated_with_eot_and_the_single_draw_number_apart(tmp_path):
    results = robustlab.train.run(compose_config([*TINY, "defense=noise_injection", "eval=quick", "attack=pgd_linf",
                                                  "eval.n_samples=32"], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["randomized"] and metrics["accuracy_draws"] == 10
    assert set(metrics["robust_acc_without_eot"]) == {"pgd_linf"}
    assert set(metrics["robust_acc"]) == {"pgd_linf", "worst_case"}
    assert results.robust_acc == metrics["robust_acc"]


@pytest.mark.parametrize("setting, compared", [(["pgd_linf", "pgd_l2"], {"pgd_linf", "pgd_l2"}),
                                               (True, {"fgsm", "pgd_linf", "pgd_l2"}), ([], set()), (False, set())])
def test_the_single_draw_comparison_runs_for_the_attacks_named_by_compare_without_eot(setting, compared):
    """eval.compare_without_eot: by default PGD-20 of each norm (conf/eval/quick.yaml), `true` every attack."""
    from robustlab.evaluation.engine import WITHOUT_EOT, Evaluation

    attacks = {"fgsm": PGD(eps=0.1, steps=1), "pgd_linf": PGD(eps=0.1), "pgd_l2": PGD(eps=1.5, norm="l2"),
               "pgd_fixed": PGD(eps=0.1, eot_samples=4)}  # its draws are set: never compared
    evaluation = Evaluation(attacks, compare_without_eot=setting)
    net = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25]).eval()
    evaluation.plan(NoisyModel(net, sigma=0.5), torch.rand(8, 1, 28, 28))
    assert {name.removesuffix(WITHOUT_EOT) for name in evaluation.passes if name.endswith(WITHOUT_EOT)} == compared
    evaluation.plan(net, torch.rand(8, 1, 28, 28))  # deterministic: nothing to compare
    assert not [name for name in evaluation.passes if name.endswith(WITHOUT_EOT)]
    default = OmegaConf.load(ROOT / "conf" / "eval" / "quick.yaml").compare_without_eot
    assert list(default) == ["pgd_linf", "pgd_l2"]


def test_compare_without_eot_refuses_a_lone_name_naming_its_key():
    from robustlab.evaluation.engine import Evaluation

    with pytest.raises(InvalidValue, match=r"eval.compare_without_eot='pgd_linf'.*list of attack names"):
        Evaluation({"pgd_linf": PGD(eps=0.1)}, compare_without_eot="pgd_linf")


def estimates(model, x, y, draws: int, repeats: int, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`repeats` EOT estimates of the per-image loss and of its gradient, batched draws or one pass per draw."""
    from robustlab.attacks import expectation
    from robustlab.attacks.gradient import loss_and_gradient

    expectation._PER_SAMPLE[model] = batched  # which way `per_example_loss` takes the draws
    torch.manual_seed(0)
    pairs = [loss_and_gradient(model, x, y, draws) for _ in range(repeats)]
    return torch.stack([loss for loss, _ in pairs]), torch.stack([grad for _, grad in pairs])


def test_batched_eot_draws_agree_in_distribution_with_one_pass_per_draw():
    """One forward pass over the batch repeated `draws` times estimates the same expected loss and gradient as
    `draws` passes: per image, the two means of 40 estimates differ by less than 4.5 standard errors, and the
    estimates' spreads match."""
    from robustlab.attacks.expectation import randomness_per_sample

    torch.manual_seed(1)
    net = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25]).eval()
    noisy = NoisyModel(net, sigma=0.5)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    assert randomness_per_sample(noisy, x)
    (loss_b, grad_b), (loss_l, grad_l) = (estimates(noisy, x, y, 10, 40, batched) for batched in (True, False))
    # (On the CPU the generator fills the repeated batch with the numbers it gives pass by pass, so the two are
    # often equal; elsewhere they are different draws from the same distribution, which is what is checked.)
    error = (loss_b.var(0) / 40 + loss_l.var(0) / 40).sqrt()
    assert ((loss_b.mean(0) - loss_l.mean(0)).abs() < 4.5 * error).all()
    assert 0.5 < float(loss_b.var(0).mean() / loss_l.var(0).mean()) < 2.0
    cosine = F.cosine_similarity(grad_b.mean(0).flatten(1), grad_l.mean(0).flatten(1), dim=1)
    assert (cosine > 0.9).all(), cosine


class NoisePerBatch(torch.nn.Module):
    """A predictor drawing one noise value for the whole batch: copies of one image are answered alike."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x + 0.3 * torch.randn(())).clamp(0, 1))


def test_a_predictor_drawing_once_per_batch_gets_one_pass_per_draw_and_the_probe_draws_nothing():
    from robustlab.attacks.expectation import per_example_loss, randomness_per_sample

    net = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25]).eval()
    predictor = NoisePerBatch(net)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert not randomness_per_sample(predictor, x)
    assert torch.equal(torch.rand(3), expected)  # the probe left the random stream as it was
    calls = []
    predictor.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    per_example_loss(predictor, x, y, draws=5)
    assert calls == [8] * 5  # independent draws: one pass each


def test_deterministic_runs_report_no_eot_numbers(tmp_path):
    robustlab.train.run(compose_config([*TINY, "eval=quick", "eval.n_samples=32"], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert not metrics["randomized"] and metrics["robust_acc_without_eot"] == {} and metrics["accuracy_draws"] == 1


def test_adversarial_training_of_the_noisy_model_is_a_composition(tmp_path):
    classifier = build_classifier(compose_config(["dataset=synthetic", "experiment=adv_train_noisy"], tmp_path))
    assert type(classifier.defense).__name__ == "AdversarialTraining"
    assert isinstance(classifier.predictor(), NoisyModel)


@pytest.fixture(scope="module")
def denoiser_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("denoiser")
    overrides = [*TINY, "defense=denoiser", "defense.classifier_epochs=1", "defense.denoiser_epochs=1",
                 "eval=quick", "attack=fgsm"]
    results = robustlab.train.run(compose_config(overrides, output))
    return output, overrides, results


def test_denoiser_logs_psnr_before_and_after_denoising(denoiser_run):
    output, _, results = denoiser_run
    psnr = results.defense_metrics["fgsm"]
    assert set(psnr) == {"psnr_adversarial", "psnr_denoised"}
    # FGSM at ε = 0.1 moves every pixel by 0.1 unless clipped at 0 or 1: PSNR of 20 dB or a little more.
    assert 20 - 1e-3 <= psnr["psnr_adversarial"] < 25 and psnr["psnr_denoised"] > 0
    log_dir = Path(json.loads((output / "metrics.json").read_text())["tensorboard"])
    assert (log_dir / "classifier").is_dir() and (log_dir / "denoiser").is_dir()


def test_a_killed_multi_stage_training_resumes_at_its_stage(denoiser_run, tmp_path, caplog):
    output, overrides, results = denoiser_run
    checkpoint_root = Path(json.loads((output / "metrics.json").read_text())["checkpoint"]).parents[1]
    (checkpoint_root / "trained.json").unlink()
    (checkpoint_root / "stage2-denoiser" / "trained.json").unlink()
    (output / "metrics.json").unlink()
    with caplog.at_level("INFO", logger="robustlab"):
        rerun = robustlab.train.run(compose_config(overrides, output))
    printed = caplog.text
    assert "stage classifier: reusing" in printed and "stage denoiser: resuming" in printed
    assert rerun.clean_acc == results.clean_acc


@pytest.mark.slow  # 26 s; the default suite trains the denoiser in both stages (denoiser_run) and resumes a
# killed multi-stage training at its stage
def test_denoiser_can_load_its_classifier_instead_of_training_it(denoiser_run, tmp_path, caplog):
    output, _, _ = denoiser_run
    classifier_checkpoint = next((Path(json.loads((output / "metrics.json").read_text())["checkpoint"]).parents[1]
                                  / "stage1-classifier").glob("epoch_*.ckpt"))
    cfg = compose_config([*TINY, "defense=denoiser", f"defense.classifier_checkpoint={classifier_checkpoint}",
                          "defense.denoiser_epochs=1", "eval=quick", "attack=fgsm"], tmp_path)
    with caplog.at_level("INFO", logger="robustlab"):
        robustlab.train.run(cfg)
    assert "stage classifier: loading the classifier" in caplog.text
    checkpoint_root = Path(json.loads((tmp_path / "metrics.json").read_text())["checkpoint"]).parents[1]
    assert not (checkpoint_root / "stage1-classifier").exists()
    trained = torch.load(classifier_checkpoint, weights_only=True)["state_dict"]
    final_path = json.loads((tmp_path / "metrics.json").read_text())["checkpoint"]
    final = torch.load(final_path, weights_only=True)["state_dict"]
    assert all(torch.equal(trained[key], final[key]) for key in trained if key.startswith("model."))


def test_evaluate_attacks_a_multi_stage_checkpoint_whole(denoiser_run, tmp_path):
    """evaluate.py rebuilds DnCNN → classifier from the final checkpoint alone and attacks both, as training did."""
    import robustlab.evaluate

    output, _, results = denoiser_run
    checkpoint = json.loads((output / "metrics.json").read_text())["checkpoint"]
    cfg = compose_config([f"ckpt_path={checkpoint}", "attack=apgd_ce", "attack.steps=10", "eval=quick",
                          "eval.audit.enabled=false"], tmp_path, config_name="evaluate")
    evaluated = robustlab.evaluate.run(cfg)
    assert evaluated.clean_acc == results.clean_acc
    assert set(evaluated.defense_metrics["apgd_ce"]) == {"psnr_adversarial", "psnr_denoised"}
    assert json.loads((tmp_path / "metrics.json").read_text())["defense"] == "denoiser"
