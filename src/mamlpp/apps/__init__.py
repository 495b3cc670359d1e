"""The front-ends, together: `mamlpp-train` (train), `mamlpp-eval` (evaluate), the Python API
(api: compose, train), and the Hydra glue of sweeps (sweep, optuna_sweeper, run_dir_hook).

They start runs through mamlpp.experiment.builder and never reach into the training loop
(tests/test_layering.py). `mamlpp.train`, `mamlpp.evaluate` and `mamlpp.api` are these modules.
"""
