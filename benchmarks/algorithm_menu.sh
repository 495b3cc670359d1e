#!/usr/bin/env bash
# Every algorithm on the same Omniglot 5-way 1-shot CPU budget (experiment=omniglot_5w1s_menu),
# same seed and test tasks, then one mamlpp-report table. Usage:
#   benchmarks/algorithm_menu.sh [RUNS_DIR] [ALGORITHM ...]   (default: every algorithm)
# MAML++ anneals the derivative order for 1 of the 2 epochs and the multi-step loss over 2
# (its paper values, 50 and 10 epochs, exceed this budget).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/menu}
shift || true
ALGOS=("$@")
[ ${#ALGOS[@]} -gt 0 ] || ALGOS=(maml fomaml mamlpp anil boil metasgd reptile protomaml baseline baseline_pp)
for algo in "${ALGOS[@]}"; do
  extra=()
  [ "$algo" = mamlpp ] && extra=(algorithm.first_order_epochs=1 algorithm.msl_epochs=2)
  MAMLPP_RUNS_DIR=$RUNS .venv/bin/mamlpp-train experiment=omniglot_5w1s_menu "algorithm=$algo" \
    seed=0 progress_bar=false "${extra[@]}"
done
.venv/bin/mamlpp-report "$RUNS"
