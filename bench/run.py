"""`make bench`: the real stack on this machine, measured; a table, bench/results.json and bench/results.png.

    .venv/bin/python bench/run.py [--tasks 1000] [--rounds 3] [--postgres]
                                  [--only dispatch,latency,idle,burst,users,fetch,prune,dashboard,lifecycle]
                                  [--lifecycle-tasks 300]

On PostgreSQL (`make bench` with DATABASE_URL=postgresql://... set, or `make bench-pg`, which starts a
throwaway cluster with dev/postgres.py): each phase gets a fresh schema and TWO web hosts (two gunicorn
instances on it); processors are spread over them, tasks are created through both, and the figures go
under "postgresql" in bench/results.json (the same keys), the chart to results-postgresql.png. The
prune and dashboard phases are SQLite's own (they build SQLite files) and are left out.

One Temporal dev server (in memory) serves the latency, idle and burst phases;
the dispatch phase starts a fresh one for each measurement. Each phase gets a
fresh database and web process (gunicorn, 4 gthread workers, as the Procfile).
Processors and the worker run as their own processes with default settings
unless a phase says otherwise.

  dispatch  raw start_workflow rate (best of 10 and 50 concurrent callers);
            then 1,000 pending tasks appear in one commit and one processor
            dispatches them: rate from the commit to the last workflow's start
            time, and its ratio to the raw rate; then the same with two
            processors. Each measurement on a fresh Temporal server (it slows as
            it fills up), --rounds times; medians are reported, and the CPU each
            process spent per task is printed (where the time goes)
  latency   tasks created over HTTP at a steady 20/s, processor + worker + fakes
            at default settings: creation -> workflow start, p50/p99; then the
            same through a push-mode app that starts the workflow inside the
            create request (the plan's old design)
  idle      two processors with no work for 10 s: CPU of the web process and of a processor
  burst     1,000 creations from 16 client threads while fetchPendingTasks is
            called every 10 ms: the fetch latency (avg, max) and the create rate
  users     user creates (20/s for 15 s, a new connection each) against a web process at default
            settings: with nothing else running; with 64 processors' long polls (128 requests with
            waitMs 30000, both integrations, fetch and claim, honouring a `retryAfterMs` hint);
            with 40 slowloris sockets (silent, stalled mid-headers, trickling a byte a second).
            p99 and max latency, failures
  fetch     fetchPendingTasks queries at 10,000 / 100,000 / 1,000,000 rows
  prune     1,000,000 finished tasks (3 events each) pruned beside 1,000 live ones (bench/prune.py):
            tasks/s and the longest write transaction
  dashboard the dashboard page (GET /) at 1,000,000 tasks with their events, through the Flask test client:
            the median of 200 renders (bench/dashboard.py)
  lifecycle N tasks from create to completed through the whole stack with fast fakes, against the same
            workflows driven directly with in-process stand-in activities (Temporal's own ceiling); CPU ms
            per task per process; the web process's CPU with 64 idle processors; the same lifecycle on an
            empty database and beside 1,000,000 finished tasks; the worker CPU of the smallest workflows,
            the SDK's floor (bench/lifecycle.py)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench import dashboard, fetch_pending, lifecycle, pg_target
from bench import prune as prune_bench
from bench.procstat import CpuMeter, waiting_polls
from dev import dbaccess
from dev.stack import (
    ROOT,
    connect_temporal,
    free_port,
    gunicorn_command,
    python_process,
    read_http_answer,
    stop,
    temporal_server,
    wait_for_http,
)

TOKEN = "bench-internal-token-0123456789"
CLIENT_KEY = "bench-client-key-0123456789"
USER = {"Authorization": f"Bearer {CLIENT_KEY}"}
KEY = "bench-provider-key"
HERE = Path(__file__).resolve().parent
VIDEO_NS = "fangzhouVideoGeneration"


# The PostgreSQL server the run is on (bench/pg_target.py), or None: SQLite, a file per phase.
POSTGRES: str | None = None


class Phase:
    """A fresh web process (and database) on the shared Temporal server, plus any processes started.

    On PostgreSQL a fresh schema and TWO web hosts (two gunicorn instances on it): `urls` are both,
    `url` and `web` the first; `start(..., host=n)` points a process at host n (MAIN_ENDPOINT)."""

    def __init__(self, folder: Path, temporal: str, app: str = "app:create_app()", **env):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.stack = ExitStack()
        self.db_path = (self.stack.enter_context(pg_target.fresh_schema(POSTGRES)) if POSTGRES
                        else str(folder / "app.db"))  # what dev/dbaccess reads: a file's path or a URL
        ports = [free_port() for _ in range(2 if POSTGRES else 1)]
        self.urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.port, self.url = ports[0], self.urls[0]
        self.temporal = temporal
        # Caps above any backlog: the dispatch phases measure Temporal's start rate, not a provider's limit.
        self.env = {"INTERNAL_API_TOKEN": TOKEN, "CLIENT_API_KEYS": CLIENT_KEY, "FANGZHOU_MAX_ACTIVE": "100000",
                    "NANOBANANA_MAX_ACTIVE": "100000",
                    "DASHBOARD_PASSWORD": "bench-dashboard-password",
                    **({"DATABASE_URL": self.db_path} if POSTGRES else {"DATABASE_PATH": self.db_path}),
                    "MAIN_ENDPOINT": self.url,
                    "TEMPORAL_ADDRESS": temporal, "FANGZHOU_API_KEY": KEY, "NANOBANANA_API_KEY": KEY,
                    "FAKE_API_KEY": KEY, "LOG_LEVEL": "WARNING", "FAKE_STEP_SECONDS": "1",
                    **{k: str(v) for k, v in env.items()}}
        self.processes: dict[str, object] = {}
        self.webs: list[subprocess.Popen] = []
        self.stack.callback(lambda: [stop(web) for web in self.webs])  # after the processes, before the schema
        try:
            for n, port in enumerate(ports):  # one after the other: the first creates the schema's tables
                with open(folder / f"web{n + 1 if n else ''}.log", "ab") as log:
                    self.webs.append(subprocess.Popen(gunicorn_command(port, 4, app), cwd=ROOT,
                                                      env={**os.environ, **self.env}, stdout=log, stderr=log))
                wait_for_http(f"{self.urls[n]}/healthz", process=self.webs[n])
        except BaseException:
            self.stack.close()
            raise
        self.web = self.webs[0]

    def web_pids(self) -> dict[str, tuple[int, bool]]:
        """CpuMeter entries of the web hosts (each with its gunicorn workers)."""
        return {"web" if n == 0 else f"web{n + 1}": (web.pid, True) for n, web in enumerate(self.webs)}

    def start(self, name: str, args: list[str], host: int = 0, **env) -> object:
        saved = dict(self.env)
        self.env.update({"MAIN_ENDPOINT": self.urls[host % len(self.urls)], **{k: str(v) for k, v in env.items()}})
        process = self.stack.enter_context(python_process(args, self.folder / f"{name}.log", dict(self.env)))
        self.env = saved
        self.processes[name] = process
        return process

    def close(self) -> None:
        self.stack.close()


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pid_listening_on(address: str) -> int | None:
    """The process serving `host:port` (the Temporal dev server), found by its command line."""
    port = address.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"start-dev" in args and port.encode() in args:
            return int(entry.name)
    return None


async def start_times(address: str, workflow_ids: set[str], expected: int, timeout: float = 60) -> dict[str, float]:
    """Each workflow's start time (epoch seconds), read from Temporal once all are visible."""
    client = await connect_temporal(address)  # a dev server this run started
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        async for execution in client.list_workflows():
            if execution.id in workflow_ids:
                found[execution.id] = execution.start_time.timestamp()
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def insert_pending(db_path: str, count: int) -> tuple[list[str], float]:
    """`count` pending video tasks in one commit (so dispatch starts from a full backlog at once)."""
    now = time.time()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    statements = [
        ("INSERT INTO video_tasks (id, status, attempts, request_params, created_at, updated_at) "
         "VALUES (?, 'pending', 0, ?, ?, ?)",
         [(task_id, json.dumps({"prompt": f"bench {n}"}), now + n * 1e-6, now) for n, task_id in enumerate(ids)]),
        ("INSERT INTO task_events (namespace, task_id, status, attempt, created_at) VALUES (?, ?, 'pending', 0, ?)",
         [(VIDEO_NS, task_id, now) for task_id in ids]),
    ]
    if dbaccess.is_postgres(db_path):
        pg_target.insert_pending(db_path, statements, VIDEO_NS)
        return ids, time.time()
    with sqlite3.connect(db_path, timeout=30) as conn:
        for sql, rows in statements:
            conn.executemany(sql, rows)
    return ids, time.time()


