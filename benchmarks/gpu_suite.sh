#!/usr/bin/env bash
# Run on the GPU machine (device tool, carry .gpu from gpu_prepare.sh); results go to $OUT.
#   bash benchmarks/gpu_suite.sh [tests] [bench] [train] [train_bf16]
# tests: the CUDA tests (graph replay == eager, bf16/channels-last, device sampler == CPU).
# bench: bench_meta_step.py on every setting with every speed variant (bench.json, bench.txt).
# train: a real Omniglot MAML++ 5w1s run, 2 epochs x 500 iterations, second order from the
# start (the preset's first 50 epochs are first order), with the speed switches;
# train_bf16: the same with train.precision=bf16 (the accuracy impact of bf16).
# DEVICE=cpu PYTHON=.venv/bin/python runs the same steps here, as a dry run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/.gpu/site:$PWD/src" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
out=${OUT:-/tmp/mamlpp_gpu_suite}
mkdir -p "$out"
status=0
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())' | tee -a "$out/machine.txt"
for step in "$@"; do
  case $step in
    tests)
      "$py" -m pytest -q -p no:cacheprovider -ra tests/test_speed_options.py tests/test_episodes.py \
        tests/test_meta_gradients.py 2>&1 | tee "$out/tests.txt" || status=1 ;;
    bench)
      variants=(base tf32 cudnn nhwc bf16 graphs graphs_tf32 ckpt)
      [ "$device" = cpu ] && variants=(base ckpt)
      "$py" benchmarks/bench_meta_step.py --device "$device" --variant "${variants[@]}" \
        ${BENCH_ARGS:-} --json "$out/bench.json" 2>&1 | tee "$out/bench.txt" || status=1 ;;
    train|train_bf16)
      speed=(speed.cuda_graphs=true speed.tf32=true speed.cudnn_benchmark=true)
      [ "$device" = cpu ] && speed=()
      [ "$step" = train_bf16 ] && speed+=(train.precision=bf16)
      "$py" -m mamlpp.train experiment=omniglot_5w1s_mamlpp device="$device" progress_bar=false \
        dataset.source="$PWD/.gpu/omniglot" dataset.data_dir=/tmp/mamlpp_omniglot \
        train.epochs=${TRAIN_EPOCHS:-2} algorithm.first_order_epochs=0 ${TRAIN_ARGS:-} "${speed[@]}" \
        hydra.run.dir="$out/$step" 2>&1 | tee "$out/$step.txt" || status=1
      cp "$out/$step/metrics.csv" "$out/$step.metrics.csv" 2>/dev/null
      cp "$out/$step/results.json" "$out/$step.results.json" 2>/dev/null
      rm -rf "${out:?}/$step" ;;
    *) echo "unknown step '$step': use tests, bench, train or train_bf16" >&2; exit 2 ;;
  esac
done
exit $status
