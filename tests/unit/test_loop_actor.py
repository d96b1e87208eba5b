"""The loop actors' shared stop flag (common/loop_actor.py): a stop that arrives before the loop
starts still stops it (the race that made the RL driver's SIGTERM shutdown wait 120 s per actor)."""
from __future__ import annotations

import threading

from common.loop_actor import LoopActor


class _Worker:
    def __init__(self):
        self.rounds = 0

    def run(self, should_stop) -> int:
        while not should_stop() and self.rounds < 1000:
            self.rounds += 1
        return self.rounds


class _Actor(LoopActor):
    def __init__(self):
        self.worker = _Worker()


def test_a_stop_sent_before_run_ends_the_loop_at_once():
    a = _Actor()
    a.stop()
    assert a.run() == 0


def test_a_stop_from_another_thread_ends_a_running_loop():
    class Slow(_Worker):
        def run(self, should_stop) -> int:
            started.set()
            while not should_stop():
                self.rounds += 1
            return self.rounds
    started = threading.Event()
    a = _Actor()
    a.worker = Slow()
    t = threading.Thread(target=a.run)
    t.start()
    assert started.wait(5)
    a.stop()
    t.join(5)
    assert not t.is_alive()
