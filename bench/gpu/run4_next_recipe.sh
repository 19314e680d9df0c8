#!/usr/bin/env bash
# Next device session, part 2 (~5 min): issue 11's recipe table on real weights, default vs paper preset, at
# 200 sentences and 10 % of CoNLL-2003 and MIT Restaurant (100 % with the default recipe only; the paper
# preset's 40 epochs on 100 % do not fit). Writes $OUT/ner_recipe_gpu.json (bench_ner_recipe's format).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit 1
for args in "--sizes 200,0.1 --recipes default,paper" "--sizes 1.0 --recipes default"; do
  timeout 280 python3 bench/bench_ner_recipe.py --model .gpu/minilm --data-dir .gpu/data --datasets conll2003,mit_restaurant \
    $args --device cuda --out $OUT/ner_recipe_gpu.json 2>&1 | grep -vE "it/s\]|Loading weights" | tail -14
done
