"""`python scripts/peers.py <sweep or runs directory> [--n 1000]`: the threat-model table of every run there, and
beside its L1 and L0 figures a peer's on the same model and images: adv-lib's APGD under L1 (100 steps, the same
budget) and its two L0 minimum-norm attacks, FMN and σ-zero (1000 steps each; an image counts as broken at k if
the smallest adversarial perturbation found changes at most k pixels). A peer's image outside the budget, or not
misclassified, counts as not broken. Needs the dev extra (adv-lib). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

import robustlab
from robustlab.api import compose_evaluation
from robustlab.attacks.base import outside_threat_model
from robustlab.builders import build_datamodule
from robustlab.evaluation.record import RunRecord
from robustlab.evaluation.statistics import half_width, wilson_interval
from robustlab.evaluation.threats import AVERAGE, UNION


def peer_attacks(eps_l1: float, k: int) -> dict:
    """name → (attack(model, x, y) -> x_adv, the ball its images are held to)."""
    from adv_lib.attacks.auto_pgd import apgd
    from adv_lib.attacks.fast_minimum_norm import fmn
    from adv_lib.attacks.sigma_zero import sigma_zero

    return {"adv-lib APGD-L1": (lambda m, x, y: apgd(m, x, y, eps=eps_l1, norm=1, n_iter=100), ("l1", eps_l1)),
            "adv-lib FMN-L0": (lambda m, x, y: fmn(m, x, y, norm=0, steps=1000), ("l0", float(k))),
            "adv-lib σ-zero": (lambda m, x, y: sigma_zero(m, x, y, num_steps=1000), ("l0", float(k)))}


def peer_accuracy(model, attack, threat: tuple[str, float], x, y, batch: int = 250) -> tuple[float, float]:
    """Robust accuracy under a peer (broken: misclassified, and inside the ball by the evaluation's own check,
    `outside_threat_model`) and its milliseconds per image."""
    standing, started = [], time.perf_counter()
    for start in range(0, len(x), batch):
        xb, yb = x[start:start + batch], y[start:start + batch]
        found = attack(model, xb, yb).detach()
        with torch.no_grad():
            broken = (model(found).argmax(1) != yb) & ~outside_threat_model([threat], xb, found)[0]
        standing.append(~broken)
    return float(torch.cat(standing).float().mean()), 1000 * (time.perf_counter() - started) / len(x)


@functools.cache
def test_split(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's test images and labels, loaded once per dataset."""
    data = build_datamodule(compose_evaluation([f"dataset={dataset}"], Path(tempfile.mkdtemp())).dataset)
    data.setup("test")
    return data.split("test").tensors


def cell(accuracy: float, n: int) -> str:
    return f"{100 * accuracy:.1f} ±{100 * half_width(wilson_interval(accuracy, n)):.1f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--n", type=int, default=None, help="images (default: each record's n_eval)")
    arguments = parser.parse_args(argv)
    records = [RunRecord.read(path) for path in sorted(arguments.directory.rglob("metrics.json"))]
    header = ["defense", "clean", "L∞", "L2", "L1", "adv-lib APGD-L1", "L0", "adv-lib FMN-L0", "adv-lib σ-zero",
              "union", "average", "ms/image (ours L1, peer L1; ours L0, FMN, σ-zero)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        threats = record.threats or {}
        if "l1" not in threats or "l0" not in threats:
            continue
        n = arguments.n or record.n_eval
        x, y = (tensor[:n] for tensor in test_split(record.dataset))
        model = robustlab.load_predictor(record.checkpoint)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        torch.manual_seed(0)
        peers = {name: peer_accuracy(model, attack, threat, x, y)
                 for name, (attack, threat) in peer_attacks(record.eps["l1"], int(record.eps["l0"])).items()}
        ours = {norm: record.attack_ms_per_image.get(threats[norm]["strongest"], float("nan")) for norm in ("l1", "l0")}
        times = (f"{ours['l1']:.1f}, {peers['adv-lib APGD-L1'][1]:.1f}; {ours['l0']:.1f}, "
                 f"{peers['adv-lib FMN-L0'][1]:.1f}, {peers['adv-lib σ-zero'][1]:.1f}")
        row = [record.defense, cell(record.clean_acc, record.n_clean),
               *(cell(threats[norm]["robust_acc"], n) if norm in threats else "–" for norm in ("linf", "l2", "l1")),
               cell(peers["adv-lib APGD-L1"][0], n), cell(threats["l0"]["robust_acc"], n),
               cell(peers["adv-lib FMN-L0"][0], n), cell(peers["adv-lib σ-zero"][0], n),
               cell(threats[UNION]["robust_acc"], n), cell(threats[AVERAGE]["robust_acc"], n), times]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
