"""The report script turns a directory of metrics.json files into the expected CSV and markdown."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from robustlab.evaluation.audit import LETTERS
from robustlab.evaluation.statistics import wilson_interval
from robustlab.report import collect_rows, read_records, write_report


def audit_record(flagged: str = "") -> dict:
    return {name: {"flagged": letter in flagged, "value": 0.0, "limit": 0.0, "detail": "", "letter": letter}
            for name, letter in LETTERS.items()}


EVALUATION_MODULES = {"robustlab.attacks.pgd": "0a1b2c3d4e5f", "robustlab.runs": "5f4e3d2c1b0a"}
PROVENANCE = {"robustlab": "0.1.0", "git_commit": "065b4d4b562cb8fca405161bfe9632cac2816abe", "git_dirty": False,
              "torch": "2.14.1", "device": "AMD EPYC", "precision": "32-true"}


def write_cell(directory: Path, defense: str, clean: float, robust: dict, flagged: str = "", train: float = 10.0,
               without_eot: dict | None = None, attack: str = "pgd_linf",
               modules: dict | None = None, **extra) -> None:
    run = directory / "fashion_mnist" / "basic_net" / defense / f"{attack}-{extra.get('seed', 0)}123"
    run.mkdir(parents=True)
    record = {"dataset": "fashion_mnist", "model": "basic_net", "defense": defense, "attack": attack,
              "clean_acc": clean, "robust_acc": robust, "robust_acc_without_eot": without_eot or {},
              "attack_ms_per_image": {name: 1.5 for name in robust if name != "worst_case"},
              "audit": audit_record(flagged), "curves": {"pgd_linf": {"default_eps": 0.1, "eps": [0.0, 0.1, 0.2],
                                                                      "accuracy": [clean, robust["pgd_linf"], 0.0]}},
              "randomized": bool(without_eot), "n_eval": 1000, "train_seconds": train,
              "evaluation_code": "c0de00000001",
              "evaluation_modules": modules or EVALUATION_MODULES, "provenance": PROVENANCE, **extra}
    (run / "metrics.json").write_text(json.dumps(record))


def sweep(directory: Path) -> Path:
    write_cell(directory, "none", 0.9, {"fgsm": 0.13, "pgd_linf": 0.02, "worst_case": 0.01}, train=45.0)
    write_cell(directory, "adv_train", 0.77, {"fgsm": 0.68, "pgd_linf": 0.64, "worst_case": 0.60}, train=217.0)
    write_cell(directory, "noise_injection", 0.85, {"fgsm": 0.5, "pgd_linf": 0.7, "worst_case": 0.7}, flagged="c",
               without_eot={"fgsm": 0.6, "pgd_linf": 0.8})
    return directory


def test_report_writes_the_expected_csv(tmp_path):
    paths = write_report(sweep(tmp_path))
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [row["defense"] for row in rows] == ["adv_train", "noise_injection", "none"]
    assert list(rows[0])[:7] == ["dataset", "model", "defense", "clean_acc", "fgsm", "pgd_linf", "worst_case"]
    adv = rows[0]
    assert (adv["clean_acc"], adv["pgd_linf"], adv["worst_case"], adv["audit_flags"], adv["train_seconds"]) == \
        ("0.7700", "0.6400", "0.6000", "", "217.0")
    assert rows[1]["audit_flags"] == "c" and rows[1]["randomized"] == "True"


def test_report_writes_the_expected_markdown(tmp_path):
    text = write_report(sweep(tmp_path))["markdown"].read_text()
    assert "| defense | clean | fgsm | pgd_linf | worst_case | audit | train s |" in text
    # ± half the 95% Wilson interval on n_eval = 1000 images (these records give no n_clean: no interval there)
    assert "| adv_train | 77.0 | 68.0 ±2.9 | 64.0 ±3.0 | 60.0 ±3.0 | trusted | 217 |" in text
    # flagged, and never re-attacked (a record without escalation): still flagged
    assert "| noise_injection | 85.0 | 50.0 ±3.1 | 70.0 ±2.8 | 70.0 ±2.8 | ⚑c still flagged | 10 |" in text
    assert "WITHOUT EOT" in text and "| noise_injection | 60.0 | 80.0 |" in text
    # The flagged row is out of the running, however high its number.
    assert "**Highest worst-case robust accuracy: adv_train** (60.0%) (among rows trusted or escalated)" in text
    assert "not tested per image" in text  # these records predate per-image correctness
    assert "| none | pgd_linf | 2.0 |" in text and "| noise_injection | fgsm | 50.0 |" in text
    assert "- **c** `pgd_weaker_than_fgsm`: noise_injection" in text


def test_report_files_exist_and_rerun_is_identical(tmp_path):
    directory = sweep(tmp_path)
    first = write_report(directory)
    contents = {kind: first[kind].read_bytes() for kind in ("csv", "markdown")}
    assert first["heatmap"].stat().st_size > 0 and first["curves"].stat().st_size > 0
    assert any(first["tensorboard"].rglob("events.out.tfevents.*"))
    second = write_report(directory)
    assert {kind: second[kind].read_bytes() for kind in ("csv", "markdown")} == contents


def test_cells_from_several_evaluations_of_one_training_merge(tmp_path):
    write_cell(tmp_path, "none", 0.9, {"fgsm": 0.1, "pgd_linf": 0.02, "worst_case": 0.01})
    write_cell(tmp_path, "none", 0.9, {"pgd_linf": 0.02, "square": 0.05, "worst_case": 0.02}, attack="square")
    (row,) = collect_rows(read_records(tmp_path)[0])
    # One training evaluated twice: one row with every attack's number; its worst case is the lower of the two
    # evaluations' (each bounds all of its own attacks).
    assert row.robust_acc == {"fgsm": 0.1, "pgd_linf": 0.02, "square": 0.05, "worst_case": 0.01}
    assert len(row.sources) == 2 and row.seeds == [None] and row.clean_acc == 0.9


def test_report_script_prints_the_markdown(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(sweep(tmp_path))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Attack × defense matrix") and "REPORT.md" in result.stderr


def test_matrix_sweep_writes_the_report_and_a_rerun_only_reads(tmp_path):
    """sweep=matrix end to end on tiny data, over two seeds: the Hydra callback writes the report, which
    aggregates the seeds per defense; each seed trains its own model; a re-run retrains nothing."""
    import time

    from conftest import TINY, run_script

    overrides = ["-m", "sweep=matrix", "hydra.sweeper.params.defense='none,fast_adv_train'", "seed=0,1", *TINY,
                 "logger=none",
                 "eval.n_samples=32", "eval.audit.n_samples=16", "eval.audit.square_queries=50",
                 "eval.attacks.apgd_ce.steps=10", "eval.attacks.square.queries=50", "eval.attacks.a3.steps=10",
                 "eval.attacks.a3.target_steps=10", "eval.attacks.a3.rounds=2", "eval.attacks.apgd_l1.steps=10",
                 "eval.attacks.pgd_l0.steps=5", "eval.attacks.sparse_rs.queries=50"]
    started = time.perf_counter()
    first = run_script("train.py", *overrides, output_root=tmp_path)
    first_seconds = time.perf_counter() - started
    assert first.returncode == 0, first.stderr[-3000:]
    report = tmp_path / "sweeps" / "matrix" / "report"
    text = (report / "REPORT.md").read_text()
    assert "| fast_adv_train |" in text and "| none |" in text and "apgd_ce" in text and "square" in text
    assert (report / "heatmap.png").is_file() and (report / "results.csv").is_file()
    assert "## Over seeds" in text and "| fast_adv_train | 0, 1 |" in text and "| none | 0, 1 |" in text
    records = [json.loads(path.read_text()) for path in (tmp_path / "sweeps" / "matrix").rglob("metrics.json")]
    assert len(records) == 4 and {"fgsm", "pgd_linf", "pgd_l2", "apgd_ce", "square", "a3", "apgd_l1", "pgd_l0",
                                  "sparse_rs"} <= set(records[0]["threat_model"])  # every attack checked
    assert all(set(record["threats"]) == {"linf", "l2", "l1", "l0", "union", "average"} for record in records)
    threat_table = text.split("## Threat models")[1].split("\n## ")[0]
    assert "| defense | clean | L∞ | L2 | L1 | L0 | union | average |" in threat_table
    assert "### L1 attacks alone" in text and "### L0 attacks alone" in text
    assert all(check["violations"] == 0 for record in records for check in record["threat_model"].values())
    # eval=matrix draws curves for the cheap attacks and A3 only (eval.audit.curve_attacks)
    assert all(set(record["curves"]) == {"fgsm", "pgd_linf", "pgd_l2", "a3"} for record in records)
    assert "Every attack stayed inside its threat model (2 row(s) checked)" in text
    checkpoints = tmp_path / "checkpoints" / "synthetic" / "basic_net"
    assert len(list((checkpoints / "fast_adv_train").glob("*/trained.json"))) == 2  # a training per seed
    started = time.perf_counter()
    second = run_script("train.py", *overrides, output_root=tmp_path)
    assert second.returncode == 0 and second.stdout.count("run already finished") == 4
    assert (report / "REPORT.md").read_text() == text
    assert time.perf_counter() - started < first_seconds


def test_a_hostile_sweep_directory_is_reported_from_what_is_usable(tmp_path):
    sweep(tmp_path)
    runs = tmp_path / "fashion_mnist" / "basic_net"
    (runs / "trades" / "pgd_linf-1").mkdir(parents=True)
    full = json.dumps({"dataset": "fashion_mnist", "model": "basic_net", "defense": "trades", "clean_acc": 0.8,
                       "robust_acc": {"pgd_linf": 0.6}})
    (runs / "trades" / "pgd_linf-1" / "metrics.json").write_text(full[: len(full) // 2])  # truncated
    (runs / "other" / "x-1").mkdir(parents=True)
    (runs / "other" / "x-1" / "metrics.json").write_text('{"loss": 0.1}')  # JSON, not a robustlab record
    (runs / "old" / "pgd_linf-1").mkdir(parents=True)
    old = {"dataset": "fashion_mnist", "model": "basic_net", "defense": "old", "clean_acc": 0.8,
           "robust_acc": {"pgd_linf": 0.6}}  # a record from before the code version was recorded
    (runs / "old" / "pgd_linf-1" / "metrics.json").write_text(json.dumps(old))
    (runs / "killed" / "pgd_linf-1").mkdir(parents=True)  # an empty run directory
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "| adv_train |" in text and "| trades |" not in text and "| old |" not in text
    assert "- fashion_mnist/basic_net/trades/pgd_linf-1/metrics.json: not valid JSON, probably truncated" in text
    assert "- fashion_mnist/basic_net/other/x-1/metrics.json: not a robustlab record (no dataset, model, defense, " \
           "clean_acc, robust_acc)" in text
    assert "- fashion_mnist/basic_net/old/pgd_linf-1/metrics.json: written by an older robustlab" in text
    assert "- fashion_mnist/basic_net/killed/pgd_linf-1/: a run directory without metrics.json" in text


def test_a_directory_without_results_gives_one_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(tmp_path / "empty")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"robustlab: no robustlab results (metrics.json) under {tmp_path / 'empty'}")
    assert "Traceback" not in result.stderr


def per_image(*runs: tuple[int, int]) -> str:
    """Per-image correctness as metrics.json writes it: `(count, value)` runs, e.g. (3, 1), (2, 0) → "1,1,1,0,0"."""
    return ",".join(str(value) for count, value in runs for _ in range(count))


def write_seed(directory: Path, defense: str, seed: int, worst: list[tuple[int, int]], *,
               linf: list[tuple[int, int]] | None = None, l2: list[tuple[int, int]] | None = None) -> None:
    """A record of 100 images: clean right on all, the worst case as given; attacks pgd_linf and pgd_l2."""
    linf, l2 = linf or worst, l2 or worst
    columns = {"clean": [(100, 1)], "pgd_linf": linf, "pgd_l2": l2, "worst_case": worst}
    accuracy = {name: sum(count * value for count, value in runs) / 100 for name, runs in columns.items()}
    write_cell(directory, defense, 1.0, {name: accuracy[name] for name in ("pgd_linf", "pgd_l2", "worst_case")},
               seed=seed, n_eval=100, n_clean=100, per_image={name: per_image(*runs) for name, runs in columns.items()},
               attacks={"pgd_linf": {"norm": "linf"}, "pgd_l2": {"norm": "l2"}},
               attack_passes_per_image={"pgd_linf": {"forward": 20.25, "backward": 20.0}})


def test_seeds_aggregate_into_mean_std_and_interval(tmp_path):
    for seed, right in enumerate([55, 62, 69]):
        write_seed(tmp_path, "adv_train", seed, [(right, 1), (100 - right, 0)])
    for seed, right in enumerate([61, 62, 63]):
        write_seed(tmp_path, "trades", seed, [(right, 1), (100 - right, 0)])
    spread, close = collect_rows(read_records(tmp_path)[0])
    summary = spread.summary["worst_case"]
    assert spread.seeds == [0, 1, 2] and summary.seeds == 3
    assert abs(summary.mean - 0.62) < 1e-12 and abs(summary.std - 0.07) < 1e-12
    # Seeds far apart: the t-interval of the mean, t₀.₉₇₅,₂ · 0.07 / √3 = 4.3027 · 0.0404 = 0.1739, is the wider.
    assert abs(summary.interval[0] - 0.4461) < 1e-4 and abs(summary.interval[1] - 0.7939) < 1e-4
    # Seeds close together: the pooled Wilson interval of 300 images at 62% is the wider.
    assert close.summary["worst_case"].interval == wilson_interval(0.62, 300)
    text = write_report(tmp_path)["markdown"].read_text()
    assert "## Over seeds" in text and "| adv_train | 0, 1, 2 |" in text and "62.0 ±7.0 (3) [44.6, 79.4]" in text
    assert "| adv_train | 100.0 ±0.6 | 62.0 ±17.4 | 62.0 ±17.4 | 62.0 ±17.4 | trusted |" in text
    row = next(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert row["seeds"] == "3" and row["worst_case/std"] == "0.0700"
    assert row["attack_forward_passes_per_image/pgd_linf"] == "20.25" and "| adv_train | 20 + 20 | – |" in text


def test_the_answer_names_a_winner_only_when_it_wins_per_image(tmp_path):
    """Same 100 images. `strong` is right on 20 images `weak` gets wrong and never the reverse: exact McNemar,
    p = 2 · 0.5²⁰ = 1.9e-06, a win. `close` has the same 70% but on other images (2 each way, p = 1): a tie."""
    write_seed(tmp_path / "win", "strong", 0, [(70, 1), (30, 0)])
    write_seed(tmp_path / "win", "weak", 0, [(50, 1), (50, 0)])
    text = write_report(tmp_path / "win")["markdown"].read_text()
    assert "**Most effective defense: strong** — worst-case robust accuracy 70.0%" in text
    assert "p = 1.9e-06, exact McNemar, 100 images" in text and "| weak | 50.0 | 20 / 0 | 1.9e-06 |" in text
    write_seed(tmp_path / "tie", "strong", 0, [(70, 1), (30, 0)])
    write_seed(tmp_path / "tie", "close", 0, [(2, 0), (68, 1), (2, 1), (28, 0)])
    text = write_report(tmp_path / "tie")["markdown"].read_text()
    assert "**No single most effective defense**: close, strong are tied" in text  # equal: by name
    assert "| strong | 70.0 | 2 / 2 | 1 |" in text


def test_each_threat_model_gets_its_own_answer(tmp_path):
    write_seed(tmp_path, "linf_expert", 0, [(30, 1), (70, 0)], linf=[(80, 1), (20, 0)], l2=[(30, 1), (70, 0)])
    write_seed(tmp_path, "l2_expert", 0, [(35, 1), (65, 0)], linf=[(40, 1), (60, 0)], l2=[(85, 1), (15, 0)])
    text = write_report(tmp_path)["markdown"].read_text()
    union, linf, l2 = (text.split(f"### {title}")[1].split("###")[0]
                       for title in ("The union of the threat models", "L∞ attacks alone", "L2 attacks alone"))
    assert "**Most effective defense: linf_expert** — worst-case robust accuracy 80.0%" in linf
    assert "**Most effective defense: l2_expert** — worst-case robust accuracy 85.0%" in l2
    assert "l2_expert" in union.split("\n\n")[1]  # 35% vs 30% over all attacks


def test_an_escalated_cell_shows_the_lower_number_and_its_trust_mark(tmp_path):
    write_cell(tmp_path, "adv_train", 0.77, {"fgsm": 0.68, "pgd_linf": 0.64, "worst_case": 0.60}, flagged="e",
               escalation={"trust": "escalated", "flags": "e", "without_remedy": "",
                           "robust_acc": {"fgsm": 0.68, "pgd_linf": 0.61, "worst_case": 0.58},
                           "remedies": {"pgd_linf/steps×5,restarts=5": {"accuracy": 0.61}}, "seconds": 12.0})
    write_cell(tmp_path, "trades", 0.79, {"fgsm": 0.70, "pgd_linf": 0.59, "worst_case": 0.55})
    text = write_report(tmp_path)["markdown"].read_text()
    assert "| adv_train | 77.0 | 68.0 ±2.9 | 61.0 ±3.0 | 58.0 ±3.1 | ⚑e escalated | 10 |" in text
    assert "| adv_train | e | escalated | 60.0 → 58.0 | pgd_linf/steps×5,restarts=5 61.0 | – | 12.0 |" in text
    # escalated rows compete in the answer, with their escalated number
    assert "**Highest worst-case robust accuracy: adv_train** (58.0%)," in text


def test_the_report_never_merges_two_different_targets_under_one_name(tmp_path):
    """Two users' classes both labelled `net` (rows), and a user's `pgd_linf` option beside robustlab's
    (columns): each is named with its `_target_`, never averaged into one row or column."""
    robust = {"pgd_linf": 0.5, "worst_case": 0.5}
    attacks = {"pgd_linf": {"_target_": "robustlab.attacks.PGD", "norm": "linf"}}
    write_cell(tmp_path / "a", "none", 0.9, robust, targets={"model": "alice.Net", "defense": "x.D"}, attacks=attacks)
    write_cell(tmp_path / "b", "none", 0.8, {"pgd_linf": 0.1, "worst_case": 0.1},
               targets={"model": "bob.Net", "defense": "x.D"},
               attacks={"pgd_linf": {"_target_": "bob.MyPGD", "norm": "linf"}})
    cells = collect_rows(read_records(tmp_path)[0])
    assert sorted(cell.model for cell in cells) == ["basic_net (alice.Net)", "basic_net (bob.Net)"]
    columns = {name for cell in cells for name in cell.robust_acc}
    assert {"pgd_linf (robustlab.attacks.PGD)", "pgd_linf (bob.MyPGD)"} <= columns and "pgd_linf" not in columns
    bob = next(cell for cell in cells if "bob" in cell.model)
    assert bob.robust_acc["pgd_linf (bob.MyPGD)"] == 0.1 and bob.clean_acc == 0.8


def test_the_report_and_the_attacks_load_without_the_training_stack():
    """`scripts/report.py` and `from robustlab.attacks import PGD` start without importing Lightning (seconds
    of start-up on every call); `robustlab.evaluate_model` still loads it when used."""
    code = ("import sys\nimport robustlab.report.writing, robustlab.attacks\n"
            "assert 'pytorch_lightning' not in sys.modules, 'Lightning imported'\n"
            "import robustlab\nrobustlab.evaluate_model\nassert 'pytorch_lightning' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_report_compares_a3_with_autoattack_image_by_image(tmp_path):
    """A row evaluated with eval=reference: on 10 images, AutoAttack breaks images 0–5, A3 images 0–4 and 6–7; the
    union stands on 2, one image is broken by AutoAttack only, two by A3 only; passes 40 + 40 against 800 + 200."""
    columns = {"clean": [(10, 1)], "a3": [(5, 0), (1, 1), (2, 0), (2, 1)], "autoattack": [(6, 0), (4, 1)],
               "worst_case": [(8, 0), (2, 1)]}
    write_cell(tmp_path, "adv_train", 1.0, {"pgd_linf": 0.5, "a3": 0.3, "autoattack": 0.4, "worst_case": 0.2},
               n_eval=10, per_image={name: per_image(*runs) for name, runs in columns.items()},
               attack_passes_per_image={"a3": {"forward": 40, "backward": 40},
                                        "autoattack": {"forward": 800, "backward": 200}})
    write_cell(tmp_path, "none", 1.0, {"pgd_linf": 0.0, "a3": 0.0, "worst_case": 0.0})
    text = write_report(tmp_path)["markdown"].read_text()
    assert "AutoAttack (`autoattack`, standard on a deterministic predictor, rand on a randomized one) was run on: " \
           "adv_train.\n" in text
    assert "| adv_train | 10 | 30.0 | 40.0 | 20.0 | 1 (10.0%) | 2 | 80 | 1000 | 12.5× |" in text
    assert "| none |" not in text.split("## The strongest attack and the reference")[1].split("##")[0].split(
        "Image by image")[1]


def test_a_report_without_a3_or_autoattack_has_no_reference_section(tmp_path):
    assert "## The strongest attack" not in write_report(sweep(tmp_path))["markdown"].read_text()
