"""The part every loop-running Ray actor shares (the generator's, the evaluator's): one thread runs
the worker's loop, another answers ``stop``/``status`` (the actor is created with
``max_concurrency=2``)."""
from __future__ import annotations

__all__ = ["LoopActor"]


class LoopActor:
    """Subclasses set ``self.worker`` (anything with ``run(should_stop) -> int``) in ``__init__``."""

    _stop = False

    def run(self) -> int:
        # the flag is never reset here: with two threads, a stop() sent while the actor was still
        # starting can run before run() does, and resetting it kept the loop going until the
        # driver's 120 s join timed out (the RL driver's slow SIGTERM shutdown, issue 20)
        return self.worker.run(lambda: self._stop)

    def stop(self) -> None:
        self._stop = True
