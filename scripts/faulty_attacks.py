"""`python scripts/faulty_attacks.py`: what robustlab records for each faulty attack of tests/test_integrity.py.

A BatchNorm CNN (the tests' user file, written outside the repository) trained 2 epochs on Fashion-MNIST, then
its first 300 test images evaluated by `robustlab.evaluate_model` (the default suite plus the faulty attack, no
audit) once honestly (`attack=none`) and once per faulty attack. Prints a markdown table: what was recorded, the
faulty column against the clean accuracy of the same images, and whether the clean and suite columns equal the
honest run's.
"""

import sys
import tempfile
from pathlib import Path

import torch

import robustlab
from robustlab.data import FashionMNISTDataModule
from robustlab.errors import RobustlabError
from robustlab.evaluation.record import decode_per_image

SUITE = ("fgsm", "pgd_linf", "pgd_l2")
COMMON = ["eval.audit.enabled=false", "eval.image_grid=0", "logger=none"]


def trained_model(module, tests) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    data = FashionMNISTDataModule(root="data", batch_size=128)
    data.prepare_data()
    data.setup("fit")
    model = tests.trained_briefly(module.BatchNormNet(), *data.split("train").tensors, epochs=2, batch_size=128)
    test_images, test_labels = data.split("test").tensors
    return model, test_images[:300], test_labels[:300]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_integrity

    directory = Path(tempfile.mkdtemp())
    (directory / "faulty.py").write_text(test_integrity.FAULTY)
    sys.path.insert(0, str(directory))
    import faulty

    model, images, labels = trained_model(faulty, test_integrity)
    honest = robustlab.evaluate_model(model, images, labels, dataset="fashion_mnist", attack="none", overrides=COMMON)
    clean = decode_per_image(honest.per_image["clean"])[:len(labels)]
    fair = f"{100 * sum(clean) / len(clean):.1f}%"
    print(f"honest run: clean {100 * honest.clean_acc:.1f}%, "
          + ", ".join(f"{name} {100 * value:.1f}%" for name, value in honest.robust_acc.items()))
    print("| faulty attack | what robustlab recorded | its column | clean accuracy of those images "
          "| other columns equal the honest run's |\n|---|---|---:|---:|---|")
    for name in sorted(test_integrity.FAULTS):
        try:
            record = robustlab.evaluate_model(model, images, labels, dataset="fashion_mnist", attack="none",
                                              overrides=[*test_integrity.configured(name), *COMMON])
        except RobustlabError as error:
            print(f"| {name} | refused before the run: {error} | – | {fair} | – |")
            continue
        check = record.threat_model[name]
        recorded = (f"changed {check.get('changed', {})}; outside {check['violations']} of {record.n_eval}, "
                    f"non-finite {check['non_finite']}")
        same = record.clean_acc == honest.clean_acc and all(record.robust_acc[key] == honest.robust_acc[key]
                                                            for key in SUITE)
        print(f"| {name} | {recorded} | {100 * record.robust_acc[name]:.1f}% | {fair} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
