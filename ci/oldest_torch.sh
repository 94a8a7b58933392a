#!/usr/bin/env bash
# The optimizer tests against the oldest torch that pyproject.toml declares (`make test-oldest-torch`;
# .ci/run runs it after `make test`).
#
# The floor is read from pyproject.toml ("torch>=X.Y" -> torch==X.Y.0) and installed from PyPI into a
# second environment, .venv-oldest-torch (ignored by git), built when missing or when the floor has
# changed. PyPI has only CUDA builds of old torch (import torch needs its nvidia-* wheels even on the CPU):
# about 3 GB of wheels and 6.7 GB in the venv for 2.8.0. Measured on the 2-core machine, shared with other
# work (load 6): 171 s to build, 266 s to test (465 passed); about 2 and 2.5 minutes when it is not shared.
#
# What runs is tests/optimizer, one process (no xdist), except the Triton kernel's files
# (test_triton_*.py): the `triton` extra pins the Triton release that the newest tested torch ships
# (3.7.1, torch 2.13), so the kernel is tested in .venv only.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${OLDEST_TORCH_VENV:-.venv-oldest-torch}

floor=$(sed -nE 's/^[[:space:]]*"torch>=([0-9]+(\.[0-9]+)*)".*/\1/p' pyproject.toml | head -n 1)
if [[ -z "$floor" ]]; then
    echo "ci/oldest_torch.sh: no \"torch>=X.Y\" in pyproject.toml's dependencies" >&2
    exit 1
fi
version=$floor
while [[ $(tr -cd . <<<"$version" | wc -c) -lt 2 ]]; do version+=.0; done

stamp=$VENV/.torch-version
if [[ ! -x $VENV/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$version" ]]; then
    echo "== building $VENV: torch==$version from PyPI, then kadam[dev] (no other extras)"
    start=$SECONDS
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet --no-cache-dir "torch==$version"
    # kadam's own requirements and the test tools, resolved against the torch just installed.
    "$VENV/bin/pip" install --quiet -e '.[dev]'
    echo "$version" >"$stamp"
    echo "== built in $((SECONDS - start)) s"
fi

installed=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
if [[ "$installed" != "$version" ]]; then
    echo "ci/oldest_torch.sh: $VENV has torch $installed, expected $version" >&2
    exit 1
fi
# The kadam that runs must be this tree's: reinstall it (not torch) where the venv came from another checkout.
kadam_here='import pathlib, kadam; print(pathlib.Path(kadam.__file__).resolve().parent == pathlib.Path("src/kadam").resolve())'
if [[ "$("$VENV/bin/python" -c "$kadam_here" 2>/dev/null)" != True ]]; then
    "$VENV/bin/pip" install --quiet --no-deps -e .
fi

echo "== optimizer tests against torch $installed (the declared floor, torch>=$floor)"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/optimizer \
    --ignore-glob='tests/optimizer/test_triton_*.py'
