#!/usr/bin/env bash
# The prepared GPU run: correctness on the GPU, TimeSformer-B throughput of every reducer,
# eager and compiled, bf16, inference and training steps, and a profiler breakdown of where
# the reducers' eager time goes. Measured on one H200 (two sessions, 2026-12-04): checks 25 s,
# eager about 3.5 min, profile about 2 min, the plain model's compiled rows 45 s with training,
# top-k's compiled inference row 10 s; ToMe's compiled inference did not finish in 55 s and
# top-k's compiled training not in 150 s, so compiled inference (plain, top-k, ToMe) and
# compiled training (plain, top-k) are separate stages, each boxed to its own limit.
# The boxes add up to 1330 s, past a 10-minute device call: run at most two or three stages
# per call. Next GPU session: STAGES="prop_attn compiled_train decode" (570 s; compiled_train,
# never finished yet, now times training steps only, bench --no-inference), then "compiled".
# Each stage is time-boxed and writes its table as it goes, so a cut-short run still reports.
#
#   tools/gpu_wheels.sh                     # here, once: wheels the GPU image lacks (PyAV, torchcodec)
#   tools/bench_gpu.sh OUT_DIR              # there: OUT_DIR gets environment.txt, checks.md,
#                                           # bench_eager.{md,json}, profile.{md,json},
#                                           # bench_prop_attn.{md,json}, bench_compiled.{md,json},
#                                           # bench_compiled_train.{md,json}, decode.md
# On a machine with network, the README's install command replaces the wheels step.
# SMOKE=1 runs every stage on the CPU with the micro model in a minute or two (checks the script).
# STAGES="checks profile" runs only the named stages (of: checks eager profile prop_attn compiled
# compiled_train decode).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}

wheels=$(ls .whl/*.whl 2>/dev/null | grep -v /torchcodec-)  # torchcodec: one version at a time, stage decode
if [ -n "$wheels" ]; then
    $python -m pip install -q --no-index --no-deps --no-compile --target /tmp/ired_site $wheels \
        && export PYTHONPATH="$PYTHONPATH:/tmp/ired_site"
fi

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    $python -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__); print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"
device=cuda model=timesformer_base_patch16_224 batches=(8 32) big=32 warmup=3 iters=10 calls=3 dtype=bf16 keeps=(0.7 0.5)
if [ "${SMOKE:-0}" = 1 ]; then
    device=cpu model=timesformer_micro batches=(1 2) big=2 warmup=1 iters=1 calls=1 keeps=(0.5)
else
    $python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { echo "no CUDA GPU visible: nothing to measure" | tee -a "$out/environment.txt"; exit 1; }
fi

stages=" ${STAGES:-checks eager profile prop_attn compiled compiled_train decode} "
stage() {  # stage SECONDS NAME COMMAND...: run a time-boxed stage, keep its output in OUT/NAME.md
    local seconds=$1 name=$2; shift 2
    [[ $stages == *" ${name#bench_} "* ]] || { echo "== $name (skipped: not in STAGES)"; return; }
    echo "== $name (at most ${seconds}s)"
    timeout "$seconds" "$@" > "$out/$name.md" 2>&1
    local code=$?
    [ $code -eq 124 ] && echo "(cut at ${seconds}s: the rows measured so far are in $name.json)" >> "$out/$name.md"
    tail -n 40 "$out/$name.md"
}

# 1. Correctness on the GPU: fused vs explicit attention, reducers' no-op identity,
#    bf16 vs fp32 logits, compiled vs eager (TimeSformer-T, 4 frames).
stage 120 checks env IRED_DEVICE=$device $python -m pytest -q -p no:cacheprovider tests/test_device.py

# 2. Eager throughput, bf16: TimeSformer-B 8x224, every reducer at keep 0.7 and 0.5 (tube),
#    batch 8 and 32, inference and training steps, peak memory.
stage 200 bench_eager $python -m ired_video.cli bench --device $device --dtype $dtype --train \
    --models $model --keeps "${keeps[@]}" --batches "${batches[@]}" --warmup $warmup --iters $iters \
    --no-progress --output "$out/bench_eager.json"

# 3. Where the eager time goes, batch 32, keep 0.5: kernel time per kind of operator, the
#    device's busy share of the wall time, kernel launches, time inside reducer calls.
stage 150 profile $python tools/profile_reducers.py --model $model --device $device --dtype $dtype \
    --batch $big --reducers topk tome bat iared2 --keep 0.5 --train --warmup $warmup --iters $iters --calls $calls \
    --output "$out/profile.json"

# 3b. Proportional attention on the GPU: ToMe and BAT with and without the log-size logit
#     bias (an attention mask, which may keep SDPA off its fastest kernel), eager inference,
#     batch 32, keep 0.5. The profile found attention shrinking least for these two.
stage 90 bench_prop_attn $python -m ired_video.cli bench --device $device --dtype $dtype \
    --models $model --reducers tome tome-noprop bat bat-noprop --keeps 0.5 --batches $big --warmup $warmup \
    --iters $iters --no-progress --output "$out/bench_prop_attn.json"

# 4. Compiled (torch.compile, static shapes), bf16, batch 32, inference: the plain model and
#    the reducers users try first, at keep 0.5; graph counts per row.
stage 240 bench_compiled $python -m ired_video.cli bench --device $device --dtype $dtype --compile \
    --models $model --reducers topk tome --keeps 0.5 --batches $big --warmup 2 \
    --iters $iters --no-progress --output "$out/bench_compiled.json"

# 5. Compiled training steps (forward, backward, AdamW; eager training steps too, no inference
#    rows): the plain model and top-k at keep 0.5, batch 32.
stage 330 bench_compiled_train $python -m ired_video.cli bench --device $device --dtype $dtype --train --compile \
    --no-inference --models $model --reducers topk --keeps 0.5 --batches $big --warmup 2 \
    --iters $iters --no-progress --output "$out/bench_compiled_train.json"

# 6. GPU video decoding: torchcodec on the GPU against PyAV and torchcodec on the CPU,
#    decode only, the 8x32 training sample, on a 10 s 1080p H.264 clip made here. torchcodec
#    borrows PyAV's bundled FFmpeg (tools/ffmpeg_from_pyav.py); each carried torchcodec wheel
#    is tried until one imports (their errors are kept in decode.md).
decode_stage() {
    eval "$($python tools/ffmpeg_from_pyav.py /tmp/ired_ffmpeg)" || return 1
    $python tools/bench_data.py --make-long /tmp/ired_1080p_10s.mp4 --seconds 10 || return 1
    for wheel in .whl/torchcodec-*.whl; do
        [ -e "$wheel" ] || { echo "no torchcodec wheel in .whl/ (tools/gpu_wheels.sh)"; return 1; }
        site=/tmp/ired_$(basename "$wheel" .whl)
        $python -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheel" || continue
        if PYTHONPATH="$PYTHONPATH:$site" $python -c "import torchcodec.decoders" 2>&1 | tail -n 3; then
            echo "torchcodec from $wheel"
            PYTHONPATH="$PYTHONPATH:$site" $python tools/bench_data.py --device cuda --datasets long \
                --long /tmp/ired_1080p_10s.mp4 --clips "${decode_clips:-16}"
            return
        fi
    done
    echo "no carried torchcodec imports here: GPU decoding not measured"
    return 1
}
export -f decode_stage
export python decode_clips=$([ "${SMOKE:-0}" = 1 ] && echo 1 || echo 16)
stage 150 decode bash -o pipefail -c decode_stage

echo "done: $(ls "$out")"
