"""The engine: the training loop, run folders, checkpoints, distributed processes, stop
signals, the non-finite policy, the optimiser and speed switches. It knows no method's
specifics and nothing built on top of it (reports come in through a finish hook)."""
