"""Train a classifier under a defense, attack it, write metrics.json: `python train.py [overrides]`."""

import hydra
from omegaconf import DictConfig

import robustlab.train
from robustlab.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        robustlab.train.run(cfg)


if __name__ == "__main__":
    main()
