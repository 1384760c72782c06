"""The lifecycle phase of `make bench` (issue 17): tasks from create to completed, and Temporal's own ceiling.

    .venv/bin/python bench/run.py --only lifecycle [--lifecycle-tasks 300]

stack      N tasks (half video, half image) created over HTTP at once against the whole stack on this
           machine (dev/stack.Stack: gunicorn, processor, worker, fake providers with 0.4 s jobs polled
           every 0.5 s, a fresh Temporal dev server): tasks/s from the first create to the last
           `completed`, CPU ms per task of every process, history events per task, database bytes per task.
reference  the same workflows (the worker's own classes, so the same activities, the same retry-driven
           polling and the same history) against the same kind of fresh Temporal server, started
           directly by a client, with in-process stand-in activities that make no HTTP call: the
           provider's job is a timestamp, a report and the media copy return at once. Temporal's own
           ceiling for this work; `lifecycle_ratio` = stack / reference.
idle       64 real processors at the shipped POLL_INTERVAL_MS against one idle web process: its CPU.
scale      the stack run again on an empty database and on one holding 1,000,000 finished tasks: create
           rate, the web process's time per report (access log), dashboard render; each 1M / empty.
floor      the worker CPU of workflows of 1, 2 and 5 no-op activities (bench/sdk_floor.py), sandboxed and
           not: what the Python SDK charges before any of our work, against the 15 ms goal for all of ours.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from integrations.shared.activities import (
    CreateInput,
    JobLook,
    PollInput,
    PollOutcome,
    ReportInput,
    StoredMediaOutcome,
    StoreMediaInput,
    not_done,
)

JOB_STEP_SECONDS = 0.2  # the fakes' queued and running steps: a 0.4 s job
POLL_SECONDS = 0.5
TEMPORAL_PROCESS = "temporal"
FAST = {"FAKE_STEP_SECONDS": JOB_STEP_SECONDS, "FANGZHOU_POLL_INTERVAL_SECONDS": POLL_SECONDS,
        "NANOBANANA_POLL_INTERVAL_SECONDS": POLL_SECONDS, "LOG_LEVEL": "WARNING",
        "FANGZHOU_MAX_ACTIVE": 100000, "NANOBANANA_MAX_ACTIVE": 100000}


def _cpu(processes: dict) -> dict[str, float]:
    from bench.procstat import cpu_seconds

    return {name: cpu_seconds(p.pid, with_children=True) for name, p in processes.items() if p.poll() is None}


def _per_task_ms(before: dict, after: dict, tasks: int) -> dict[str, float]:
    return {name: round((after[name] - before.get(name, 0.0)) * 1000 / tasks, 2) for name in after}


def _history_events(address: str, workflow_ids: list[str]) -> float:
    from dev.stack import connect_temporal

    async def count() -> list[int]:
        client = await connect_temporal(address)
        found = []
        for workflow_id in workflow_ids:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            found.append(len(history.events))
        return found

    counts = asyncio.run(count())
    return sum(counts) / len(counts)


def stack_phase(folder: Path, tasks: int) -> dict:
    """The whole stack, N tasks from create to completed."""
    from dev import dbaccess
    from dev.stack import Stack

    with Stack(folder, **FAST) as stack:
        stack.start_all()
        _warm_up(stack)
        before = _cpu(stack.processes)
        began = time.perf_counter()
        created = _create(stack, tasks, "lifecycle")
        _wait_ids_completed(stack.database, created.by_table, timeout=60 + tasks)
        elapsed = time.perf_counter() - began
        after = _cpu(stack.processes)
        cpu = _per_task_ms(before, after, tasks)
        rows = dbaccess.query(stack.database, "SELECT id FROM video_tasks UNION ALL SELECT id FROM image_tasks")
        assert len(rows) == tasks + 1
        pairs = list(zip(created.kinds, created.ids, strict=True))[:: max(1, tasks // 10)]
        sample = [f"{'fangzhouVideoGeneration' if kind == 'video' else 'nanobanana2ImageGeneration'}:{task_id}"
                  for kind, task_id in pairs]
        events = _history_events(stack.temporal_address, sample)
        db_bytes = sum(p.stat().st_size for p in folder.glob("app.db*"))
    outside = sum(v for k, v in cpu.items() if k in ("worker", "web", "processor"))
    return {"rate": tasks / elapsed, "seconds": elapsed, "cpu_ms_per_task": cpu,
            "cpu_ms_outside_temporal": round(outside, 2), "history_events": events,
            "db_bytes_per_task": db_bytes / (tasks + 1)}


class Created(NamedTuple):
    """What _create made: each task's kind and id in order, each create's seconds, and the creates' rate."""

    kinds: list[str]
    ids: list[str]
    took: list[float]
    rate: float

    @property
    def by_table(self) -> dict[str, list[str]]:
        pairs = list(zip(self.kinds, self.ids, strict=True))
        return {f"{kind}_tasks": [i for k, i in pairs if k == kind] for kind in ("video", "image")}


