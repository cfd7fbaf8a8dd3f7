"""Attack an existing checkpoint, write metrics.json: `python evaluate.py ckpt_path=... [attack=...]`."""

import hydra
from omegaconf import DictConfig

import robustlab.evaluate
from robustlab.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        robustlab.evaluate.run(cfg)


if __name__ == "__main__":
    main()
