"""BPDA: a non-differentiable preprocessing step attacked through its stand-in; defense=bit_depth end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, run_script

from robustlab.attacks import PGD
from robustlab.attacks.gradient import input_gradient
from robustlab.errors import InvalidValue
from robustlab.models import BitDepthReduction, Preprocessed
from robustlab.models.preprocessing import backward_through_stand_ins


@pytest.fixture(scope="module")
def squeezed(standard_net):
    return Preprocessed(standard_net, BitDepthReduction(bits=4)).eval()


def test_bpda_gives_a_gradient_where_autograd_gives_zero(squeezed, standard_net, noisy_synthetic):
    x, y = noisy_synthetic.test_set.tensors[0][:32], noisy_synthetic.test_set.tensors[1][:32]
    assert input_gradient(squeezed, x, y).abs().max() == 0  # rounding: zero almost everywhere
    with backward_through_stand_ins(squeezed):
        through = input_gradient(squeezed, x, y)
        with torch.no_grad():
            assert torch.equal(squeezed(x), standard_net(squeezed.preprocess.transform(x)))  # forward unchanged
    assert (through.flatten(1).abs().amax(1) > 0).all()
    # The identity stand-in: the classifier's gradient at the reduced image.
    reduced = squeezed.preprocess.transform(x)
    assert torch.allclose(through, input_gradient(standard_net, reduced, y), atol=1e-6)
    assert squeezed.preprocess.bpda is False  # restored after the block


def test_pgd_breaks_bit_depth_reduction_only_through_bpda(squeezed, standard_net, noisy_synthetic):
    x, y = noisy_synthetic.test_set.tensors[0][:128], noisy_synthetic.test_set.tensors[1][:128]

    def accuracy(model, x_adv):
        with torch.no_grad():
            return (model(x_adv).argmax(1) == y).float().mean().item()

    attack = PGD(eps=0.1, steps=20, random_start=False)
    torch.manual_seed(0)
    plain = accuracy(squeezed, attack(squeezed, x, y))
    with backward_through_stand_ins(squeezed):
        torch.manual_seed(0)
        bpda = accuracy(squeezed, attack(squeezed, x, y))
    undefended = accuracy(standard_net, attack(standard_net, x, y))
    assert plain == accuracy(squeezed, x)  # no gradient, no step
    assert bpda <= undefended + 0.05


def test_bit_depth_needs_a_sensible_number_of_bits():
    for bits in (0, 17, 2.5, True):
        with pytest.raises(InvalidValue, match="bits"):
            BitDepthReduction(bits=bits)


def test_bit_depth_run_is_flagged_without_bpda_and_broken_with_it(tmp_path):
    """`python train.py defense=bit_depth eval.bpda=false`: the attacks see zero gradients and the audit flags f;
    `python train.py defense=bit_depth` (BPDA, the default) reuses the training and breaks it, no flag f."""
    records = {}
    for bpda in ("false", "true"):
        result = run_script("train.py", "defense=bit_depth", *TINY, f"eval.bpda={bpda}", "eval.audit.n_samples=64",
                            "eval.audit.square_queries=100", output_root=tmp_path)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        path = result.stdout.strip().splitlines()[-1].removeprefix("metrics: ")
        records[bpda] = json.loads(open(path).read())
    plain, bpda = records["false"], records["true"]
    assert plain["audit"]["zero_gradients"]["flagged"] and plain["audit"]["zero_gradients"]["value"] == 1.0
    assert not bpda["audit"]["zero_gradients"]["flagged"]
    assert bpda["training_reused"] and bpda["clean_acc"] == plain["clean_acc"]
    assert plain["robust_acc"]["pgd_linf"] > 0.9 and bpda["robust_acc"]["pgd_linf"] < 0.1