async def raw_start_rate(address: str, total: int, concurrency: int) -> float:
    client = await connect_temporal(address)  # a dev server this run started
    queue = f"bench-raw-{uuid.uuid4().hex[:6]}"
    numbers = iter(range(total))

    async def starter():
        for n in numbers:
            await client.start_workflow("BenchWorkflow", {"n": n}, id=f"{queue}-{n}", task_queue=queue)

    started = time.perf_counter()
    await asyncio.gather(*[starter() for _ in range(concurrency)])
    return total / (time.perf_counter() - started)


def raw_phase(temporal: str, tasks: int) -> float:
    """The best raw start rate of 10 and 50 concurrent callers, with the CPU it took per start."""
    best, best_cpu = 0.0, {}
    for concurrency in (10, 50):
        meter = CpuMeter({"temporal": (pid_listening_on(temporal), False), "client": (os.getpid(), False)})
        meter.start()
        rate = asyncio.run(raw_start_rate(temporal, tasks, concurrency))
        if rate > best:
            best, best_cpu = rate, meter.stop()
    print_cpu(f"raw starts ({best:.0f}/s)     ", best_cpu, tasks)
    return best


def print_cpu(label: str, used: dict[str, float], tasks: int) -> None:
    parts = ", ".join(f"{name} {seconds * 1000 / tasks:.2f}" for name, seconds in used.items())
    print(f"  CPU ms per task, {label}: {parts}; total {sum(used.values()) * 1000 / tasks:.2f}", flush=True)


