"""The models a worker keeps loaded, and how a new version reuses one of them.

:class:`ModelSlots` holds the references: the **current** model (scoring every batch), the
**previous** one (kept warm, so a rollback needs no reload), the **staged** one (loaded and
checked, swapped in at the next batch boundary), a **spare** (retired, traced, its weights free
to overwrite) and what waits to be freed. One lock guards them all; the worker thread takes it
only at a batch boundary where a model was staged.

Keeping the hot path quiet while a model loads (the watch thread shares the interpreter, and
with it the GIL, with the worker thread):

- *No tracing.* A freshly loaded Keras model traces its predict graph on its first calls
  (about 1.5 s of Python per call shape here), which would slow the worker's batches for
  seconds. A retrain keeps the architecture, so the new version's weights are copied into a
  model of the same architecture that is traced already (tens of milliseconds; the graphs
  capture the variables, not their values): a *spare* (one is prepared at start-up, so even
  the first swap needs no tracing), else the *previous* model. The previous one is then the
  model running now, so a rollback to the version before stays instant; only a second rollback
  in a row reloads from disk. A recycled model needs no warm-up; a new architecture is loaded
  and warmed up the slow way.
- *No full garbage collections on the worker thread.* Keras models hold reference cycles
  (layers and their model track each other), so a dropped model is freed only by the cycle
  collector, and a full collection of a process with TensorFlow loaded walks some 300k objects
  (~150 ms with the GIL held). Retired models are freed by :meth:`ModelSlots.release_retired`,
  called from the watch thread; the manager freezes what is alive at start-up
  (:func:`gc.freeze`) so that later collections walk only what was created since.

Memory: two models stay loaded (the current and the previous), a third only while a spare
waits for its first use; a model loaded only for its weights, or one of an architecture no
longer in use, is dropped and collected in the watch thread. ``keras.backend.clear_session()``
is not an option: it resets Keras' global state while the running (and the staged) model still
use it.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import replace
from typing import Any

from stream_ae.model.artifacts import Artifact
from stream_ae.model.inference import Scorer


class ModelSlots:
    """The loaded models of one worker (see the module docstring).

    ``recycle``: copy a new version's weights into a traced model of the same architecture
    instead of tracing a new one.
    """

    def __init__(self, current: Scorer, recycle: bool = True) -> None:
        self.recycle = recycle
        self.current = current
        self.previous: Scorer | None = None
        self.staged: Scorer | None = None
        self.spare: Scorer | None = None
        self._retired: list[Scorer] = []
        self._garbage: list[Any] = []  # models loaded only for their weights
        self._lock = threading.Lock()  # guards the six references above

    def swap_in_staged(self) -> tuple[Scorer, Scorer] | None:
        """Make the staged model current: (the old one, the new one), or None if none was
        staged. The old one becomes the previous; the one before is retired (freed later in
        the watch thread: a collection here would stall the batch)."""
        if self.staged is None:  # the common case: one attribute read, no lock
            return None
        with self._lock:
            staged, self.staged = self.staged, None
            if staged is None:
                return None
            old = self.current
            if self.previous is not None and self.previous is not staged:
                self._retired.append(self.previous)
            self.previous, self.current = old, staged
        return old, staged

    def stage(self, scorer: Scorer) -> None:
        """Stage ``scorer`` for the next batch boundary, retiring a model staged before."""
        with self._lock:
            if self.staged is not None and self.staged is not scorer:
                self._retire_locked(self.staged)
            self.staged = scorer

    def unstage(self) -> None:
        """Drop the staged model (the pointer moved back to the current one)."""
        with self._lock:
            if self.staged is not None:
                self._retire_locked(self.staged)
                self.staged = None

    def retire(self, scorer: Scorer) -> None:
        """Retire ``scorer`` unless it is the current or the previous model."""
        with self._lock:
            self._retire_locked(scorer)

    def _retire_locked(self, scorer: Scorer) -> None:
        if scorer is not self.current and scorer is not self.previous:
            self._retired.append(scorer)

    def offer_spare(self, scorer: Scorer) -> None:
        """Keep ``scorer`` (traced, warm) as the spare unless there is one already."""
        with self._lock:
            if self.spare is None:
                self.spare = scorer

    def recycle_into(self, artifact: Artifact, weights: list[Any]) -> tuple[Artifact, bool]:
        """``artifact`` on a traced model of the same architecture, and whether it is: the
        spare, else the previous model (a rollback to it then reloads from disk; a rollback
        to the model running now, the likely one, stays instant). ``weights`` (the loaded
        model's) are copied into it and the loaded model becomes garbage."""
        if not self.recycle:
            return artifact, False
        with self._lock:
            slots = {"spare": self.spare, "previous": self.previous}
        # Compared outside the lock: the worker thread takes it at every batch boundary.
        matching = {
            slot: scorer
            for slot, scorer in slots.items()
            if scorer is not None and same_architecture(scorer.artifact, artifact)
        }
        target: Scorer | None = None
        with self._lock:
            stale = slots["spare"] is not None and "spare" not in matching
            if stale and self.spare is slots["spare"]:
                self._garbage.append(self.spare)  # an older architecture: of no use now
                self.spare = None
            for slot, scorer in matching.items():
                if scorer is self.staged:  # may go live at any moment: never overwrite it
                    continue
                if slot == "spare" and self.spare is scorer:
                    self.spare, target = None, scorer
                    break
                if slot == "previous" and self.previous is scorer:
                    self.previous, target = None, scorer
                    break
            if target is None:
                return artifact, False
            self._garbage.append(artifact.model)
        model = target.artifact.model
        model.set_weights(weights)
        return replace(artifact, model=model), True

    def release_retired(self) -> int:
        """Keep one retired model as the spare, drop the others (and models loaded only for
        their weights) and collect their cycles; returns how many objects were dropped."""
        with self._lock:
            retired, self._retired = self._retired, []
            garbage, self._garbage = self._garbage, []
            for scorer in retired:
                if self.recycle and self.spare is None:
                    self.spare = scorer
                else:
                    garbage.append(scorer)
        if not garbage:
            return 0
        count = len(garbage)
        del retired, garbage
        gc.collect()
        return count


def same_architecture(a: Artifact, b: Artifact) -> bool:
    """True when ``b``'s weights can be loaded into ``a``'s model and compute ``b``'s function:
    the same spec (up to what only changes the targets) and, layer by layer, the same class,
    configuration (names aside) and weight shapes."""
    if replace(a.spec, reverse=False, feature_names=b.spec.feature_names) != replace(
        b.spec, reverse=False
    ):
        return False
    layers_a, layers_b = a.model.layers, b.model.layers
    if len(layers_a) != len(layers_b):
        return False
    for la, lb in zip(layers_a, layers_b, strict=True):
        if type(la) is not type(lb) or _unnamed(la.get_config()) != _unnamed(lb.get_config()):
            return False
        if [tuple(w.shape) for w in la.weights] != [tuple(w.shape) for w in lb.weights]:
            return False
    return True


def _unnamed(config: Any) -> Any:
    """A layer config without its (auto-generated) names, at any depth."""
    if isinstance(config, dict):
        return {k: _unnamed(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list | tuple):
        return [_unnamed(v) for v in config]
    return config
