"""``ExactResumeHook``: checkpoints carry the RNG states, so ``--resume`` is exact.

mmengine's checkpoints hold the model, optimizer, schedulers and loop counters, but no
random-number-generator state: a run resumed at iteration ``k`` draws other dropout masks,
RoI samples and augmentations than the uninterrupted run from iteration ``k + 1`` on (the
Mask R-CNN demo ended 1.6e-3 apart in parameters and 0.40 in optimizer momentum after
5 + 5 iterations). With this hook, on the same machine and with deterministic settings
(``randomness=dict(seed=..., deterministic=True)``), a resumed run equals the
uninterrupted one bit for bit: parameters, SN logits, running statistics, optimizer
state, the SSN radius and the next batches.

What it does:

- ``before_save_checkpoint``: stores ``checkpoint['rng_state']`` = the torch CPU (and CUDA)
  generator states, numpy's global ``RandomState``, Python's ``random`` state, and per
  training sampler its ``seed``/``epoch`` and the state of a ``torch.Generator`` it owns
  (mmengine's ``DefaultSampler``/``InfiniteSampler`` derive their order from seed and
  epoch; both are checked on resume). Plain tensors, tuples and numpy arrays: the file
  loads with ``weights_only=True``.
- ``after_load_checkpoint`` on ``resume`` (not on ``load_from``) remembers the states, and
  restores them exactly where the uninterrupted run stood when it saved: right before the
  first batch after the checkpoint. An iteration-based loop first skips the batches
  already trained (which runs their transforms and draws random numbers), so the states
  are restored after that skip; an epoch-based loop restores them at the start of the
  next epoch.
- validation and testing run on a saved copy of the RNG states, restored afterwards, so an
  evaluation (which may sit between a checkpoint and the next batch) does not shift the
  training stream, in the uninterrupted and the resumed run alike.

Enable it with one config line (the project's configs have it)::

    default_hooks = dict(exact_resume=dict(type='ExactResumeHook'))

``import sn_mm`` only registers the name; configs that do not ask for the hook train and
save exactly as before. A checkpoint without ``rng_state`` resumes with a warning.
"""
import random
import warnings
from typing import Optional

import numpy as np
import torch
from mmengine.hooks import Hook

__all__ = ['ExactResumeHook', 'capture_rng_state', 'restore_rng_state']

KEY = 'rng_state'


def _samplers(runner):
    """``(name, sampler)`` of the training dataloader (batch sampler included)."""
    loop = getattr(runner, '_train_loop', None)
    loader = getattr(loop, 'dataloader', None) if loop is not None and not isinstance(
        loop, dict) else None
    if loader is None:
        return []
    found = []
    for name in ('sampler', 'batch_sampler'):
        sampler = getattr(loader, name, None)
        if sampler is not None:
            found.append((name, sampler))
        inner = getattr(sampler, 'sampler', None)
        if inner is not None and inner is not getattr(loader, 'sampler', None):
            found.append((f'{name}.sampler', inner))
    return found


def capture_rng_state(runner=None) -> dict:
    """The RNG states (see the module docstring), plain values only."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(legacy=False),
                 python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    samplers = {}
    for name, sampler in _samplers(runner) if runner is not None else []:
        entry = {attr: getattr(sampler, attr) for attr in ('seed', 'epoch')
                 if isinstance(getattr(sampler, attr, None), int)}
        generator = getattr(sampler, 'generator', None)
        if isinstance(generator, torch.Generator):
            entry['generator'] = generator.get_state()
        if entry:
            samplers[name] = entry
    state['samplers'] = samplers
    return state


def restore_rng_state(state: dict, runner=None) -> None:
    """Put back what :func:`capture_rng_state` returned (samplers: generators restored,
    seed/epoch checked against the running sampler)."""
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    python = state['python']
    random.setstate((python[0], tuple(python[1]), python[2]))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    saved = state.get('samplers', {})
    for name, sampler in _samplers(runner) if runner is not None else []:
        entry = saved.get(name)
        if entry is None:
            continue
        if 'generator' in entry and isinstance(getattr(sampler, 'generator', None),
                                               torch.Generator):
            sampler.generator.set_state(entry['generator'])
        if 'seed' in entry and getattr(sampler, 'seed', entry['seed']) != entry['seed']:
            warnings.warn(f'ExactResumeHook: the training {name} has seed '
                          f'{sampler.seed}, the checkpoint was saved with seed '
                          f"{entry['seed']}: the resumed run will see other batches than the "
                          'uninterrupted one')


class _RestoreAfterSkip:
    """Stands in for an iteration loop's ``dataloader_iterator`` during its resume skip:
    after ``skip`` batches it restores the RNG states, puts the real iterator back and
    hands out the next batch."""

    def __init__(self, loop, skip: int, restore):
        self.loop, self.inner, self.skip, self.restore = loop, loop.dataloader_iterator, skip, \
            restore

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip > 0:
            self.skip -= 1
            return next(self.inner)
        self.restore()
        self.loop.dataloader_iterator = self.inner
        return next(self.inner)


class ExactResumeHook(Hook):
    """Carry the RNG states in checkpoints and restore them on resume (module docstring)."""

    priority = 'VERY_HIGH'

    def __init__(self):
        self._pending: Optional[dict] = None
        self._outside_eval: Optional[dict] = None

    # ---------------------------------------------------------------- saving
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # inside validation (save_best) the training stream is the state saved before it
        state = self._outside_eval if self._outside_eval is not None else \
            capture_rng_state(runner)
        checkpoint[KEY] = state

    # -------------------------------------------------------------- resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from (fine-tuning, testing): the run starts its own stream
        state = checkpoint.get(KEY)
        if state is None:
            warnings.warn('ExactResumeHook: the checkpoint carries no RNG state (saved '
                          'without the hook); the resumed run continues with a fresh '
                          'random stream and will not equal the uninterrupted one')
            return
        self._pending = state

    def before_train_epoch(self, runner) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        loop = runner.train_loop
        skip = getattr(loop, 'iter', 0) if hasattr(loop, 'dataloader_iterator') else 0
        if skip > 0:  # IterBasedTrainLoop: it skips `iter` batches right after this hook
            loop.dataloader_iterator = _RestoreAfterSkip(
                loop, skip, lambda: restore_rng_state(state, runner))
        else:
            restore_rng_state(state, runner)

    # ------------------------------------------- evaluation off the stream
    def _enter_eval(self, runner) -> None:
        if self._outside_eval is None:
            self._outside_eval = capture_rng_state(runner)

    def _leave_eval(self, runner) -> None:
        if self._outside_eval is not None:
            state, self._outside_eval = self._outside_eval, None
            restore_rng_state(state, runner)

    def before_val(self, runner) -> None:
        self._enter_eval(runner)

    def after_val(self, runner) -> None:
        self._leave_eval(runner)
