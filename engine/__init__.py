"""Training loop, evaluation, checkpoints, results and distributed helpers shared by the CLIs."""
