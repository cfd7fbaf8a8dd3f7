"""Fuzzed config values: every numeric and string key of every `attack/` and `defense/` option, set from the
command line to negatives, zero, huge numbers, NaN, infinities and wrong types, either builds or is refused
with its full key named (by Hydra's composition against the schema, or by the checks after it), never a
traceback from deep inside. tests/test_schema.py refuses the schema's own bad values for every key.

More examples per option: `python -m pytest tests/test_config_fuzz.py --hypothesis-profile=thorough`.
"""

from __future__ import annotations

import functools
import math
import re

import pytest
from conftest import CONF, compose_config, refusal
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import DictConfig, ListConfig, OmegaConf

from robustlab.builders import build_classifier
from robustlab.errors import ConfigError

GROUPS = {group: sorted(path.stem for path in (CONF / group).glob("*.yaml")) for group in ("attack", "defense")}
SKIPPED = {"_target_", "_partial_"}


def leaf_keys(node, prefix: str) -> dict[str, object]:
    """Every key under `node` whose value is a number, a string or a list of those, with that value."""
    keys = {}
    for key in node.keys():
        if key in SKIPPED:
            continue
        full = f"{prefix}.{key}"
        if OmegaConf.is_interpolation(node, key):  # ${dataset.eps.linf} and the like
            keys[full] = None
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            keys.update(leaf_keys(value, full))
        elif isinstance(value, ListConfig) or value is None or isinstance(value, (int, float, str)):
            keys[full] = value
    return keys


def hydra_literal(value) -> str:
    """How a user types the value on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_literal(item) for item in value) + "]"
    return str(value)


scalars = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12),
    st.sampled_from([0, -1, 1, 10**30, 0.0, -0.5, 1e-300, 1e300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(alphabet="abcxyz_/", min_size=0, max_size=6),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


@functools.cache
def option_keys(group: str, option: str, directory: str) -> tuple[str, ...]:
    """The fuzzable keys of one option (composed once per option, not once per drawn example)."""
    return tuple(sorted(leaf_keys(compose_config(["dataset=synthetic", f"{group}={option}"], directory)[group], group)))


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
@given(data=st.data())
def test_every_fuzzed_value_builds_or_is_refused_naming_its_key(group, option, data, tmp_path_factory):
    keys = option_keys(group, option, str(tmp_path_factory.getbasetemp() / "fuzz-options"))  # compose once
    if not keys:
        return  # attack=none has nothing to set
    key = data.draw(st.sampled_from(keys), label="key")
    value = data.draw(values, label="value")
    overrides = ["dataset=synthetic", f"{group}={option}", f"{key}={hydra_literal(value)}"]
    directory = tmp_path_factory.mktemp("fuzz")
    error = refusal(overrides, directory)  # as `robustlab` reports it: composing, then the checks
    if error is None:
        try:
            build_classifier(compose_config(overrides, directory))
        except ConfigError as raised:
            error = raised
    if error is not None:
        named = re.match(r"^([\w.\[\]/]+)[=:]", str(error))
        assert named, f"{key}={hydra_literal(value)} was refused without naming a key: {error}"
        named = named.group(1)
        related = named == key or key.startswith(named + ".") or named.startswith((key + ".", key + "["))
        assert related, f"{key}={hydra_literal(value)} was refused under another key: {error}"
