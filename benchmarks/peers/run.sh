#!/usr/bin/env bash
# The peers harness in its own venv (optimum-onnx pins transformers < 4.58, which the package's
# test venv does not have): installs the package and the peers, then measures and writes
# docs/peers.json. Arguments go to peers.py (e.g. --size gpt2-124m --threads 1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q -e "$here/../.." -r "$here/requirements.txt"
fi
exec "$here/.venv/bin/python" "$here/peers.py" "$@"