def dispatch_phase(folder: Path, temporal: str, tasks: int, processors: int) -> tuple[float, float]:
    """(tasks/s from the backlog's commit to the last workflow start, processor peak MB)."""
    # A task queue no worker serves: these workflows only need to be started, and must not
    # become work for the later phases' worker.
    phase = Phase(folder, temporal, FANGZHOU_TASK_QUEUE=f"bench-dispatch-{uuid.uuid4().hex[:8]}")
    try:
        procs = [phase.start(f"processor-{n}", ["processor.py"], host=n, HOSTNAME=f"bench-{n}")
                 for n in range(processors)]  # spread over the hosts (PostgreSQL: two)
        time.sleep(2.0)  # imports done, long polls waiting
        meter = CpuMeter({"temporal": (pid_listening_on(temporal), False), **phase.web_pids(),
                          **{f"processor-{n}": (p.pid, False) for n, p in enumerate(procs)}})
        meter.start()
        ids, committed = insert_pending(phase.db_path, tasks)
        wait_for_status(phase.db_path, "dispatched_at IS NULL", timeout=120)
        used = meter.stop()
        found = asyncio.run(start_times(temporal, {f"{VIDEO_NS}:{t}" for t in ids}, tasks, timeout=120))
        assert len(found) == tasks, f"only {len(found)} of {tasks} workflows started"
        rate = tasks / (max(found.values()) - committed)
        print_cpu(f"{processors} processor(s) ({rate:.0f}/s)", used, tasks)
        peak = max(peak_mb(p.pid) for p in procs)
        return rate, peak
    finally:
        phase.close()


def idle_phase(folder: Path, temporal: str, seconds: float = 10.0) -> dict[str, float]:
    """Two processors with nothing to do: the CPU (% of one core) the web process and each processor use."""
    phase = Phase(folder, temporal)
    try:
        procs = [phase.start(f"processor-{n}", ["processor.py"], host=n) for n in range(2)]
        time.sleep(3.0)  # imports done, long polls waiting
        webs = phase.web_pids()
        meter = CpuMeter({**webs, **{f"p{n}": (p.pid, False) for n, p in enumerate(procs)}})
        meter.start()
        time.sleep(seconds)
        used = meter.stop()
        return {"idle_web_cpu_pct": sum(used[name] for name in webs) / seconds * 100,  # all hosts together
                "idle_processor_cpu_pct": max(used["p0"], used["p1"]) / seconds * 100}
    finally:
        phase.close()