def _warm_up(stack) -> None:
    """One task through the stack first: it pays the processes' first-call costs."""
    _wait_ids_completed(stack.database, {"image_tasks": [stack.create("image", "warm-up")]}, timeout=60)


def _create(stack, tasks: int, label: str) -> Created:
    """N tasks, half video and half image, created over HTTP from 8 threads at once."""
    session = requests.Session()
    session.headers.update(stack.user)
    kinds = ["video" if n % 2 else "image" for n in range(tasks)]
    took: list[float] = []

    def create(n: int) -> str:
        began = time.perf_counter()
        response = session.post(f"{stack.web_url}/api/{kinds[n]}/generate", json={"prompt": f"{label} {n}"},
                                timeout=30)
        took.append(time.perf_counter() - began)
        response.raise_for_status()
        return response.json()["taskId"]

    began = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(create, range(tasks)))
    return Created(kinds, ids, took, tasks / (time.perf_counter() - began))


# -- the reference: the worker's workflows, stand-in activities, no HTTP --

def stand_in_activities() -> dict[str, list]:
    """Per integration, activities with the real names and types that do no I/O: a job is its creation time."""
    from temporalio import activity

    created: dict[str, float] = {}
    result = {"fangzhouVideoGeneration": {"video_url": "https://example.invalid/v.mp4",
                                          "last_frame_url": "https://example.invalid/f.png"},
              "nanobanana2ImageGeneration": {"images": ["https://example.invalid/i.png"]}}
    found: dict[str, list] = {}
    for namespace in result:
        def make(namespace: str = namespace) -> list:
            @activity.defn(name=f"{namespace}.createTask")
            def create_task(task: CreateInput) -> str:
                job = uuid.uuid4().hex
                created[job] = time.monotonic()
                return job

            @activity.defn(name=f"{namespace}.pollTask")
            def poll_task(poll: PollInput) -> PollOutcome:
                if time.monotonic() - created[poll.external_id] < 2 * JOB_STEP_SECONDS:
                    raise not_done(f"job {poll.external_id} is running")
                return PollOutcome(True, result=result[namespace])

            @activity.defn(name=f"{namespace}.lookTask")
            def look_task(look: PollInput) -> JobLook:
                return JobLook("gone", alive=False)

            @activity.defn(name=f"{namespace}.cancelTask")
            def cancel_task(cancel: PollInput) -> bool:
                return False

            return [create_task, poll_task, look_task, cancel_task]

        found[namespace] = make()

    @activity.defn(name="reportTaskEvent")
    def report_task_event(report: ReportInput) -> dict:
        return {"success": True}

    @activity.defn(name="storeMedia")
    def store_media(job: StoreMediaInput) -> StoredMediaOutcome:
        return StoredMediaOutcome(media={"stored": True})

    return {namespace: [*acts, report_task_event, store_media] for namespace, acts in found.items()}


async def _reference_worker(stop_file: Path) -> None:
    """The worker process of the reference: serve()'s workers and settings, stand-in activities."""
    import logging
    from contextlib import AsyncExitStack

    from temporalio.client import Client

    import workflows
    from settings import load_config, temporal_connection

    config = load_config()
    workflows.cache_bytecode(logging.getLogger("reference-worker"))
    stand_ins = stand_in_activities()
    client = await Client.connect(**temporal_connection(config))
    async with AsyncExitStack() as stack:
        for namespace, queue, workflow_class, _ in workflows.check_registry(config):
            worker = workflows.queue_worker(stack, client, namespace, queue, workflow_class, stand_ins[namespace])
            await stack.enter_async_context(worker)
        stop_file.touch()  # ready
        while stop_file.exists():
            await asyncio.sleep(0.1)


def _ready_worker(module_args: list[str], ready: Path, log_path: Path, env: dict):
    """`python -m <module_args>`: a worker that touches `ready` once it serves, waited for with a deadline."""
    import subprocess

    from settings import ROOT

    with open(log_path, "ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", *module_args], cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            worker.wait()
            raise RuntimeError(f"{module_args[0]} worker did not start; see {log_path}")
        time.sleep(0.05)
    return worker


