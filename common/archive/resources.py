"""What each archive worker reserves on a cluster, and the refusal when a cluster cannot give it (no Ray import,
so that ``--engine local`` runs without Ray installed)."""

from __future__ import annotations

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
