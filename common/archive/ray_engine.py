"""``--engine ray``: workers are Ray actors (the bundle loaded once each); this driver owns the queue of cases,
their attempts and deadlines, and hands each worker one case at a time.

A worker process that dies (out of memory, a crash, a SIGKILL, its node leaving the cluster) costs the case it
held one attempt: the worker is replaced and the case queued again, up to ``attempts`` in all. A case still
running after ``case_timeout`` seconds has its worker killed and fails. What a dead worker was staging is
removed (its staging folders carry its host and pid). Volumes never travel through Ray: cases are paths.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.exceptions

from common.archive.cases import ArchiveCase
from common.archive.local_engine import Finished
from common.archive.resources import ClusterError, Resources, check_reachable
from common.archive.worker import CaseWorker, WorkerSettings, process_alive, remove_staging
from common.segment.bundle_metadata import BundleError

OBJECT_STORE_BYTES = 100 * 1024**2  # rows and paths only
START_FAILURES = 3  # workers in a row dying while they load the bundle: the run stops
START_LIMIT_S = 300  # no worker started for this long (and none running): the cluster cannot place one
DEATHS = (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError)


def start_local_ray(num_cpus: float, num_gpus: int) -> None:
    """A private Ray on this host, on the loopback interface only: no dashboard, no usage statistics, a small
    object store. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's switch that keeps every Ray process on
    127.0.0.1 on Linux (docs/scale-out.md); Ray reads it when imported, so the command sets it before that too."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )


def connect(address: str | None, resources: Resources, local_gpus: int) -> bool:
    """Join the cluster at ``address`` (``HOST:PORT``, ``auto``, ``ray://HOST:PORT``), or start a local one sized
    for the workers when ``address`` is None. Ray already started in this process (library use) is used as it is.
    Returns whether this call started Ray (and must stop it). Raises :class:`ClusterError`."""
    if address:
        check_reachable(address)
    if ray.is_initialized():
        return False
    try:
        if address:
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            start_local_ray(resources.workers * resources.cpus, local_gpus)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"--address {address or 'local'}: expected a running Ray cluster (ray start --head); "
            f"found none ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return True


def check_resources(resources: Resources) -> None:
    """Refuse a worker that no node of the cluster can hold, naming the shortfall (Ray would wait for ever)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    wanted = {"CPU": resources.cpus, "GPU": resources.gpus, "memory": resources.memory}
    if any(all(node.get(key, 0) >= amount for key, amount in wanted.items() if amount) for node in nodes):
        return
    largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
    raise ClusterError(
        f"{resources.describe()}: no node of the Ray cluster can hold one worker; the largest node has "
        f"{largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU and "
        f"{largest.get('memory', 0) / 1024**3:.2f} GiB memory"
    )


class _Actor:
    """A :class:`CaseWorker` in a Ray actor, on the GPU Ray assigned it (if any): never "cuda if available",
    since actors without a GPU share still see every GPU."""

    def __init__(self, settings: WorkerSettings):
        self.error = ""
        device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU
        try:
            self.worker: CaseWorker | None = CaseWorker(settings, device)
        except BundleError as exc:  # answered by identity(): the bundle is unusable, the run must stop
            self.worker, self.error = None, str(exc)

    def identity(self) -> dict[str, object]:
        if self.worker is None:
            return {"error": self.error}
        return self.worker.identity()

    def segment(self, case: ArchiveCase) -> dict[str, object]:
        assert self.worker is not None
        return self.worker.segment(case)


@dataclass
class _Running:
    actor: object
    identity: dict
    case: ArchiveCase
    started: float


@dataclass
class _Pool:
    """The driver's view of its workers: starting (identity pending), idle, and running one case each."""

    settings: WorkerSettings
    resources: Resources
    starting: dict = field(default_factory=dict)  # identity ref -> actor
    idle: list = field(default_factory=list)  # (actor, identity)
    running: dict = field(default_factory=dict)  # segment ref -> _Running
    last_start: float = field(default_factory=time.monotonic)
    failed_starts: int = 0  # workers in a row that died before answering

    def spawn(self) -> None:
        actor = (
            ray.remote(_Actor)
            .options(
                num_cpus=self.resources.cpus,
                num_gpus=self.resources.gpus,
                memory=self.resources.memory or None,
                max_restarts=0,
                max_task_retries=0,
            )
            .remote(self.settings)
        )
        self.starting[actor.identity.remote()] = actor

    def actors(self) -> list:
        return [*self.starting.values(), *(actor for actor, _ in self.idle), *(r.actor for r in self.running.values())]


