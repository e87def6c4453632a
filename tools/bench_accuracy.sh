#!/usr/bin/env bash
# One command for every accuracy number of the README's demo benchmarks: makes the training
# split (64 videos per class, as `ired-video demo`), a calibration split and a test split of
# 100 videos per class (1200 for the 12-class moderate task; generator seeds 0, 2, 1: no model
# trains or calibrates on the test videos), then runs with seeds 0 1 2
#   tools/bench_demo.py     the README's reducers at keep 0.5, training-free and fine-tuned, and the control
#   tools/bench_cascade.py  the official DVT cascade and the baselines at 30/60/100% of the plain GMACs
#   tools/bench_explain.py  faithfulness and localisation of every explanation method (600 test videos)
# The cascade and explanation benchmarks start from bench_demo's plain models (one per seed).
#
#   tools/bench_accuracy.sh [OUT]                 # default OUT: runs/bench_accuracy, TASK=moderate
#   TASK=easy tools/bench_accuracy.sh OUT         # another generated task (make-demo-data --task)
#   QUICK=1 tools/bench_accuracy.sh OUT           # a few minutes: checks the pipeline, numbers meaningless
#
# Each stage writes its table under OUT (demo/table.md, cascade/table.md, explain/bench_explain.md)
# and OUT/minutes.txt gets each stage's wall time. Stopped and rerun, it skips finished stages
# and, inside a stage, finished training runs (and bench_demo's evaluations); a killed run
# continues from its last epoch (ired_video.engine.recipes.train_or_resume); minutes.txt times
# a stage's last attempt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/bench_accuracy}
mkdir -p "$out"
task=(--task "${TASK:-moderate}")  # moderate: the plain model does not saturate it (easy: ~100%)
seeds=(0 1 2) per_class=(--videos-per-class 64) test_per_class=101 calib_per_class=25
# The README's tables: the reducers it shows at keep 0.5; the official cascade fine-tuned 6 epochs
# at three budgets; explanations on 600 test videos with 11-point curves.
demo=(--keeps 0.5 --reducers random topk tome topk+fuse bat iared2)
cascade=(--epochs 6 --budgets 0.3 0.6 1.0 --variants official) explain=(--per-class 50 --steps 10)
if [ "${QUICK:-0}" = 1 ]; then
    seeds=(0 1) per_class=(--videos-per-class 4) test_per_class=3 calib_per_class=2
    demo=(--plain-epochs 1 --epochs 1 --reducers topk random --keeps 0.5)
    cascade=(--plain-epochs 1 --epochs 1 --variants official --budgets 0.5 1.0)
    explain=(--interpreter-epochs 1 --limit 3 --steps 4)
fi

# shellcheck source=tools/stages.sh
source tools/stages.sh  # stage NAME DONE_FILE COMMAND...

stage "data" "$out/data/train.csv" ired-video make-demo-data "$out/data" "${task[@]}" "${per_class[@]}"
stage "calibration data" "$out/calib/val.csv" ired-video make-demo-data "$out/calib" "${task[@]}" --seed 2 \
    --videos-per-class "$calib_per_class" --val-fraction 0.99
stage "test data" "$out/test/val.csv" ired-video make-demo-data "$out/test" "${task[@]}" --seed 1 \
    --videos-per-class "$test_per_class" --val-fraction 0.99
stage "bench_demo" "$out/demo/table.md" python tools/bench_demo.py --data "$out/data" --test "$out/test/val.csv" \
    --out "$out/demo" --seeds "${seeds[@]}" "${demo[@]}"
plain=()
for seed in "${seeds[@]}"; do plain+=("$out/demo/plain_seed$seed/last.pth"); done
stage "bench_cascade" "$out/cascade/table.md" python tools/bench_cascade.py --data "$out/data" --init "${plain[@]}" \
    --calibration "$out/calib/val.csv" --test "$out/test/val.csv" --out "$out/cascade" --seeds "${seeds[@]}" \
    "${cascade[@]}"
stage "bench_explain" "$out/explain/bench_explain.md" python tools/bench_explain.py --data "$out/test" --split val \
    --interpreter-data "$out/data" --checkpoint "${plain[@]}" --out "$out/explain" --seeds "${seeds[@]}" "${explain[@]}"
echo "== done: $out/demo/table.md, $out/cascade/table.md, $out/explain/bench_explain.md"
cat "$out/minutes.txt"
