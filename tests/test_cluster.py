"""What a SLURM job asks for, from the cell's own config, and the refusal of what no partition has. The sweeps
themselves run on a real cluster in tests/test_slurm.py (slow)."""

from __future__ import annotations

import pytest

from robustlab.cluster import Partition, Resources, check_fits, last_line, parse_sinfo
from robustlab.errors import ConfigError

NO_SETTING = dict.fromkeys(("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb"))
CPU_NODE = Partition("debug", True, cpus=2, memory_mb=24105, gpus=0, nodes=1)


def request(compose_train, *overrides: str, **given) -> tuple[Resources, dict]:
    return Resources.of(compose_train("hydra/launcher=slurm", *overrides), {**NO_SETTING, **given})


@pytest.mark.parametrize("overrides, expected", [
    # Fashion-MNIST: 4 GB + 70,000 28×28 images as float32, twice (0.41 GB), rounded up
    ([], Resources(nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=1, mem_gb=5)),
    (["trainer=gpu"], Resources(nodes=1, tasks_per_node=1, gpus_per_node=1, cpus_per_task=2, mem_gb=5)),
    (["trainer=ddp", "trainer.devices=4"], Resources(nodes=1, tasks_per_node=4, gpus_per_node=4, cpus_per_task=2,
                                                     mem_gb=20)),
    (["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=3"],
     Resources(nodes=3, tasks_per_node=2, gpus_per_node=2, cpus_per_task=2, mem_gb=10)),
    (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
     Resources(nodes=1, tasks_per_node=2, gpus_per_node=0, cpus_per_task=1, mem_gb=10)),
    # CIFAR-10: 60,000 3×32×32 images, 1.4 GB
    (["dataset=cifar10", "model=wide_resnet", "trainer=gpu"],
     Resources(nodes=1, tasks_per_node=1, gpus_per_node=1, cpus_per_task=2, mem_gb=6)),
])
def test_each_cell_asks_for_what_its_trainer_and_dataset_need(compose_train, overrides, expected):
    assert request(compose_train, *overrides)[0] == expected


def test_a_value_set_under_hydra_launcher_wins(compose_train):
    resources, sources = request(compose_train, "trainer=gpu", gpus_per_node=2, mem_gb=64)
    assert (resources.gpus_per_node, resources.mem_gb, resources.cpus_per_task) == (2, 64, 2)
    assert sources["gpus_per_node"] == "set" and "GPU process" in sources["cpus_per_task"]


def test_every_gpu_of_a_node_is_not_a_request(compose_train):
    with pytest.raises(ConfigError, match=r"trainer.devices=-1.*trainer.devices=N"):
        request(compose_train, "trainer=ddp")  # devices: -1, every GPU of the machine


def test_a_gpu_request_on_a_cpu_partition_is_refused_naming_the_key(compose_train):
    resources, sources = request(compose_train, "trainer=gpu")
    with pytest.raises(ConfigError) as refused:
        check_fits(resources, sources, None, [CPU_NODE])
    message = str(refused.value)
    assert message.startswith("hydra.launcher.gpus_per_node=1 (from the experiment: trainer.accelerator=gpu")
    assert "partition debug has 1 node(s) of 2 CPUs, 24105 MB, 0 GPUs (sinfo)" in message


@pytest.mark.parametrize("given, key", [({"mem_gb": 64}, "mem_gb"), ({"cpus_per_task": 4}, "cpus_per_task"),
                                        ({"nodes": 2}, "nodes")])
def test_more_memory_cpus_or_nodes_than_the_partition_has_is_refused(compose_train, given, key):
    resources, sources = request(compose_train, **given)
    with pytest.raises(ConfigError, match=rf"^hydra.launcher.{key}={given[key]} cannot be met"):
        check_fits(resources, sources, None, [CPU_NODE])
    check_fits(*request(compose_train), None, [CPU_NODE])  # the derived request fits


def test_a_partition_that_does_not_exist_is_named_with_those_that_do(compose_train):
    with pytest.raises(ConfigError, match=r"hydra.launcher.partition='gpu': .*no such partition.*sinfo: debug"):
        check_fits(*request(compose_train), "gpu", [CPU_NODE])


def test_sinfo_lines_become_partitions_with_their_gpus():
    text = "debug*|2|24105|(null)|1\ngpu|64|512000|gpu:a100:8(S:0-1)|4\ngpu|32|256000|gpu:4|2\nnoise line\n"
    assert parse_sinfo(text) == [CPU_NODE, Partition("gpu", False, cpus=64, memory_mb=512000, gpus=8, nodes=4)]


def test_a_failed_jobs_error_is_its_logs_last_message(tmp_path):
    log = tmp_path / "12_0_0_log.err"
    log.write_text("Training: 10%\nrobustlab: train/loss is nan at epoch 0: training diverged\n"
                   "srun: error: vm: task 0: Exited with exit code 2\n\n")
    assert last_line(log) == "robustlab: train/loss is nan at epoch 0: training diverged"
    assert last_line(tmp_path / "missing.err").startswith("(no log at")