def run_ray(
    cases: Sequence[ArchiveCase],
    settings: WorkerSettings,
    resources: Resources,
    finished: Finished,
    *,
    attempts: int,
    case_timeout: float | None,
) -> None:
    """Segment ``cases`` on ``resources.workers`` actors; ``finished(case, row, attempts)`` after each case's last
    attempt. Raises :class:`BundleError` (a worker cannot load the bundle) or :class:`ClusterError`."""
    pool = _Pool(settings, resources)
    queue, tries = deque(cases), dict.fromkeys((case.case_id for case in cases), 0)
    output = Path(settings.output)
    lost: list[tuple[Path, dict]] = []  # (case folder, dead worker's identity): staging folders to remove
    for _ in range(min(resources.workers, len(cases))):
        pool.spawn()
    try:
        while queue or pool.running:
            while pool.idle and queue:
                (actor, identity), case = pool.idle.pop(), queue.popleft()
                tries[case.case_id] += 1
                pool.running[actor.segment.remote(case)] = _Running(actor, identity, case, time.monotonic())
            ready, _ = ray.wait([*pool.starting, *pool.running], num_returns=1, timeout=_wait_s(pool, case_timeout))
            for ref in ready:
                if ref in pool.starting:
                    _started(pool, ref)
                else:
                    _returned(pool, ref, queue, tries, attempts, finished, lost)
            for ref, running in list(pool.running.items()):
                if case_timeout and time.monotonic() - running.started > case_timeout:
                    ray.kill(running.actor, no_restart=True)
                    del pool.running[ref]
                    finished(
                        running.case,
                        _failed_row(
                            running, f"no result within --case-timeout {case_timeout:g} s: the worker was stopped"
                        ),
                        tries[running.case.case_id],
                    )
                    lost.append((output / running.case.folder, running.identity))
                    pool.spawn()
            if queue and not pool.idle and not pool.running and time.monotonic() - pool.last_start > START_LIMIT_S:
                raise ClusterError(
                    f"no worker started within {START_LIMIT_S} s ({resources.describe()}): the Ray cluster "
                    f"has {ray.available_resources()} available"
                )
    finally:
        for actor in pool.actors():
            ray.kill(actor, no_restart=True)
        for folder, identity in lost:
            _await_exit(identity)
            remove_staging(folder, str(identity["host"]), int(identity["pid"]))


def _wait_s(pool: _Pool, case_timeout: float | None) -> float:
    """How long to wait for a result: until the next case deadline, at most a second."""
    if not case_timeout or not pool.running:
        return 1.0
    first = min(running.started for running in pool.running.values())
    return max(0.05, min(1.0, first + case_timeout - time.monotonic()))


def _started(pool: _Pool, ref) -> None:
    actor = pool.starting.pop(ref)
    try:
        identity = ray.get(ref)
    except DEATHS as exc:  # died while loading (e.g. out of memory, or it cannot import the bundle's code)
        pool.failed_starts += 1
        if pool.failed_starts >= START_FAILURES:
            raise ClusterError(
                f"{pool.failed_starts} workers in a row died while loading the bundle; the last: {_first_line(exc)}"
            ) from exc
        pool.spawn()
        return
    pool.failed_starts = 0
    if identity.get("error"):
        raise BundleError(str(identity["error"]))
    pool.last_start = time.monotonic()
    pool.idle.append((actor, identity))


def _returned(pool: _Pool, ref, queue: deque, tries: dict, attempts: int, finished: Finished, lost: list) -> None:
    running = pool.running.pop(ref)
    case, done = running.case, tries[running.case.case_id]
    try:
        row = ray.get(ref)
    except DEATHS as exc:
        lost.append((Path(pool.settings.output) / case.folder, running.identity))
        pool.spawn()
        if done < attempts:
            queue.appendleft(case)
        else:
            finished(
                case,
                _failed_row(
                    running, f"worker died while segmenting this case ({_death(exc)}), after {done} attempt(s)"
                ),
                done,
            )
        return
    except ray.exceptions.RayError as exc:
        row = _failed_row(running, f"{type(exc).__name__}: {_first_line(exc)}")
    pool.idle.append((running.actor, running.identity))
    finished(case, row, done)


def _death(error: Exception) -> str:
    if isinstance(error, ray.exceptions.OutOfMemoryError):
        return "killed by Ray's memory monitor: out of memory"
    return "its process exited or was killed: out of memory, a crash, or its node left the cluster"


def _failed_row(running: _Running, error: str) -> dict[str, object]:
    case = running.case
    return {
        "case": case.case_id,
        "source": case.source,
        "status": "failed",
        "outputs": [],
        "error": error,
        "warnings": [],
        "volumes": [],
        "seconds": round(time.monotonic() - running.started, 3),
        **running.identity,
    }


def _await_exit(identity: dict, limit_s: float = 10.0) -> None:
    """Wait (a little) until a killed worker on this host has exited, so its staging folder is no longer written."""
    if identity.get("host") != socket.gethostname():
        return
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process_alive(int(identity["pid"])):
        time.sleep(0.1)


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
