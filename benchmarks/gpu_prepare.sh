#!/usr/bin/env bash
# Run here before a device session: stage into .gpu/ (git-ignored) what the GPU machine lacks.
# Its image has torch, numpy, pillow, tensorboard and tqdm, but not Hydra/OmegaConf (pure
# Python, copied from this venv) and cannot download Omniglot (the zips are copied).
# Then: run(command="bash benchmarks/gpu_suite.sh tests bench", carry=[".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf .gpu
mkdir -p .gpu/site .gpu/omniglot
for pkg in hydra omegaconf antlr4; do cp -r "$site/$pkg" .gpu/site/; done
cp "${OMNIGLOT_SOURCE:-../shared/datasets/omniglot}"/images_{background,evaluation}.zip .gpu/omniglot/
du -sh .gpu
