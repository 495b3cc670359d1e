"""mamlpp's Hydra sweeper plugin: hydra-optuna-sweeper with a study that survives a kill."""
