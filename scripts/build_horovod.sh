#!/usr/bin/env bash
# Builds Horovod into .venv for the optional `srs.distributed.backend=horovod`; never part of the default install.
# Horovod exists only as a 2023 sdist whose CMake files ask for C++14, which torch >= 2.1 headers refuse: the
# sdist is built with C++17 instead, against the torch already in .venv, with Gloo and without MPI.
# About 10 minutes on 2 cores, once: the wheel is kept in ~/.cache/tslrec/wheels (TSLREC_WHEEL_CACHE) and reused.
# Run scripts/setup.sh first (the project's .venv); `scripts/setup.sh dev` runs this script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.28.1
if [ ! -x .venv/bin/python ]; then
  echo "build_horovod: no .venv here; run scripts/setup.sh first" >&2
  exit 1
fi
if .venv/bin/python -c "import horovod.torch" 2>/dev/null; then
  echo "build_horovod: horovod $(.venv/bin/python -c 'import horovod; print(horovod.__version__)') is already installed"
  exit 0
fi
.venv/bin/pip install --quiet -c constraints.txt -e ".[horovod]"
# the built wheel is kept per Horovod, torch and Python version: a warm machine installs it in seconds
key="$(.venv/bin/python -c 'import sys, torch; print(f"horovod-'"$version"'-torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}")')"
cache="${TSLREC_WHEEL_CACHE:-$HOME/.cache/tslrec/wheels}/$key"
if ls "$cache"/horovod-*.whl >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --no-deps "$cache"/horovod-*.whl
  .venv/bin/python -c "import horovod.torch as hvd; print('build_horovod: horovod $version from $cache, gloo built:', hvd.gloo_built())"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
.venv/bin/pip download --quiet --no-deps --no-binary :all: "horovod==$version" -d "$work"
tar -xzf "$work/horovod-$version.tar.gz" -C "$work"
source_dir="$work/horovod-$version"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
  "$source_dir/CMakeLists.txt" "$source_dir/horovod/torch/CMakeLists.txt"
if grep -q 'CMAKE_CXX_STANDARD 14' "$source_dir/CMakeLists.txt" "$source_dir/horovod/torch/CMakeLists.txt"; then
  echo "build_horovod: the C++17 fix did not apply to horovod $version's CMake files" >&2
  exit 1
fi
PATH="$PWD/.venv/bin:$PATH" \
HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  .venv/bin/pip wheel --quiet --no-build-isolation --no-deps "$source_dir" -w "$work/wheel"
.venv/bin/pip install --quiet --no-deps "$work"/wheel/horovod-*.whl
mkdir -p "$(dirname "$cache")"
rm -rf "$cache.partial" && mkdir "$cache.partial" && cp "$work"/wheel/horovod-*.whl "$cache.partial/" && mv "$cache.partial" "$cache"
.venv/bin/python -c "import horovod.torch as hvd; print('build_horovod: horovod', hvd.__version__ if hasattr(hvd, '__version__') else '$version', 'gloo built:', hvd.gloo_built())"
