#!/usr/bin/env bash
# One command for the README's hard-task recipe number (docs/recipes.md, "Drawing the actor's
# silhouette"): makes the hard task (200 videos per class, 20% validation; generator seed 0)
# and a pretraining corpus from another generator seed (300 per class, seed 7), pretrains the
# micro TimeSformer (3D-conv stem) without class labels on the corpus's masks (where the actor
# is, its direction, its pixels; 1800 steps), then fine-tunes it with `ired-video train` (row P5:
# the 3D-conv stem frozen, 7 epochs, one evaluation at the end) for three seeds, one after the
# other so that each run's CPU seconds are its own on an otherwise idle machine, and writes the
# mean top-1 with its 95% interval (tools/bench_recipe.py --seeds).
#
#   tools/bench_hard.sh [OUT]          # default OUT: runs/bench_hard
#   QUICK=1 tools/bench_hard.sh OUT    # a few minutes: checks the pipeline, numbers meaningless
#   STEPS=900 tools/bench_hard.sh OUT  # the shorter pretraining of row P2
#   JOBS=3 tools/bench_hard.sh OUT     # the seeds at once: less wall time, CPU seconds inflated
#
# From an empty folder on 2 cores: 93 min (data 2 + 4, pretraining 47, fine-tuning 40, i.e.
# 12-16 min per seed). STEPS=900 halves the pretraining for the same top-1 within noise in rows
# P2/P3 (docs/recipes.md).
# OUT/minutes.txt gets each stage's wall time; a finished stage is not redone when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench_hard}
mkdir -p "$out"
task_videos=200 corpus_videos=300 steps=${STEPS:-1800} every=300 seeds=3 epochs=7 eval_every=0 jobs=${JOBS:-1}
if [ "${QUICK:-0}" = 1 ]; then
    task_videos=4 corpus_videos=4 steps=2 seeds=2 epochs=1 eval_every=1 every=1
fi

# shellcheck source=tools/stages.sh
source tools/stages.sh  # stage NAME DONE_FILE COMMAND...

stage "task data" "$out/hard/val.csv" ired-video make-demo-data "$out/hard" --task hard \
    --videos-per-class "$task_videos" --val-fraction 0.2
stage "corpus" "$out/corpus/val.csv" ired-video make-demo-data "$out/corpus" --task hard --seed 7 \
    --videos-per-class "$corpus_videos" --val-fraction 0.05
stage "pretraining" "$out/backbone.pth" python tools/probe_recipe.py --pretrain "$out/corpus" \
    --save "$out/backbone.pth" --mask-target --model timesformer_micro --stem conv3d --steps "$steps" \
    --every "$every" --threads 2 --name pretrain --out "$out/pretrain.json"
train=(train.epochs="$epochs" eval.every="$eval_every" model.patch_stem=conv3d "train.freeze=[patch_embed]"
       "data.preprocess.train_short_side=[64,64]" init.checkpoint="$out/backbone.pth")
stage "fine-tuning" "$out/recipe_hard.json" env OMP_NUM_THREADS=1 python tools/bench_recipe.py --name hard \
    --data "$out/hard" --config ired_video/recipes/demo_micro.yaml --output "$out/runs/hard" \
    --out "$out/recipe_hard.json" --seeds "$seeds" --jobs "$jobs" "${train[@]}"
python - "$out/recipe_hard.json" <<'PY'
import json, sys
from ired_video.stats import Interval
row = json.load(open(sys.argv[1]))[-1]
top1 = Interval(row["top1"], row["top1_low"], row["top1_high"]).points()
print(f"hard, {len(row['seeds'])} seeds: top-1 {top1}, CPU s {row['cpu_s_mean']} (max {row['cpu_s_max']})")
PY
cat "$out/minutes.txt"