def wait_for_status(db_path: str, unfinished: str, timeout: float) -> None:
    """Until no video task matches the SQL condition `unfinished` (e.g. not yet dispatched)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not dbaccess.query(db_path, f"SELECT COUNT(*) AS n FROM video_tasks WHERE {unfinished}")[0]["n"]:
            return
        time.sleep(0.05)
    raise TimeoutError(f"video tasks still match {unfinished!r} after {timeout}s")


def dispatch_rounds(tmp: Path, tasks: int, rounds: int) -> dict[str, float]:
    """Raw rate, 1 processor, 2 processors; `rounds` times, each on a fresh Temporal server; medians.

    A fresh server per measurement: the dev server slows as it fills with open
    workflows, so a measurement taken after another would be compared unfairly.
    """
    runs: dict[str, list[float]] = {"raw": [], "rate_1": [], "rate_2": [], "peak": []}
    for n in range(rounds):
        with temporal_server(None, tmp / f"temporal-raw-{n}.log") as temporal:
            runs["raw"].append(raw_phase(temporal, tasks))
        for processors in (1, 2):
            with temporal_server(None, tmp / f"temporal-{processors}-{n}.log") as temporal:
                rate, peak = dispatch_phase(tmp / f"d{processors}-{n}", temporal, tasks, processors)
            runs[f"rate_{processors}"].append(rate)
            runs["peak"].append(peak)
    raw, rate_1, rate_2 = (statistics.median(runs[k]) for k in ("raw", "rate_1", "rate_2"))
    return {"temporal_start_rate": raw, "dispatch_rate_1": rate_1, "dispatch_ratio_1": rate_1 / raw,
            "dispatch_rate_2": rate_2, "dispatch_ratio_2": rate_2 / raw, "processor_peak_mb": max(runs["peak"])}


def latency_phase(folder: Path, temporal: str, push: bool, count: int = 200, rate: float = 20.0) -> dict:
    """Create `count` tasks at `rate`/s; creation -> workflow start latency (ms)."""
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        ark_port = free_port()
        stack.enter_context(python_process(["-m", "fakes.ark", "--port", str(ark_port)], folder / "ark.log",
                                           {"FAKE_API_KEY": KEY, "FAKE_STEP_SECONDS": "1"},
                                           ready_url=f"http://127.0.0.1:{ark_port}/_fake/health"))
        app = "bench.push_app:create_push_app()" if push else "app:create_app()"
        phase = Phase(folder, temporal, app=app, FANGZHOU_BASE_URL=f"http://127.0.0.1:{ark_port}/api/v3",
                      FANGZHOU_POLL_INTERVAL_SECONDS=1, FANGZHOU_TASK_QUEUE=f"bench-latency-{uuid.uuid4().hex[:8]}")
        stack.callback(phase.close)
        worker = phase.start("worker", ["workflows.py"])
        processor = None if push else phase.start("processor", ["processor.py"])
        time.sleep(2.0)
        path = "/push/video/generate" if push else "/api/video/generate"
        session = requests.Session()
        session.headers.update(USER)
        ids = []
        started = time.monotonic()
        for n in range(count):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            host = phase.urls[n % len(phase.urls)]  # PostgreSQL: every other task created on the second host
            ids.append(session.post(host + path, json={"prompt": f"latency {n}"}, timeout=30).json()["taskId"])
        found = asyncio.run(start_times(temporal, {f"{VIDEO_NS}:{t}" for t in ids}, count))
        rows = dbaccess.query(phase.db_path, "SELECT id, created_at FROM video_tasks")
        created = {r["id"]: r["created_at"] for r in rows}
        latencies = sorted((found[f"{VIDEO_NS}:{t}"] - created[t]) * 1000 for t in ids if f"{VIDEO_NS}:{t}" in found)
        # let the workflows run to the end so the worker's peak memory covers whole runs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not dbaccess.query(phase.db_path, "SELECT COUNT(*) AS n FROM video_tasks WHERE status NOT IN "
                                                 "('completed', 'failed')")[0]["n"]:
                break
            time.sleep(0.5)
        return {"latencies": latencies, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                "worker_mb": peak_mb(worker.pid), "processor_mb": peak_mb(processor.pid) if processor else None}


def _create_burst(urls: list[str], count: int, threads: int) -> float:
    """Run in a child process (its own GIL): `count` creations from `threads` threads, spread over the
    web hosts `urls`; returns seconds."""
    sessions = threading.local()

    def create(n):
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
            sessions.s.headers.update(USER)
        sessions.s.post(f"{urls[n % len(urls)]}/api/video/generate", json={"prompt": f"burst {n}"},
                        timeout=30).raise_for_status()

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(count)))
    return time.perf_counter() - began


def burst_phase(folder: Path, temporal: str, count: int = 1000) -> dict:
    """Creations come from another process, so the fetch timings here do not wait on the client's GIL."""
    from concurrent.futures import ProcessPoolExecutor

    phase = Phase(folder, temporal)
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        fetch_ms: list[float] = []
        with ProcessPoolExecutor(1) as creators:
            burst = creators.submit(_create_burst, phase.urls, count, 16)
            while not burst.done():
                began = time.perf_counter()
                session.get(f"{phase.url}/api/{VIDEO_NS}/fetchPendingTasks?limit=10", timeout=10).raise_for_status()
                fetch_ms.append((time.perf_counter() - began) * 1000)
                time.sleep(0.01)
            elapsed = burst.result()
        return {"create_rate": count / elapsed, "poll_avg": statistics.mean(fetch_ms), "poll_max": max(fetch_ms),
                "polls": len(fetch_ms)}
    finally:
        phase.close()


