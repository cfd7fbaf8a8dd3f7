#!/usr/bin/env bash
# Set up robustlab on a fresh machine: the Fashion-MNIST data package and a virtual environment in .venv.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
  else
    echo "setup: no apt-get; Fashion-MNIST will be looked for in ./data or downloaded by torchvision" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The constraints pin torch/torchvision to the builds that install offline here, and the rest to tested versions.
# editable_mode=compat puts src/ on the path, so Hydra's plugin scan finds the SLURM launcher (hydra_plugins/robustlab)
# as it does in an installed wheel; setuptools' default editable finder hides namespace packages from that scan.
# The build constraints: visdom (adv-lib's dependency; adv-lib is the test suite's L1/L0 peer) ships only as a source
# package whose build imports pkg_resources, which setuptools 81 removed.
.venv/bin/python -m pip install -q -c scripts/constraints.txt --build-constraint scripts/build-constraints.txt \
  -e '.[dev]' --config-settings editable_mode=compat
