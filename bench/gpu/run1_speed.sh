#!/usr/bin/env bash
# One prepared device check (issue 9 GPU targets, CUDA tests, NER recipe on real weights). Writes to $OUT.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pyarrow, datasets, transformers, sentence_transformers as st, peft; print('torch', torch.__version__, 'pyarrow', pyarrow.__version__, 'datasets', datasets.__version__, 'transformers', transformers.__version__, 'st', st.__version__, 'peft', peft.__version__)"
mkdir -p ../shared && ln -sfn "$PWD/.gpu/data" ../shared/data
el "bench_pretrain"
timeout 230 python3 bench/bench_pretrain.py --device cuda --random-init --tokenizer .gpu/minilm --data .gpu/data \
  --batch-tc 1024 --pairs 16384 --batch-ner 256 --sentences 4096 --max-length 128 --tpl-steps 10 \
  --json $OUT/pretrain_gpu.json 2>&1 | grep -vE "it/s\]|examples/s|Loading weights|Computing widget" | tail -25
el "bench_label"
timeout 100 python3 bench/bench_label.py --device cuda --random-init --tokenizer .gpu/minilm --words 2000000 --no-before \
  --json $OUT/label_gpu.json 2>&1 | grep -vE "it/s\]|Loading weights" | tail -12
el "cuda tests"
timeout 70 python3 -m pytest -q -x -p no:cacheprovider tests/test_runtime_trunk.py tests/test_device.py tests/test_teacher_label.py -k "cuda or device" 2>&1 | tail -6
el "ner recipe (real weights, fp16-stored MiniLM-L6)"
timeout 130 python3 bench/bench_ner_recipe.py --model .gpu/minilm --data-dir .gpu/data --datasets conll2003 --sizes 200 \
  --recipes default,paper --device cuda --out $OUT/ner_recipe_gpu.json 2>&1 | grep -vE "it/s\]|Loading weights" | tail -12
el "done"