# -- users: a person's request while many processors wait and while slow clients hold sockets --

LONG_POLLING_PROCESSORS = 64  # each keeps one long poll per integration open: 128 waiting requests
SLOW_SOCKETS = 40
INTEGRATIONS = (VIDEO_NS, "nanobanana2ImageGeneration")


def _request_bytes(method: str, path: str, host: str, body: bytes | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {TOKEN}"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


def _hold_long_polls(url: str, processors: int, seconds: float, wait_ms: int = 30_000) -> dict:
    """Run in a child process: `processors` simulated processors, each with one long poll per integration.

    Like a processor, each poll claims what a fetch found and honours a hint to come back later
    (`retryAfterMs`) by sleeping; they alternate between a long-polled fetch and a long-polled claim.
    Returns counts of answers by kind; any answer but a 200 with a task list is an error.
    """
    host, port = url.removeprefix("http://").split(":")

    async def one(integration: str, n: int, counts: collections.Counter, stop_at: float) -> None:
        connection = None

        async def ask(request: bytes) -> tuple[int, dict]:
            """Send on the kept-alive connection; if the server closed it meanwhile (its keep-alive
            timeout, while this poll slept), once more on a new one, as an HTTP client does."""
            nonlocal connection
            for fresh in (False, True):
                if connection is None or fresh:
                    if connection is not None:
                        connection[1].close()
                    connection = await asyncio.open_connection(host, int(port))
                reader, writer = connection
                writer.write(request)
                try:
                    return await read_http_answer(reader)
                except (ConnectionError, asyncio.IncompleteReadError, IndexError):
                    if fresh:
                        raise
                    counts["reconnects"] += 1
            raise AssertionError("unreachable")

        fetch = f"/api/{integration}/fetchPendingTasks?limit=1&waitMs={wait_ms}"
        claim = f"/api/{integration}/claimPendingTasks"
        try:
            while time.monotonic() < stop_at:
                if n % 2:
                    status, answer = await ask(_request_bytes("GET", fetch, host))
                else:
                    status, answer = await ask(_request_bytes("POST", claim, host,
                                                              json.dumps({"waitMs": wait_ms}).encode()))
                n += 1
                if status != 200 or not isinstance(answer.get("tasks"), list):
                    counts["errors"] += 1
                    await asyncio.sleep(1)
                    continue
                counts["answers"] += 1
                if answer.get("retryAfterMs"):
                    counts["declined"] += 1
                    await asyncio.sleep(answer["retryAfterMs"] / 1000)
                elif answer["tasks"] and "attempt" not in answer["tasks"][0]:  # a fetch found work: claim it
                    status, answer = await ask(_request_bytes("POST", claim, host, b"{}"))
                    counts["answers" if status == 200 else "errors"] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            counts[f"failed: {type(exc).__name__}"] += 1
        finally:
            if connection is not None:
                connection[1].close()

    async def main() -> dict:
        counts: collections.Counter = collections.Counter()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(one(integration, n, counts, stop_at)
                               for n in range(processors) for integration in INTEGRATIONS))
        return dict(counts)

    return asyncio.run(main())


def _hold_slow_sockets(url: str, count: int, seconds: float) -> dict:
    """Run in a child process: `count` slowloris sockets for `seconds`, reopened when the server drops one.

    A third send nothing, a third stop in the middle of a request's headers, a third
    trickle one byte of an endless header every second. Returns how many times the
    server closed one (it may, to protect itself).
    """
    host, port = url.removeprefix("http://").split(":")
    partial = f"POST /api/video/generate HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer ".encode()

    async def one(kind: int, counts: collections.Counter, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                counts["refused"] += 1
                await asyncio.sleep(0.5)
                continue
            counts["opened"] += 1
            try:
                if kind:
                    writer.write(partial)
                while time.monotonic() < stop_at:
                    if kind == 2:
                        writer.write(b"x")
                        await writer.drain()
                    try:  # the server closing the socket (or answering) ends this one
                        if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                            counts["closed by server"] += 1
                            break
                        counts["answered"] += 1
                        break
                    except TimeoutError:
                        pass
            except OSError:
                counts["closed by server"] += 1
            finally:
                writer.close()

    async def main() -> dict:
        counts: collections.Counter = collections.Counter()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(one(n % 3, counts, stop_at) for n in range(count)))
        return dict(counts)

    return asyncio.run(main())


