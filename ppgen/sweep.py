"""Independent tasks (tour cells, calibration simulations) in local worker processes or on Ray.

:func:`run_tasks` calls ``function(*arguments)`` for every task and returns one :class:`Outcome`
per task, in task order, whatever order they finished in. Each task carries its own seed, so the
values are those of the serial run. A task that raises, or whose worker process dies (killed, out
of memory, a crash in native code), is run once more; if it fails again its outcome says so in
``error``: a task is never lost silently.

- ``workers=N`` starts N local processes (``spawn``: JAX and torch threads do not survive
  ``fork``), each reused for many tasks. A dead worker is replaced, and only the task it was
  running is charged, so one bad task cannot fail its neighbours.
- ``ray="ADDRESS"`` submits Ray tasks to that cluster (``"auto"``, ``"ray://host:10001"``, or
  ``"local"`` for a fresh local instance); needs the optional extra ``ppgen[ray]``. Ray retries a
  task once after a worker crash or an exception (``max_retries=1, retry_exceptions=True``).

Tasks cross process boundaries with cloudpickle, so a program defined in a script or a notebook
(``__main__``) travels by value; a program in an importable module travels by reference and must
be importable by the workers.
"""

from __future__ import annotations

import heapq
import io
import math
import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import cloudpickle
import pyroapi
from pyroapi.dispatch import GenericModule

#: Times a failed task is run again before its outcome is reported as failed.
RETRIES = 1


@dataclass(frozen=True)
class Outcome:
    """What one task gave: its ``value``, or ``error`` (text) after ``attempts`` runs failed."""

    value: Any = None
    error: Optional[str] = None
    attempts: int = 1

    @property
    def failed(self) -> bool:
        return self.error is not None


