#!/usr/bin/env bash
# Everything the GPU must prove, in one run of at most ~8 minutes, on a machine with PyTorch and
# CUDA but no internet, after benchmarks/gpu_prepare.sh staged $STAGE (default .gpu/) here:
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".gpu"], timeout_s=540)
# Steps (each under its own time budget, seconds in brackets; pass names to run a subset):
#   env [5]      the machine, torch/CUDA versions, which staged modules import
#   tests [75]   the CUDA tests (graph replay == eager, backend switches, bf16/channels-last on
#                CUDA, device sampler == CPU sampler) with the CPU kernel and meta-gradient tests
#   bench [140]  ours against the published code on this GPU, MAML++ 5w1s b8 and 20w1s b8, every
#                speed switch (base, tf32, cudnn, graphs, graphs+tf32+cudnn, bf16)
#   train [95]   real Omniglot MAML++ 5w1s, second order from the first iteration, graphs + TF32 +
#                cuDNN autotune: $TRAIN_EPOCHS x $TRAIN_ITERS iterations, then validation/test
#   train_bf16 [95] the same in bf16
#   nccl [30]    a one-rank torchrun run (NCCL on CUDA) of the smoke preset
#   resnet12 [40] ResNet-12 (3x32x32) MAML second order, batch 2: s/iter and GPU memory
# Results go to $OUT (default /tmp/mamlpp_gpu_suite), packed into $OUT/gpu_suite.tar.gz; a step
# stopped by its limit keeps what it wrote (bench.json grows run by run, metrics.csv by epoch).
# TRAIN_EPOCHS (4), TRAIN_ITERS (500) and TRAIN_BUDGET (95 s) size the training runs.
# DEVICE=cpu PYTHON=.venv/bin/python runs the whole suite here as a dry run with tiny budgets
# (make gpu-dry-run); CUDA-only parts then say they are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${STAGE:-.gpu}
export PYTHONPATH="$PWD/$stage/site:$PWD/src" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
out=${OUT:-/tmp/mamlpp_gpu_suite}
res="$out/gpu_suite"
mkdir -p "$res"
status=0
dry=0
[ "$device" = cpu ] && dry=1
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env tests bench train train_bf16 nccl resnet12)
data=(dataset.source="$PWD/$stage/omniglot" dataset.data_dir=/tmp/mamlpp_omniglot)

# budget SECONDS NAME CMD...: run CMD under a time limit, output to $res/NAME.txt
budget() {
  local secs=$1 name=$2
  shift 2
  echo "== $name (limit ${secs}s): $*" | tee -a "$res/summary.txt"
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$@" > "$res/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$res/$name.txt"
  echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$res/summary.txt"
  [ $rc -eq 0 ] || status=1
}

train_run() {  # NAME EXTRA...: a real Omniglot MAML++ run, second order from the start
  local name=$1
  shift
  local size=(train.epochs="${TRAIN_EPOCHS:-4}" train.iters_per_epoch="${TRAIN_ITERS:-500}"
              eval.val_tasks=100 eval.test_tasks=600 eval.top_k=1)
  [ $dry = 1 ] && size=(train.epochs=1 train.iters_per_epoch=2 eval.val_tasks=4
                        eval.test_tasks=4 eval.top_k=1)
  budget "$([ $dry = 1 ] && echo 600 || echo "${TRAIN_BUDGET:-95}")" "$name" \
    "$py" -m mamlpp.train experiment=omniglot_5w1s_mamlpp device="$device" progress_bar=false \
    "${data[@]}" "${size[@]}" algorithm.first_order_epochs=0 run.resume=never \
    hydra.run.dir="$res/$name.run" "$@"
  cp "$res/$name.run/metrics.csv" "$res/$name.metrics.csv" 2>/dev/null
  cp "$res/$name.run/results.json" "$res/$name.results.json" 2>/dev/null
  rm -rf "${res:?}/$name.run"
}

for step in "${steps[@]}"; do
  case $step in
    env)
      budget 60 env "$py" -c '
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU dry run)")
for m in ("hydra", "omegaconf", "yaml", "pytest", "numpy", "PIL", "tqdm", "tensorboard"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "ok"))
    except Exception as e:
        print(m, "MISSING:", e)'
      nvidia-smi > "$res/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$res/nvidia-smi.txt" ;;
    tests)
      if [ $dry = 1 ]; then
        budget 300 tests "$py" -m pytest -q -p no:cacheprovider -rs tests/unit/algorithms/test_speed_options.py \
          -k "cuda or kernel"
      else
        budget 75 tests "$py" -m pytest -q -p no:cacheprovider -rs tests/unit/algorithms/test_speed_options.py \
          tests/unit/data/test_episodes.py tests/unit/algorithms/test_meta_gradients.py
      fi ;;
    bench)
      if [ $dry = 1 ]; then
        budget 600 bench "$py" benchmarks/bench_side_by_side.py --device cpu \
          --published "$stage/published" --setting mamlpp_5w1s_b8 --variant base \
          --rounds 1 --warmup 0 --repeats 1 --threads 1 --json "$res/bench.json"
      else
        budget 140 bench "$py" benchmarks/bench_side_by_side.py --device cuda \
          --published "$stage/published" --setting mamlpp_5w1s_b8 mamlpp_20w1s_b8 \
          --variant base tf32 cudnn graphs graphs_tf32 bf16 --rounds 1 --warmup 5 \
          --repeats 20 --json "$res/bench.json"
      fi ;;
    train)
      if [ $dry = 1 ]; then train_run train; else
        train_run train speed.cuda_graphs=true speed.tf32=true speed.cudnn_benchmark=true; fi ;;
    train_bf16)
      if [ $dry = 1 ]; then train_run train_bf16 train.precision=bf16; else
        train_run train_bf16 speed.cuda_graphs=true speed.tf32=true speed.cudnn_benchmark=true \
          train.precision=bf16; fi ;;
    nccl)
      [ $dry = 1 ] && echo "nccl: CPU dry run, so the one-rank torchrun uses gloo instead of NCCL"
      budget "$([ $dry = 1 ] && echo 600 || echo 30)" nccl \
        "$py" -m torch.distributed.run --standalone --nproc_per_node=1 -m mamlpp.train \
        experiment=smoke device="$device" progress_bar=false "${data[@]}" train.epochs=1 \
        train.iters_per_epoch=5 eval.val_tasks=8 eval.test_tasks=8 eval.top_k=1 \
        run.resume=never hydra.run.dir="$res/nccl.run"
      cp "$res/nccl.run/results.json" "$res/nccl.results.json" 2>/dev/null
      rm -rf "${res:?}/nccl.run" ;;
    resnet12)
      if [ $dry = 1 ]; then
        budget 600 resnet12 "$py" benchmarks/bench_meta_step.py --device cpu \
          --setting maml_5w1s_b1_s1_resnet12 --impl batched --warmup 0 --repeats 1 --threads 1 \
          --json "$res/resnet12.json"
      else
        budget 40 resnet12 "$py" benchmarks/bench_meta_step.py --device cuda \
          --setting maml_5w1s_b2_resnet12 --impl batched --variant base graphs_tf32 \
          --warmup 3 --repeats 10 --json "$res/resnet12.json"
      fi ;;
    *) echo "gpu_suite.sh: unknown step '$step': use env tests bench train train_bf16 nccl resnet12" >&2
       exit 2 ;;
  esac
done
tar -czf "$out/gpu_suite.tar.gz" -C "$out" gpu_suite
echo "results: $out/gpu_suite.tar.gz (exit $status)"
exit $status
