"""What the command-line tools run, as functions: config building, in-process training
with results read from the runner, the two demos and the normalizer-comparison tables.

``tools/*.py`` parse arguments and call these; tests call them directly.
"""
from .runner import build_cfg, build_runner, train_in_process

__all__ = ['build_cfg', 'build_runner', 'train_in_process']