def check_workers(workers: Any, ray: Any, owner: str) -> None:
    """Validate the ``workers`` / ``ray`` options of ``owner`` (a function or command name)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"{owner}: workers must be a positive integer or None, got {workers!r}")
    if ray is not None and (not isinstance(ray, str) or not ray):
        raise ValueError(f"{owner}: ray must be a cluster address (e.g. 'auto', 'ray://host:10001', 'local'), got {ray!r}")
    if ray is not None and workers not in (None, 1):
        raise ValueError(f"{owner}: give workers= or ray=, not both (Ray schedules on the cluster's CPUs)")


def is_parallel(workers: Optional[int], ray: Optional[str]) -> bool:
    return ray is not None or (workers is not None and workers > 1)


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple],
    *,
    workers: Optional[int] = None,
    ray: Optional[str] = None,
    retries: int = RETRIES,
    costs: Optional[Sequence[float]] = None,
) -> list[Outcome]:
    """``function(*task)`` for every task; one :class:`Outcome` per task, in task order.

    Parameters
    ----------
    function : a picklable function (module level, or defined in ``__main__``).
    tasks : the argument tuples.
    workers : local worker processes (None or 1: in this process, one task after another).
    ray : a Ray cluster address instead of local workers.
    retries : further runs of a task that failed (raised, or its worker died).
    costs : each task's expected run time, in any unit: workers (and Ray, in submission
        order) start the costliest first, so that no long task starts last and keeps one
        worker busy while the others idle (longest-processing-time-first scheduling, within
        4/3 of the best order's wall time). None: the tasks' own order.
    """
    check_workers(workers, ray, "run_tasks")
    tasks = [tuple(task) for task in tasks]
    if costs is not None and len(costs) != len(tasks):
        raise ValueError(f"run_tasks: {len(costs)} costs for {len(tasks)} tasks")
    if ray is not None:
        return _run_on_ray(function, tasks, ray, retries, costs)
    if not is_parallel(workers, ray) or len(tasks) <= 1:
        return [_run_here(function, task, retries) for task in tasks]
    outcomes: list[Optional[Outcome]] = [None] * len(tasks)
    with WorkerPool(min(workers, len(tasks)), retries) as pool:
        for task, cost in zip(tasks, costs if costs is not None else [0.0] * len(tasks)):
            pool.submit(function, task, cost)
        for index, outcome in pool.completed():
            outcomes[index] = outcome
    return outcomes  # type: ignore[return-value]


def _run_here(function: Callable[..., Any], task: tuple, retries: int) -> Outcome:
    error = ""
    for attempt in range(1, retries + 2):
        try:
            return Outcome(function(*task), attempts=attempt)
        except Exception:  # noqa: BLE001 - reported in the outcome, as a worker's would be
            error = traceback.format_exc(limit=4)
    return Outcome(error=error, attempts=retries + 1)


# ------------------------------------------------------------------------------------------
# local processes


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, with pyroapi's dispatching namespaces (``ppgen.dist``, ``ppgen.ops``) sent
    by reference: they pose as modules but are not the modules their names point to, so a
    program that names them would otherwise fail to pickle by value."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is GenericModule:
            for attribute, value in vars(pyroapi).items():
                if value is obj:
                    return getattr, (pyroapi, attribute)
        return super().reducer_override(obj)


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer).dump(value)
    return buffer.getvalue()


def _worker_main(connection: Any, num_threads: int) -> None:
    """A worker's loop: receive ``(function, task)``, send back ``(True, value)`` or
    ``(False, traceback)``; an empty message ends it."""
    import pickle

    import torch

    torch.set_num_threads(num_threads)  # N workers share the cores instead of each taking all
    while True:
        message = connection.recv_bytes()
        if not message:
            return
        function, task = pickle.loads(message)
        try:
            reply = _dumps((True, function(*task)))
        except Exception:  # noqa: BLE001 - the parent decides whether to retry
            reply = _dumps((False, traceback.format_exc(limit=4)))
        connection.send_bytes(reply)


class _Worker:
    def __init__(self, context: Any, num_threads: int) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, num_threads), daemon=True)
        self.process.start()
        child.close()
        self.task: Optional[int] = None

    def stop(self) -> None:
        try:
            self.connection.send_bytes(b"")
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()


class WorkerPool:
    """N spawned processes taking tasks from one queue, the costliest first.

    Tasks may be submitted while others run (:meth:`submit` between the outcomes
    :meth:`completed` yields), so a caller can queue work that needs earlier results. The
    workers start when the pool is made, so their imports overlap the caller's own work. The
    parent knows which task each worker runs, so a worker that dies charges that task only, and
    is replaced; a failed task is queued again ahead of the others until it has run
    ``retries`` + 1 times.
    """

    def __init__(self, num_workers: int, retries: int = RETRIES) -> None:
        import multiprocessing

        self.context = multiprocessing.get_context("spawn")
        self.retries = retries
        self.num_threads = max(1, (os.cpu_count() or 1) // num_workers)
        self._messages: list[bytes] = []
        self._attempts: list[int] = []
        self._queue: list[tuple[float, int]] = []  # (−cost, task index): a heap, costliest first
        self._workers = [_Worker(self.context, self.num_threads) for _ in range(num_workers)]

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def submit(self, function: Callable[..., Any], task: tuple, cost: float = 0.0) -> int:
        """Queue ``function(*task)``; returns its index (the order of submission)."""
        try:
            message = _dumps((function, tuple(task)))
        except Exception as error:  # noqa: BLE001 - say which function could not travel
            raise TypeError(
                f"run_tasks: cannot send {getattr(function, '__qualname__', function)!r} and its arguments to worker "
                f"processes ({type(error).__name__}: {error}); define the program at module level or in the script"
            ) from error
        index = len(self._messages)
        self._messages.append(message)
        self._attempts.append(0)
        heapq.heappush(self._queue, (-float(cost), index))
        return index

    def completed(self) -> Iterator[tuple[int, Outcome]]:
        """(index, outcome) of each task as it finishes, until no task is queued or running
        (tasks submitted meanwhile included); no worker waits while a task is queued."""
        from multiprocessing.connection import wait

        workers = self._workers
        while self._queue or any(w.task is not None for w in workers):
            for worker in workers:
                if worker.task is None and self._queue:
                    _, worker.task = heapq.heappop(self._queue)
                    self._attempts[worker.task] += 1
                    try:
                        worker.connection.send_bytes(self._messages[worker.task])
                    except OSError:  # died between tasks: the wait below reports it
                        pass
            busy = [w for w in workers if w.task is not None]
            ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy]))
            for position, worker in enumerate(workers):
                if worker.task is None or not (worker.connection in ready or worker.process.sentinel in ready):
                    continue
                index, worker.task = worker.task, None
                try:
                    ok, value = _loads(worker.connection.recv_bytes())
                except (EOFError, OSError):
                    worker.process.join(timeout=5)
                    ok, value = False, f"worker process died (exit code {worker.process.exitcode}) while running this task"
                    worker.stop()
                    workers[position] = _Worker(self.context, self.num_threads)
                if ok:
                    yield index, Outcome(value, attempts=self._attempts[index])
                elif self._attempts[index] <= self.retries:
                    heapq.heappush(self._queue, (-math.inf, index))  # again, before the others
                else:
                    yield index, Outcome(error=value, attempts=self._attempts[index])

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()


def _loads(message: bytes) -> Any:
    import pickle

    return pickle.loads(message)


# ------------------------------------------------------------------------------------------
# Ray


def _call_pickled(message: bytes) -> Any:
    """A Ray task: run ``function(*task)`` sent as one cloudpickle blob (ppgen's own
    cloudpickle, so a program travels the same way as to local workers)."""
    function, task = _loads(message)
    return function(*task)


def _run_on_ray(function: Callable[..., Any], tasks: list[tuple], address: str, retries: int, costs: Optional[Sequence[float]] = None) -> list[Outcome]:
    try:
        import ray
    except ImportError:
        raise ImportError("run_tasks: ray=... needs Ray: pip install 'ppgen[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(max_retries=retries, retry_exceptions=True)(_call_pickled)
    order = sorted(range(len(tasks)), key=lambda i: -costs[i]) if costs is not None else range(len(tasks))
    submitted = {index: remote.remote(_dumps((function, tasks[index]))) for index in order}
    references = [submitted[index] for index in range(len(tasks))]
    outcomes = []
    for reference in references:
        try:
            outcomes.append(Outcome(ray.get(reference)))
        except Exception as error:  # noqa: BLE001 - Ray gave up after its retries
            outcomes.append(Outcome(error=f"{type(error).__name__}: {error}", attempts=retries + 1))
    return outcomes
