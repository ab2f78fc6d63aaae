"""Symbolic equivalence of two LaTeX answers (math-verify / sympy) in a worker process with a hard timeout.

sympy can spend minutes (or forever, inside C big-integer arithmetic where no signal gets through) on answers
like `9^{9^{9^{9}}}`. The check therefore runs in a separate process: the caller waits `timeout_s` for the
answer, and on a timeout kills the worker, starts a fresh one for the next item and reports `None`.

    checker = SymbolicChecker(timeout_s=5)
    checker.equivalent("\\frac{1}{2}", "0.5")   # True
    checker.close()
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
from typing import Any


def _equivalent(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _worker(conn: Any) -> None:
    # The parent enforces the time limit, so math-verify's own (signal-based) limits are off; silence its
    # warning about that.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            conn.send(_equivalent(*message))
        except Exception:  # an unparsable answer is simply not equivalent
            conn.send(False)


class SymbolicChecker:
    """One long-lived worker process; a timeout kills it and the next call starts another."""

    _warm = False

    def __init__(self, timeout_s: float = 5.0):
        self.timeout_s = float(timeout_s)
        self.n_timeouts = 0
        # fork starts in milliseconds (spawn re-imports sympy, ~1 s per restart); the worker touches no CUDA.
        self._ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        self._process = None
        self._conn = None

    def _start(self) -> None:
        if not SymbolicChecker._warm:  # parse once here (lazy grammar set-up, ~1 s) so forked workers start warm
            logging.getLogger("math_verify").setLevel(logging.ERROR)
            _equivalent("1", "1")
            SymbolicChecker._warm = True
        parent, child = self._ctx.Pipe()
        self._process = self._ctx.Process(target=_worker, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process = self._conn = None

    def equivalent(self, gold: str, pred: str, timeout_s: float | None = None) -> bool | None:
        """True/False, or None when the check ran past `timeout_s` (default: the checker's; the caller counts
        that as wrong)."""
        if self._process is None or not self._process.is_alive():
            self._start()
        self._conn.send((gold, pred))
        if self._conn.poll(self.timeout_s if timeout_s is None else timeout_s):
            try:
                return bool(self._conn.recv())
            except EOFError:  # the worker died (e.g. out of memory): treat like a timeout
                pass
        self.n_timeouts += 1
        self._kill()
        return None

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            try:
                self._conn.send(None)
                self._process.join(timeout=1)
            except (BrokenPipeError, OSError):
                pass
        self._kill()

    def __enter__(self) -> "SymbolicChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
