"""Tools built on the engine and its run folders: starting and resuming runs with their
report, evaluation, prediction, export, the reference import, reproduction, studies and
analyses."""
