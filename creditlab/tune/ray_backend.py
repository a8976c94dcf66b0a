"""Where tune's trials and compare's runs train: Ray workers, or this process one after another.

Both pools take jobs (a function and its arguments, run where the pool runs them) and hand back
finished ones one at a time, so tune and compare drive them the same way. A job writes its run
folder itself (the trainer checkpoints after every epoch), so a finished run is on disk the
moment it ends, whatever happens to its worker later; a job whose worker dies is retried by Ray,
and the retry goes on from the folder's last checkpoint.

Ray is an optional extra (pip install 'creditlab[ray]'). Without it the SequentialPool runs the
jobs in this process, one after another, and says so.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from creditlab.errors import UsageError
from creditlab.speed.process import prepare_for_training

RETRIES = 3  # times Ray starts a job again after its worker died


def run_job(fn: Callable, threads: int, *args: Any) -> Any:
    """The body of every job, wherever it runs: torch's threads set to the job's share of the
    cores (Ray runs one job per core by default; more threads would fight over them)."""
    torch.set_num_threads(max(1, threads))
    prepare_for_training()  # denormals flushed, freed memory kept (speed/process.py)
    return fn(*args)


class SequentialPool:
    """No Ray: every job runs here, in the order submitted, when its result is asked for."""

    slots = 1
    remote = False

    def __init__(self, reason: str):
        self.description = f"{reason}: running one job after another in this process"
        self.queue: deque[tuple[Any, Callable, tuple]] = deque()

    def share(self, value: Any) -> Any:
        return value

    def submit(self, key: Any, fn: Callable, *args: Any) -> None:
        self.queue.append((key, fn, args))

    def busy(self) -> int:
        return len(self.queue)

    def wait(self) -> tuple[Any, Any, BaseException | None]:
        key, fn, args = self.queue.popleft()
        return key, run_job(fn, torch.get_num_threads(), *args), None

    def close(self) -> None:
        self.queue.clear()


class RayPool:
    """Jobs as Ray tasks, on a local Ray started here or on an existing cluster (address).
    Ray starts with the first job, so a run that finds everything done never starts it."""

    remote = True

    def __init__(
        self,
        ray: Any,
        address: str | None,
        workers: int | None,
        cpus_per_job: float,
        gpus_per_job: float,
    ):
        self.ray, self.address = ray, address
        self.workers = workers or os.cpu_count() or 1
        self.cpus_per_job, self.gpus_per_job = cpus_per_job, gpus_per_job
        self.started = False
        self.watchdog: Any = None  # tune/watchdog.py, for a local Ray
        self.pending: dict[Any, Any] = {}  # Ray object reference -> the job's key
        if address is None:
            self.description = f"a local Ray with {self.workers} worker(s)"
        else:
            self.description = f"the Ray cluster at {address}"

    @property
    def slots(self) -> int:
        """How many jobs run at once (starts Ray)."""
        self._start()
        return self._slots

    def _start(self) -> None:
        if self.started:
            return
        ray, address, workers = self.ray, self.address, self.workers
        cpus_per_job, gpus_per_job = self.cpus_per_job, self.gpus_per_job
        if address is None:  # "local": a new Ray here, even where a cluster is running
            options = {"address": "local", "num_cpus": workers, "include_dashboard": False}
        else:  # the cluster's workers import creditlab from this checkout, sent with the job
            package = Path(__file__).resolve().parents[1]
            options = {"address": address, "runtime_env": {"py_modules": [str(package)]}}
        try:
            # log_to_driver off: the trials run quietly, and tune prints their progress.
            ray.init(**options, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UsageError(f"cannot start or reach {self.description}: {err}") from None
        self.started = True
        if address is None:  # Ray's local processes stop with us, even after a kill -9
            from creditlab.tune import watchdog

            self.watchdog = watchdog.start_for(os.getpid())
        where = self.description
        cpus = ray.cluster_resources().get("CPU", 1)
        gpus = ray.cluster_resources().get("GPU", 0)
        self._slots = max(1, int(cpus // cpus_per_job))
        if gpus_per_job:
            if gpus < gpus_per_job:
                ray.shutdown()
                raise UsageError(f"{where} has {gpus:g} GPU(s); a job asks for {gpus_per_job:g}")
            self._slots = min(self._slots, int(gpus // gpus_per_job))
        self.threads = max(1, int(cpus_per_job))
        self.task = ray.remote(run_job).options(
            num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=RETRIES
        )
        self.description = f"{where}: {self._slots} job(s) at a time"

    def share(self, value: Any) -> Any:
        """Put a large argument (the data set) in Ray's object store once for every job."""
        self._start()
        return self.ray.put(value)

    def submit(self, key: Any, fn: Callable, *args: Any) -> None:
        self._start()
        self.pending[self.task.remote(fn, self.threads, *args)] = key

    def busy(self) -> int:
        return len(self.pending)

    def wait(self) -> tuple[Any, Any, BaseException | None]:
        """The next job to finish: (key, result, None), or (key, None, error) when it raised or
        its worker died more often than Ray retries."""
        (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
        key = self.pending.pop(ref)
        try:
            return key, self.ray.get(ref), None
        except self.ray.exceptions.RayError as err:
            return key, None, err

    def close(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        if self.started:
            self.ray.shutdown()
            self.started = False
        if self.watchdog is not None:  # Ray is down: nothing left for it to stop
            self.watchdog.terminate()
            self.watchdog.wait()
            self.watchdog = None


def open_pool(
    address: str | None = None,
    workers: int | None = None,
    cpus_per_job: float = 1,
    gpus_per_job: float = 0,
) -> RayPool | SequentialPool:
    """A RayPool when Ray is installed, else (unless a cluster address was asked for) the
    SequentialPool."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers needs a positive number, got {workers}")
    if cpus_per_job <= 0 or gpus_per_job < 0:
        raise UsageError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    try:
        import ray
    except ImportError:
        if address is not None:
            raise UsageError(
                f"--address {address} needs Ray: pip install 'creditlab[ray]'"
            ) from None
        return SequentialPool("Ray is not installed (pip install 'creditlab[ray]')")
    return RayPool(ray, address, workers, cpus_per_job, gpus_per_job)
