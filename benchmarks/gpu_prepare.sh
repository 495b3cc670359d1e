#!/usr/bin/env bash
# Run here before a device session: stage into $STAGE (default .gpu/, git-ignored) what the GPU
# machine lacks. It has PyTorch but no internet: Hydra, OmegaConf, antlr4, PyYAML (its C part is
# optional), packaging and pytest are copied from this venv as package folders (pure Python, so
# they import under any Python 3 there; pip is not needed); the Omniglot zips; the published
# MAML++ code's Python files and Omniglot configs ($PUBLISHED_SRC, a checkout of
# github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch). About 30 MB; the device tool carries
# at most 64 MiB of ignored paths: run(command="bash benchmarks/gpu_suite.sh", carry=[".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${STAGE:-.gpu}
published=${PUBLISHED_SRC:-../HowToTrainYourMAMLPytorch}
omniglot=${OMNIGLOT_SOURCE:-../shared/datasets/omniglot}
py=${PYTHON:-.venv/bin/python}
if [ ! -f "$published/few_shot_learning_system.py" ]; then
  echo "gpu_prepare.sh: PUBLISHED_SRC=$published is not a HowToTrainYourMAMLPytorch checkout" >&2
  exit 2
fi
for zip in images_background.zip images_evaluation.zip; do
  if [ ! -f "$omniglot/$zip" ]; then
    echo "gpu_prepare.sh: OMNIGLOT_SOURCE=$omniglot has no $zip" >&2
    exit 2
  fi
done
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$stage"
mkdir -p "$stage/site" "$stage/omniglot" "$stage/published/utils" "$stage/published/experiment_config"
for pkg in hydra omegaconf antlr4 yaml packaging pytest _pytest pluggy iniconfig; do
  cp -r "$site/$pkg" "$stage/site/"
done
cp "$site"/py.py "$stage/site/" 2>/dev/null || true
find "$stage/site" -name __pycache__ -prune -exec rm -rf {} +
cp "$omniglot"/images_{background,evaluation}.zip "$stage/omniglot/"
cp "$published"/*.py "$stage/published/"
cp "$published"/utils/*.py "$stage/published/utils/"
cp "$published"/experiment_config/omniglot_maml*-omniglot_1_8_0.1_64_*_0.json \
  "$stage/published/experiment_config/"
du -sh "$stage"