def _user_latencies(url: str, seconds: float, rate: float = 20.0) -> tuple[list[float], int]:
    """Creates at `rate`/s for `seconds`, each on a new connection (a person, not a processor), on a
    schedule that does not wait for slow answers: (each one's latency in ms, how many failed)."""
    latencies: list[float] = []
    failures = 0

    def create(n: int) -> None:
        nonlocal failures
        began = time.perf_counter()
        try:
            response = requests.post(f"{url}/api/video/generate", json={"prompt": f"user {n}"}, headers=USER,
                                     timeout=60)
            if response.status_code != 201:
                raise RuntimeError(response.status_code)
        except Exception:
            failures += 1
        latencies.append((time.perf_counter() - began) * 1000)  # a failure counts with its time to fail

    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        for n in range(int(seconds * rate)):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            pool.submit(create, n)
    return latencies, failures


def users_phase(folder: Path, seconds: float = 15.0) -> dict:
    """User create latency on a web process at default settings: idle, with 64 processors' long polls
    waiting, and with 40 slowloris sockets open. The load runs in child processes (their own GIL)."""
    from concurrent.futures import ProcessPoolExecutor

    phase = Phase(folder, "127.0.0.1:1")  # no Temporal: the web process never calls it
    try:
        results: dict[str, float] = {}

        def measure(label: str) -> tuple[list[float], int]:
            meter = CpuMeter({"web": (phase.web.pid, True)})
            meter.start()
            took, failed = _user_latencies(phase.url, seconds)
            cpu = meter.stop()["web"] / seconds * 100
            print(f"  {label}: user create p50 {percentile(took, 50):.1f} ms, p99 {percentile(took, 99):.1f} ms, "
                  f"max {max(took):.0f} ms, {failed} of {len(took)} failed; web CPU {cpu:.0f}% of a core", flush=True)
            return took, failed

        idle, failed = measure("idle")
        results.update(user_p99_ms_idle=percentile(idle, 99), user_failed_idle=failed)
        with ProcessPoolExecutor(1) as load:
            polls = load.submit(_hold_long_polls, phase.url, LONG_POLLING_PROCESSORS, seconds + 5)
            time.sleep(3)  # every poll sent and waiting (or declined)
            held = waiting_polls(phase.url)
            busy, failed = measure(f"64 processors ({held} polls held by the web process)")
            poll_counts = polls.result()
        poll_errors = sum(v for k, v in poll_counts.items() if k == "errors" or k.startswith("failed"))
        print(f"    long polls: {poll_counts}", flush=True)
        results.update(user_p99_ms_64_processors=percentile(busy, 99), user_max_ms_64_processors=max(busy),
                       user_failed_64_processors=failed, long_poll_errors_64_processors=poll_errors)
        with ProcessPoolExecutor(1) as load:
            slow = load.submit(_hold_slow_sockets, phase.url, SLOW_SOCKETS, seconds + 5)
            time.sleep(3)
            slowed, failed = measure("40 slowloris sockets")
            print(f"    slow sockets: {slow.result()}", flush=True)
        results.update(user_p99_ms_slowloris=percentile(slowed, 99), user_max_ms_slowloris=max(slowed),
                       user_failed_slowloris=failed)
        return results
    finally:
        phase.close()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))]


def fetch_phase(folder: Path) -> dict[int, float]:
    p99 = {}
    for rows in (10_000, 100_000, 1_000_000):
        if POSTGRES:
            with pg_target.fresh_schema(POSTGRES) as url:
                fetch_pending.build(url, rows)
                p99[rows] = fetch_pending.measure(url)["p99_ms"]
            continue
        path = str(folder / f"fetch-{rows}.db")
        fetch_pending.build(path, rows)
        p99[rows] = fetch_pending.measure(path)["p99_ms"]
        os.remove(path)
    return p99


