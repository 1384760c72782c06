"""The worker measured by the lifecycle bench's `floor` phase (bench/lifecycle.py): the smallest workflows.

    .venv/bin/python -m bench.sdk_floor ADDRESS READY_FILE SANDBOXED(1|0)

A workflow that runs K no-op activities one after another (K = 1, 2, 5) and returns, started from a
client and executed by a Worker in its own process on a fresh Temporal dev server: no HTTP, no
database, no reports, no provider. Its worker CPU per workflow is what temporalio charges before any
of this project's work, sandboxed (the SDK's default, and the worker's) and not. Our lifecycle needs
at least a create and a wait, so the two-activity figure is the least its worker can cost; the issue's
goal of 15 ms is for worker, web and processor together.

The sandbox runs this module again for each workflow run, so it holds the workflow and little else (a
bigger module costs more per run: the project's own workflows.py is part of its floor). Nothing runs at import.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow

QUEUE = "sdk-floor"
CONCURRENT = 100  # workflows under way at once: enough to keep the worker busy, as the lifecycle's 300 do


@activity.defn(name="noop")
def noop(value: str) -> str:
    return value


@workflow.defn(name="SdkFloor")
class SdkFloor:
    @workflow.run
    async def run(self, activities: int) -> str:
        for _ in range(activities):
            await workflow.execute_activity(noop, "x", start_to_close_timeout=timedelta(seconds=30))
        return "done"


async def worker(address: str, ready: Path, sandboxed: bool) -> None:
    """The measured process: one Worker for SdkFloor until `ready` is removed."""
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.client import Client
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    client = await Client.connect(address)
    runner = {} if sandboxed else {"workflow_runner": UnsandboxedWorkflowRunner()}
    with ThreadPoolExecutor(CONCURRENT) as executor:
        async with Worker(client, task_queue=QUEUE, workflows=[SdkFloor], activities=[noop],
                          activity_executor=executor, **runner):
            ready.touch()
            while ready.exists():
                await asyncio.sleep(0.1)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import sdk_floor  # the workflow by its module's name, as the sandbox imports it again

    asyncio.run(sdk_floor.worker(sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"))