def reference_phase(folder: Path, tasks: int) -> dict:
    """Start N workflows directly (as the processor would) and wait for every one to complete."""
    from dev.stack import Stack, connect_temporal, local_environ
    from integrations import load_integrations
    from settings import load_config

    with Stack(folder, **FAST) as stack:
        stack.start_temporal()
        ready = folder / "reference-worker.ready"
        worker = _ready_worker(["bench.lifecycle", "reference-worker", str(ready)], ready,
                               folder / "reference-worker.log", local_environ(stack.env))
        stack.processes["worker"] = worker
        environ = os.environ.copy()
        os.environ.update({k: str(v) for k, v in stack.env.items()})
        try:
            pulls = {i.namespace: i.get_pull_mode_config() for i in load_integrations(load_config())}
        finally:
            os.environ.clear()
            os.environ.update(environ)

        async def run(count: int) -> tuple[float, list[str]]:
            client = await connect_temporal(stack.temporal_address)
            names = list(pulls)

            async def one(n: int) -> str:
                pull = pulls[names[n % 2]]
                task = {"id": uuid.uuid4().hex, "requestParams": {"prompt": f"reference {n}"}, "attempt": 1}
                handle = await client.start_workflow(pull.workflow_name, pull.build_workflow_params(task),
                                                     id=pull.build_workflow_id(task), task_queue=pull.task_queue)
                await handle.result()
                return handle.id

            began = time.perf_counter()
            ids = await asyncio.gather(*(one(n) for n in range(count)))
            return time.perf_counter() - began, ids

        asyncio.run(run(1))  # warm-up
        before = _cpu(stack.processes)
        elapsed, ids = asyncio.run(run(tasks))
        after = _cpu(stack.processes)
        events = _history_events(stack.temporal_address, ids[:: max(1, tasks // 10)])
        ready.unlink()
        worker.wait(30)
    return {"rate": tasks / elapsed, "seconds": elapsed, "cpu_ms_per_task": _per_task_ms(before, after, tasks),
            "history_events": events}


# -- the floor: the SDK's own worker cost for the smallest workflows --

FLOOR_ACTIVITY_COUNTS = (1, 2, 5)


def floor_phase(folder: Path, workflows: int) -> dict:
    """Worker CPU ms per workflow of bench/sdk_floor.py's K no-op activities, sandboxed and not, on a fresh
    Temporal dev server: what temporalio itself costs before any of this project's work."""
    from temporalio.client import Client

    from bench import sdk_floor
    from bench.procstat import cpu_seconds
    from dev.stack import local_environ, start_dev_server, stop

    async def execute(address: str, count: int, activities: int) -> None:
        client = await Client.connect(address)
        room = asyncio.Semaphore(sdk_floor.CONCURRENT)

        async def one() -> None:
            async with room:
                await client.execute_workflow(sdk_floor.SdkFloor.run, activities, id=uuid.uuid4().hex,
                                              task_queue=sdk_floor.QUEUE)

        await asyncio.gather(*(one() for _ in range(count)))

    folder.mkdir(parents=True, exist_ok=True)
    server, address = start_dev_server(None, folder / "temporal.log")
    results = {}
    try:
        for sandboxed in (True, False):
            for activities in FLOOR_ACTIVITY_COUNTS:
                ready = folder / f"worker-{int(sandboxed)}-{activities}.ready"
                worker = _ready_worker(["bench.sdk_floor", address, str(ready), str(int(sandboxed))], ready,
                                       folder / "worker.log", local_environ())
                try:
                    asyncio.run(execute(address, 20, activities))  # warm-up
                    before = cpu_seconds(worker.pid)
                    asyncio.run(execute(address, workflows, activities))
                    used = cpu_seconds(worker.pid) - before
                finally:
                    ready.unlink(missing_ok=True)
                    stop(worker, timeout=30)
                runner = "sandboxed" if sandboxed else "unsandboxed"
                key = f"sdk_floor_worker_cpu_ms_{runner}_{activities}"
                results[key] = round(used * 1000 / workflows, 1)
                print(f"  floor: {activities} no-op activities, {runner}: worker {results[key]} ms per workflow",
                      flush=True)
    finally:
        stop(server)
    return results


# -- the lifecycle beside 1,000,000 finished tasks --

ROUNDS = 2  # what is compared alternates; each side keeps its best round (a throughput's least disturbed run)
ACCESS_FORMAT = "%(m)s %(U)s %(s)s %(D)s"  # method, path, status, microseconds: the web process's own time


def scale_phase(folder: Path, tasks: int, rows: int = 1_000_000, renders: int = 50) -> dict:
    """The lifecycle on an empty database and on one already holding `rows` finished tasks (bench/dashboard's
    table, completed and failed for good, with their events and counters, created over the last 30 days): the
    create rate, the web process's time per report (its access log) and the dashboard's render, side by side."""
    import shutil

    from bench import dashboard

    million = folder / "million.db"
    began = time.perf_counter()
    # Finished, all older than an hour: the dashboard then shows the same page as on the empty database (the
    # newest tasks, the last hour's chart), and only the million rows differ.
    dashboard.build(str(million), rows, mix=dashboard.FINISHED, recent_per_minute=0)
    print(f"  scale: built {rows:,} finished tasks in {time.perf_counter() - began:.0f}s", flush=True)
    found: dict[str, list[dict]] = {"empty": [], "1m": []}
    for n in range(ROUNDS):  # alternating, each side keeps its best figures (as the lifecycle's rounds do)
        for label in found:
            sub = folder / f"{label}-{n + 1}"
            sub.mkdir(parents=True, exist_ok=True)
            if label == "1m":
                shutil.copyfile(million, sub / "app.db")
            found[label].append(_scale_run(sub, tasks, renders))
            print(f"  scale {label} {n + 1}: {found[label][-1]}", flush=True)
    million.unlink()
    empty, full = (_best(found[label]) for label in ("empty", "1m"))
    keys = {}
    for name in ("create_rate", "create_ms_p50", "report_ms_p50", "report_ms_p99", "dashboard_ms"):
        keys[f"lifecycle_empty_{name}"] = empty[name]
        keys[f"lifecycle_1m_{name}"] = full[name]
    keys["lifecycle_1m_create_rate_ratio"] = round(full["create_rate"] / empty["create_rate"], 3)
    keys["lifecycle_1m_report_p50_ratio"] = round(full["report_ms_p50"] / empty["report_ms_p50"], 3)
    keys["lifecycle_1m_dashboard_ratio"] = round(full["dashboard_ms"] / empty["dashboard_ms"], 3)
    return keys


def _best(runs: list[dict]) -> dict:
    """The best of each figure over the rounds: the highest rate, the lowest times."""
    return {name: (max if name == "create_rate" else min)(run[name] for run in runs) for name in runs[0]}


def _scale_run(folder: Path, tasks: int, renders: int) -> dict:
    """N tasks through the whole stack on the database in `folder` (app.db, if there): what scale_phase compares."""
    import statistics

    from dev.stack import Stack

    access = folder / "access.log"
    with Stack(folder, **FAST, GUNICORN_CMD_ARGS=f"--access-logfile {access} --access-logformat '{ACCESS_FORMAT}'",
               ) as stack:
        stack.start_all()
        _warm_up(stack)
        log_start = access.stat().st_size
        created = _create(stack, tasks, "scale")
        _wait_ids_completed(stack.database, created.by_table, timeout=60 + tasks)
        with open(access, "rb") as log:
            log.seek(log_start)
            lines = log.read().decode().splitlines()
        reports = sorted(int(line.split()[3]) / 1000 for line in lines
                         if line.startswith("POST ") and line.split()[1].endswith("Result"))
        login = {"Authorization": "Basic " + base64.b64encode(":".join(stack.DASHBOARD).encode()).decode()}
        renders_ms = []
        for n in range(10 + renders):
            began = time.perf_counter()
            page = requests.get(f"{stack.web_url}/", headers=login, timeout=30)
            if n >= 10:  # the first ten warm the connection, the templates and SQLite's page cache
                renders_ms.append((time.perf_counter() - began) * 1000)
            assert page.status_code == 200, page.status_code
    return {"create_rate": round(created.rate, 1),
            "create_ms_p50": round(statistics.median(created.took) * 1000, 2),
            "report_ms_p50": round(statistics.median(reports), 2),
            "report_ms_p99": round(reports[int(len(reports) * 0.99) - 1], 2), "reports": len(reports),
            "dashboard_ms": round(statistics.median(renders_ms), 2)}


def _wait_ids_completed(database: str, ids: dict[str, list[str]], timeout: float) -> None:
    """Until every task of `ids` (per table) is completed; by primary key, so a million other rows cost nothing."""
    from dev import dbaccess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = 0
        for table, wanted in ids.items():
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                done += dbaccess.query(database, f"SELECT COUNT(*) AS n FROM {table} WHERE status = 'completed' "
                                                 f"AND id IN ({marks})", chunk)[0]["n"]
        if done == sum(len(wanted) for wanted in ids.values()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"not every task completed within {timeout}s")


IDLE_PROCESSORS = 64


def idle_phase(folder: Path, seconds: float = 60.0, **env) -> dict:
    """64 real processors (`python processor.py`, at the shipped POLL_INTERVAL_MS unless `env` says otherwise)
    connected to one web process with nothing to do: the web process's CPU while they wait, as a percentage
    of one core. (dev.stack.Stack's own POLL_INTERVAL_MS, 200, is a test setting: not what users run.)"""
    import json

    from bench.procstat import CpuMeter, waiting_polls
    from dev.stack import Stack

    shipped = json.loads((Path(__file__).resolve().parent.parent / "app.config.json").read_text())
    env = {"POLL_INTERVAL_MS": shipped["components"]["asyncTask"]["pullMode"]["pollIntervalMs"], **env}
    with Stack(folder, LOG_LEVEL="WARNING", **env) as stack:
        stack.start_temporal()
        stack.start_web()
        for n in range(IDLE_PROCESSORS):
            stack.start_processor(f"processor-{n}")
        # Every processor started and settled: their start-up (imports, connecting to Temporal) is over when the
        # CPU all 64 use in a 2 s window stops falling (within a fifth of the window before). The web process
        # holds as many long polls as its budget allows and asks the rest to come back later (retryAfterMs).
        processors = CpuMeter({name: (p.pid, False) for name, p in stack.processes.items()
                               if name.startswith("processor-")})
        deadline, windows = time.monotonic() + 300, []
        while len(windows) < 3 or abs(windows[-1] - windows[-2]) > 0.2 * windows[-2]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"64 processors did not settle within 300 s: {windows}")
            processors.start()
            time.sleep(2)
            windows.append(sum(processors.stop().values()))
        print(f"  idle: 64 processors settled, using {windows[-1] / 2 * 100:.0f}% of a core together", flush=True)
        meter = CpuMeter({"web": (stack.processes["web"].pid, True)})
        meter.start()
        held = []
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            time.sleep(1)
            held.append(waiting_polls(stack.web_url))
        used = meter.stop()["web"]
        elapsed = time.monotonic() - began
    pct = used / elapsed * 100
    print(f"  idle: {IDLE_PROCESSORS} processors, {min(held)}-{max(held)} long polls held; "
          f"web CPU {pct:.2f}% of a core")
    return {"idle_web_cpu_pct_64_processors": round(pct, 2)}


def run(folder: Path, tasks: int) -> dict:
    """Every measurement, each on its own fresh Temporal server; the results.json keys."""
    for name in ("idle", "scale"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    references, stacks = [], []
    for n in range(ROUNDS):
        for name, phase, found in (("reference", reference_phase, references), ("stack", stack_phase, stacks)):
            sub = folder / f"{name}-{n + 1}"
            sub.mkdir(parents=True, exist_ok=True)
            found.append(phase(sub, tasks))
            print(f"  lifecycle {name} {n + 1}: {found[-1]}", flush=True)
    reference = max(references, key=lambda r: r["rate"])
    stack = max(stacks, key=lambda r: r["rate"])
    idle = idle_phase(folder / "idle")
    scale = scale_phase(folder / "scale", tasks)
    floor = floor_phase(folder / "floor", tasks)
    per_process = {f"lifecycle_cpu_ms_{name}": ms for name, ms in stack["cpu_ms_per_task"].items()}
    reference_per_process = {f"lifecycle_reference_cpu_ms_{name}": ms
                             for name, ms in reference["cpu_ms_per_task"].items()}
    return {"lifecycle_rate": round(stack["rate"], 2), "lifecycle_reference_rate": round(reference["rate"], 2),
            "lifecycle_ratio": round(stack["rate"] / reference["rate"], 3),
            "lifecycle_cpu_ms_outside_temporal": stack["cpu_ms_outside_temporal"],
            "lifecycle_history_events": stack["history_events"],
            "lifecycle_reference_history_events": reference["history_events"],
            **per_process, **reference_per_process,
            "lifecycle_db_bytes_per_task": round(stack["db_bytes_per_task"]), **idle, **scale, **floor}


if __name__ == "__main__":
    if sys.argv[1:2] == ["reference-worker"]:
        asyncio.run(_reference_worker(Path(sys.argv[2])))
    elif sys.argv[1:2] == ["floor"]:  # the floor phase alone: bench/lifecycle.py floor [workflows]
        import json
        import tempfile

        found = floor_phase(Path(tempfile.mkdtemp(prefix="sdk-floor-")), int(sys.argv[2]) if len(sys.argv) > 2 else 300)
        print(json.dumps(found, indent=2))
    else:
        import json
        import tempfile

        count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
        folder = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="lifecycle-"))
        print(json.dumps(run(folder, count), indent=2))