def chart(results: dict, latencies: dict[str, list[float]], fetch_p99: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, values in latencies.items():
        if values:
            left.plot(sorted(values), [i / len(values) for i in range(1, len(values) + 1)], label=label)
    left.set_xscale("log")
    left.set_xlabel("creation -> workflow started (ms)")
    left.set_ylabel("share of tasks")
    left.set_title("Dispatch latency (CDF)")
    left.legend()
    rows = sorted(fetch_p99)
    right.plot(rows, [fetch_p99[r] for r in rows], marker="o")
    right.set_xscale("log")
    right.set_ylim(bottom=0)
    right.set_xlabel("task rows")
    right.set_ylabel("fetchPendingTasks p99 (ms)")
    right.set_title("Fetch latency against table size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


GOALS = [  # key, what it is, goal text, check
    ("temporal_start_rate", "raw start_workflow rate (starts/s)", "reference", None),
    ("dispatch_rate_1", "dispatch rate, 1 processor (tasks/s)", "", None),
    ("dispatch_ratio_1", "  ratio to raw", ">= 0.8", lambda v: v >= 0.8),
    ("dispatch_rate_2", "dispatch rate, 2 processors (tasks/s)", "", None),
    ("dispatch_ratio_2", "  ratio to raw", ">= 0.9", lambda v: v >= 0.9),
    ("latency_p50_ms", "creation -> started p50 (ms)", "<= 100", lambda v: v <= 100),
    ("latency_p99_ms", "creation -> started p99 (ms)", "<= 300", lambda v: v <= 300),
    ("push_latency_p50_ms", "push baseline p50 (ms)", "pull p50 <= 3x this", None),
    ("poll_latency_avg_ms", "fetch during 1,000-create burst, avg (ms)", "<= 10", lambda v: v <= 10),
    ("poll_latency_max_ms", "fetch during burst, max (ms)", "<= 100", lambda v: v <= 100),
    ("fetch_p99_ms_10k", "fetch query p99 at 10k rows (ms)", "", None),
    ("fetch_p99_ms_1m", "fetch query p99 at 1M rows (ms)", "<= 5", lambda v: v <= 5),
    ("create_rate", "task creation over HTTP (tasks/s)", "", None),
    ("dashboard_ms_1m", "dashboard render at 1M tasks, median (ms)", "<= 20", lambda v: v <= 20),
    ("user_p99_ms_idle", "user create p99, no processors (ms)", "", None),
    ("user_p99_ms_64_processors", "user create p99, 64 processors' long polls (ms)", "<= 100", lambda v: v <= 100),
    ("user_failed_64_processors", "  user creates failed", "0", lambda v: v == 0),
    ("long_poll_errors_64_processors", "  long polls answered with an error", "0", lambda v: v == 0),
    ("user_max_ms_slowloris", "user create max, 40 slowloris sockets (ms)", "<= 1000", lambda v: v <= 1000),
    ("user_failed_slowloris", "  user creates failed", "0", lambda v: v == 0),
    ("idle_web_cpu_pct", "web CPU, 2 processors idle (% of a core)", "", None),
    ("idle_processor_cpu_pct", "one idle processor's CPU (% of a core)", "", None),
    ("processor_peak_mb", "processor peak RSS (MB)", "<= 100", lambda v: v <= 100),
    ("prune_rate", "prune of 1M finished tasks (tasks/s)", "", None),
    ("prune_max_lock_ms", "  longest write lock while pruning (ms)", "<= 10", lambda v: v <= 10),
    ("worker_peak_mb", "worker peak RSS (MB)", "", None),
    ("lifecycle_rate", "lifecycle, create -> completed (tasks/s)", "", None),
    ("lifecycle_reference_rate", "  reference: the workflows alone (tasks/s)", "", None),
    ("lifecycle_ratio", "  lifecycle / reference", ">= 0.8", lambda v: v >= 0.8),
    ("lifecycle_cpu_ms_outside_temporal", "  CPU per task: worker+web+processor (ms)", "<= 15", lambda v: v <= 15),
    ("lifecycle_history_events", "  history events per task", "", None),
    ("idle_web_cpu_pct_64_processors", "web CPU, 64 idle processors (% of a core)", "<= 5", lambda v: v <= 5),
    ("lifecycle_1m_create_rate_ratio", "  lifecycle beside 1M finished tasks: create rate / empty", ">= 0.9",
     lambda v: v >= 0.9),
    ("lifecycle_1m_report_p50_ratio", "  report time p50 / empty", "<= 1.1", lambda v: v <= 1.1),
    ("lifecycle_1m_dashboard_ratio", "  dashboard render / empty", "<= 1.1", lambda v: v <= 1.1),
    ("sdk_floor_worker_cpu_ms_sandboxed_2", "floor: worker CPU, 2 no-op activities, sandboxed (ms)", "", None),
    ("sdk_floor_worker_cpu_ms_unsandboxed_2", "  the same, unsandboxed (ms)", "", None),
]


ALL_PHASES = "dispatch,latency,idle,burst,users,fetch,prune,dashboard,lifecycle"
SQLITE_ONLY = {"prune", "dashboard", "lifecycle"}  # prune.py and dashboard.py build SQLite files; lifecycle: not yet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--only", default=None, help=f"comma-separated phases (default: {ALL_PHASES}; "
                        f"on PostgreSQL without {', '.join(sorted(SQLITE_ONLY))})")
    parser.add_argument("--rounds", type=int, default=3, help="dispatch rounds; medians are reported")
    parser.add_argument("--lifecycle-tasks", type=int, default=300, help="tasks of the lifecycle phase")
    parser.add_argument("--postgres", action="store_true",
                        help="run on PostgreSQL: DATABASE_URL's server, or a throwaway cluster if it names none")
    args = parser.parse_args()
    with ExitStack() as server:
        global POSTGRES
        POSTGRES = pg_target.server_url(args.postgres, server)
        phases = set((args.only or ALL_PHASES).split(","))
        if POSTGRES:
            if args.only and phases & SQLITE_ONLY:
                parser.error(f"{', '.join(sorted(phases & SQLITE_ONLY))}: SQLite only")
            phases -= SQLITE_ONLY
            print(f"PostgreSQL ({dbaccess.query(POSTGRES, 'SELECT version() AS v')[0]['v'].split(',')[0]}), "
                  "two web hosts per phase", flush=True)
        run_phases(args, phases)


def run_phases(args: argparse.Namespace, phases: set[str]) -> None:
    results: dict[str, float] = {}
    latencies: dict[str, list[float]] = {}
    fetch_p99: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with ExitStack() as stack:
            if phases & {"dispatch", "latency", "idle", "burst"}:
                temporal = stack.enter_context(temporal_server(None, tmp / "temporal.log"))
            if "dispatch" in phases:
                results.update(dispatch_rounds(tmp, args.tasks, args.rounds))
            if "latency" in phases:
                pull = latency_phase(tmp / "pull", temporal, push=False)
                push = latency_phase(tmp / "push", temporal, push=True)
                latencies = {"pull (processor, defaults)": pull["latencies"], "push baseline": push["latencies"]}
                results.update(latency_p50_ms=pull["p50"], latency_p99_ms=pull["p99"],
                               push_latency_p50_ms=push["p50"], push_latency_p99_ms=push["p99"],
                               worker_peak_mb=pull["worker_mb"],
                               processor_peak_mb=max(results.get("processor_peak_mb", 0), pull["processor_mb"]))
            if "idle" in phases:
                results.update(idle_phase(tmp / "idle", temporal))
            if "burst" in phases:
                burst = burst_phase(tmp / "burst", temporal)
                results.update(poll_latency_avg_ms=burst["poll_avg"], poll_latency_max_ms=burst["poll_max"],
                               create_rate=burst["create_rate"])
        if "users" in phases:
            results.update(users_phase(tmp / "users"))
        if "fetch" in phases:
            fetch_p99 = fetch_phase(tmp)
            results.update(fetch_p99_ms_10k=fetch_p99[10_000], fetch_p99_ms_100k=fetch_p99[100_000],
                           fetch_p99_ms_1m=fetch_p99[1_000_000])
        if "prune" in phases:
            results.update(prune_bench.run(tmp, 1_000_000))
        if "dashboard" in phases:
            results.update(dashboard_ms_1m=dashboard.run(tmp)["/"]["p50_ms"])
        if "lifecycle" in phases:
            results.update(lifecycle.run(tmp / "lifecycle", args.lifecycle_tasks))
    report(results)
    # Phases not run this time keep their last figures: `--only users` adds its keys, drops none.
    # PostgreSQL's figures sit beside SQLite's, under the same keys in the "postgresql" object.
    path = HERE / "results.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    rounded = {k: round(v, 3) for k, v in results.items()}
    if POSTGRES:
        updated = {**previous, "postgresql": {**previous.get("postgresql", {}), **rounded}}
    else:
        updated = {**previous, **rounded}
    path.write_text(json.dumps(updated, indent=2) + "\n")
    picture = HERE / ("results-postgresql.png" if POSTGRES else "results.png")
    if latencies or fetch_p99:
        chart(results, latencies, fetch_p99, picture)
    print(f"\nwrote {HERE / 'results.json'}" + (f" and {picture}" if latencies or fetch_p99 else ""))


def report(results: dict[str, float]) -> None:
    print(f"\n{'figure':<44} {'value':>10}  {'goal':<22} met")
    for key, label, goal, check in GOALS:
        if key not in results:
            continue
        value = results[key]
        met = "" if check is None else ("yes" if check(value) else "NO")
        if key == "push_latency_p50_ms" and "latency_p50_ms" in results:
            met = "yes" if results["latency_p50_ms"] <= 3 * value else "NO"
        print(f"{label:<44} {value:>10.2f}  {goal:<22} {met}")


if __name__ == "__main__":
    main()
