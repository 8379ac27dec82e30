"""What each archive worker reserves on a cluster, and the refusals when a cluster cannot be reached or cannot give
it (no Ray import: ``--engine local`` runs without Ray, and an unreachable address is refused before Ray loads)."""

from __future__ import annotations

import socket
from dataclasses import dataclass


class ClusterError(RuntimeError):
    """Ray cannot be started or reached, or cannot place a worker; the message says what was asked and found."""


@dataclass(frozen=True)
class Resources:
    """``workers`` actors, each reserving CPUs (= its torch threads), a GPU share and memory (bytes)."""

    workers: int
    cpus: float = 1
    gpus: float = 0
    memory: int = 0

    def describe(self) -> str:
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU and {self.memory / 1024**3:.2f} GiB memory per worker"


def check_reachable(address: str) -> None:
    """A quick TCP check of ``HOST:PORT`` before Ray's own (slow, retrying) connection attempt."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ClusterError(
            f"--address {address}: expected a Ray cluster's HOST:PORT (ray start --head prints it); "
            f"found nothing answering there ({exc})"
        ) from exc
