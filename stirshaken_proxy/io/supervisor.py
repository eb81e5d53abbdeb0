"""Worker processes: worker 0 (the process that was started) forks the others before any
event loop or thread exists, watches them, passes signals on and waits for them to drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

from .logs import tag_worker
from .workers import WorkerLink, die_with_parent

log = logging.getLogger(__name__)

Worker = Callable[[WorkerLink | None, tuple[int, ...]], int]  # (link, children) -> status


def run_workers(count: int, worker: Worker) -> int:
    """Run ``worker`` in ``count`` processes (this one is worker 0); its exit status."""
    if count <= 1:
        return worker(None, ())
    links = WorkerLink.mesh(count)
    parent = os.getpid()
    children: list[int] = []
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                die_with_parent(parent)
                tag_worker(index)
                for other in links:
                    if other is not links[index]:
                        other.close()
                status = worker(links[index], ())
            except BaseException:  # a worker reports and exits, it never unwinds into the parent
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(status)
        children.append(pid)
    for link in links[1:]:
        link.close()
    tag_worker(0)
    return worker(links[0], tuple(children))


class Children:
    """Worker 0's view of the other workers' processes."""

    def __init__(self, pids: tuple[int, ...], *, on_death: Callable[[], None]) -> None:
        self.pids = list(pids)
        self.on_death = on_death  # called when one exits while we are not stopping
        self.stopping = False
        self.exit_code = 0

    def __len__(self) -> int:
        return len(self.pids)

    def reap(self) -> None:
        """A worker exited: unless we are stopping, the service stops (exit status 1) so
        whatever supervises it restarts the whole set."""
        for pid in list(self.pids):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            self.pids.remove(pid)
            if not self.stopping:
                log.error("worker process %d exited (status %d); stopping the service", pid,
                          os.waitstatus_to_exitcode(status))
                self.exit_code = 1
                self.on_death()

    def signal(self, sig: int) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    async def wait(self, deadline: float) -> None:
        """Wait for the others to stop (they drain on SIGTERM), then kill what is left."""
        while self.pids and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self.reap()
        for pid in self.pids:
            log.warning("worker process %d did not stop in time; killing it", pid)
            os.kill(pid, signal.SIGKILL)
