"""The supervisor of the reward server's worker processes (``server.py``): starts them on one shared port, restarts
one that dies, and turns a batch that ended a worker into a poison batch, answered 422 from then on."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import tempfile
import threading
from typing import Optional

from ..reward_check import load_reward_func
from .protocol import HASH_BYTES, ServerLimits
from .server import listening_socket, serve_until_signalled

logger = logging.getLogger("gd2po_openrlhf.serve_rewards")


def _worker(
    address, reward_file: str, limits: ServerLimits, ready, quiet: bool, parent_pid: int, poison: str, scoring
) -> None:
    """A worker process: import the reward file (its own copy), listen on the shared port, say so, serve."""
    _configure_logging(quiet)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops the workers
    try:
        reward_func = load_reward_func(reward_file)
        sock = listening_socket(*address, reuse_port=True)
    except BaseException as error:
        ready.put((os.getpid(), _load_error(reward_file, error)))
        return
    ready.put((os.getpid(), None))
    serve_until_signalled(sock, reward_func, reward_file, limits, parent_pid, poison, scoring)


def _load_error(reward_file: str, error: BaseException) -> str:
    if isinstance(error, (OSError, ValueError)):
        return str(error)
    return f"reward file {reward_file} failed to load: {type(error).__name__}: {error}"


# Signals that end a worker from outside (an operator, the OOM killer, a stopping host): the batch in flight is only
# suspect, poison if it is in flight again when another worker ends.
_EXTERNAL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def mark_poison(poison: str, scoring: bytes, exitcode: int, reward_file: str) -> int:
    """After a worker ended with ``exitcode``: the batches it was scoring (the body hashes in its shared ``scoring``
    slots) become poison, answered 422 from now on by every worker (``poison-<hash>`` in the folder ``poison``). A
    batch is poison at once when the worker ended by itself (``os._exit``, a crash) with it alone in flight;
    otherwise suspect, and poison if it was in flight again when another worker ended. Returns how many batches
    it was scoring."""
    hashes = [scoring[i : i + HASH_BYTES].decode() for i in range(0, len(scoring), HASH_BYTES)]
    hashes = [fingerprint for fingerprint in hashes if fingerprint.strip("\0")]
    external = exitcode < 0 and -exitcode in _EXTERNAL_SIGNALS
    how = f"killed by signal {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exited with code {exitcode}"
    for fingerprint in hashes:
        suspect = os.path.join(poison, f"suspect-{fingerprint}")
        if (len(hashes) == 1 and not external) or os.path.exists(suspect):
            others = f" together with {len(hashes) - 1} other batches" if len(hashes) > 1 else ""
            message = (
                f"reward file {reward_file}: its reward_func ended the worker process ({how}) while scoring this "
                f"batch{others}; the server answers it with this error instead of scoring it again (restart the "
                "server to retry it)"
            )
            with open(os.path.join(poison, f"poison-{fingerprint}"), "w", encoding="utf-8") as handle:
                handle.write(message)
            logger.error("a batch of %s made a worker end (%s): it is answered 422 from now on", reward_file, how)
        else:
            open(suspect, "w").close()
    return len(hashes)


def supervise(address, reward_file: str, limits: ServerLimits, workers: int, quiet: bool) -> Optional[str]:
    """Run ``workers`` processes on ``address`` (host, port); restart one that dies (``mark_poison`` remembers what
    it was scoring); on SIGTERM/SIGINT stop them gracefully. Returns the reward file's load error if a worker could
    not import it (nothing was served then)."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: its own import of the file
    ready, stopping = context.Queue(), threading.Event()
    poison = tempfile.mkdtemp(prefix="gd2po-reward-server-")
    scoring = {}  # process -> its shared slots
    for signum in (signal.SIGTERM, signal.SIGINT):  # before any worker starts: none is ever left behind
        signal.signal(signum, lambda *_: stopping.set())

    def start():
        slots = context.Array("c", HASH_BYTES * limits.max_concurrency, lock=False)  # one writer: the worker
        process = context.Process(
            target=_worker,
            args=(address, reward_file, limits, ready, quiet, os.getpid(), poison, slots),
            daemon=False,
        )
        process.start()
        scoring[process] = slots
        while True:  # its import's verdict, or its death before one
            try:
                _, error = ready.get(timeout=1)
                break
            except queue.Empty:
                if not process.is_alive():
                    error = f"a worker exited with {process.exitcode} while importing {reward_file}"
                    break
        if error is not None:
            process.join(10)
        return process, error

    processes = []
    try:
        for _ in range(workers):
            process, error = start()
            if error is not None or stopping.is_set():
                for other in processes + [process]:
                    if other.is_alive():
                        os.kill(other.pid, signal.SIGTERM)
                return error
            processes.append(process)
        logger.warning(
            "serving %s on http://%s:%d/get_reward with %d worker%s (pid%s %s; health: GET /health)",
            reward_file,
            *address[:2],
            workers,
            "s" if workers > 1 else "",
            "s" if workers > 1 else "",
            " ".join(str(process.pid) for process in processes),
        )
        while not stopping.is_set():
            # Woken by a worker's end at once: its poison batch is marked before the client's retry arrives.
            multiprocessing.connection.wait([process.sentinel for process in processes], timeout=0.5)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping.is_set():
                    batches = mark_poison(poison, scoring.pop(process).raw, process.exitcode, reward_file)
                    logger.warning(
                        "worker %d exited with %s: starting another%s",
                        process.pid,
                        process.exitcode,
                        f" ({batches} batch{'es' if batches != 1 else ''} in flight on it)" if batches else "",
                    )
                    processes[index], error = start()
                    if error is not None:  # the file changed under the server: keep the others serving
                        logger.error("cannot restart the worker: %s", error)
                        stopping.wait(1.0)  # and try again in a second, not in a tight loop
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(limits.shutdown_timeout + 10)
    finally:
        shutil.rmtree(poison, ignore_errors=True)
    return None


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s [%(process)d] %(message)s",
    )
