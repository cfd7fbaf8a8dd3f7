"""The random generators' states (Python, NumPy, PyTorch, CUDA) as plain types and tensors: a checkpoint carries
them, so a killed and resumed run continues the random stream where it stopped."""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (every device's), as Lightning's `seed_everything` does."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_states() -> dict:
    name, keys, position, has_gauss, cached = cast(tuple, np.random.get_state())
    # Plain types and tensors only, so checkpoints load with torch.load(weights_only=True).
    states = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position,
                                                     has_gauss, cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
