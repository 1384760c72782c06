"""`make demo`: the whole development stack, a few sample tasks, their progress, a summary.

Starts Procfile.dev under honcho (Temporal dev server with its UI, both fake
providers, web, processor, worker), submits sample videos and images (one
designed to fail once and be retried), prints every transition as it
happens, then a summary table and the URLs. Ctrl-C stops every process it
started. With DEMO_EXIT=1 it exits after the summary: 0 if every sample task
ended as designed.

Ports are settings: WEB_PORT (5000), TEMPORAL_PORT (7233), TEMPORAL_UI_PORT
(8233), FAKE_ARK_PORT (18081), FAKE_NANOBANANA_PORT (18082).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dev.stack import BIN, ROOT, local_environ, wait_for_http

HTTP = requests.Session()  # carries the demo's client key once main() made it

DEADLINE_SECONDS = 180

# (kind, prompt, what it should end as, attempts it should take)
SAMPLES = [
    ("video", "A red fox running through fresh snow at sunrise", "completed", 1),
    ("video", "Timelapse of a city skyline from dusk to night", "completed", 1),
    ("video", "A paper boat on a rainy street [failfirst:1] (fails once, then retried)", "completed", 2),
    ("image", "A banana-shaped spaceship over a desert, poster style", "completed", 1),
    ("image", "Watercolor portrait of a cat wearing a scarf", "completed", 1),
    ("image", "Isometric pixel-art coffee shop", "completed", 1),
]


def ports() -> dict[str, int]:
    defaults = {"WEB_PORT": 5000, "TEMPORAL_PORT": 7233, "TEMPORAL_UI_PORT": 8233,
                "TEMPORAL_HTTP_PORT": 7243, "TEMPORAL_METRICS_PORT": 7244,
                "FAKE_ARK_PORT": 18081, "FAKE_NANOBANANA_PORT": 18082}
    chosen = {name: int(os.environ.get(name, default)) for name, default in defaults.items()}
    for name, port in chosen.items():
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"demo: port {port} ({name}) is in use; set {name}=<free port> and run again")
    return chosen


def environment(port: dict[str, int], data: Path) -> dict[str, str]:
    key = "demo-provider-key"
    return {
        **local_environ(),  # a developer's own TEMPORAL_* settings must not point the demo elsewhere
        **{name: str(value) for name, value in port.items()},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "INTERNAL_API_TOKEN": os.environ.get("INTERNAL_API_TOKEN") or secrets.token_urlsafe(24),
        # The user API and the dashboard are closed by default: the demo makes a key and a login.
        "CLIENT_API_KEYS": os.environ.get("CLIENT_API_KEYS") or secrets.token_urlsafe(24),
        "DASHBOARD_USERNAME": os.environ.get("DASHBOARD_USERNAME") or "admin",
        "DASHBOARD_PASSWORD": os.environ.get("DASHBOARD_PASSWORD") or secrets.token_urlsafe(18),
        "DATABASE_PATH": str(data / "demo.db"),
        "TEMPORAL_DB": str(data / "temporal.db"),
        "MAIN_ENDPOINT": f"http://127.0.0.1:{port['WEB_PORT']}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{port['TEMPORAL_PORT']}",
        "TEMPORAL_UI_URL": f"http://127.0.0.1:{port['TEMPORAL_UI_PORT']}",
        "FANGZHOU_BASE_URL": f"http://127.0.0.1:{port['FAKE_ARK_PORT']}/api/v3",
        "NANOBANANA_BASE_URL": f"http://127.0.0.1:{port['FAKE_NANOBANANA_PORT']}",
        "FANGZHOU_API_KEY": key, "NANOBANANA_API_KEY": key, "FAKE_API_KEY": key,
        "FAKE_STEP_SECONDS": os.environ.get("FAKE_STEP_SECONDS", "2"),
        "FANGZHOU_POLL_INTERVAL_SECONDS": "1", "NANOBANANA_POLL_INTERVAL_SECONDS": "1",
        "POLL_INTERVAL_MS": "500",
        "RETRY_BASE_SECONDS": "2",  # the sample that fails once waits 1-2 s for its retry, not minutes
    }


def wait_for(url: str, what: str, stack: subprocess.Popen, timeout: float = 60) -> None:
    try:
        wait_for_http(url, timeout=timeout, process=stack)
    except RuntimeError:
        sys.exit(f"demo: the stack exited while waiting for {what}; see data/demo.log")
    except TimeoutError:
        sys.exit(f"demo: {what} did not come up within {timeout:.0f}s; see data/demo.log")


def submit(base: str) -> list[dict]:
    tasks = []
    for n, (kind, prompt, expected, attempts) in enumerate(SAMPLES, 1):
        response = HTTP.post(f"{base}/api/{kind}/generate", json={"prompt": prompt}, timeout=10)
        response.raise_for_status()
        tasks.append({"n": n, "kind": kind, "prompt": prompt, "expected": expected, "expected_attempts": attempts,
                      "id": response.json()["taskId"], "seen": 0, "task": {}})
        print(f"  submitted {kind} #{n}: {prompt[:60]}")
    return tasks


def follow(base: str, tasks: list[dict]) -> None:
    """Print each task's events as they appear, until every task is completed or failed for good."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        for t in tasks:
            events = HTTP.get(f"{base}/api/tasks/{t['id']}/events", timeout=5).json()["events"]
            for event in events[t["seen"]:]:
                detail = event.get("error") or event.get("externalId") or ""
                print(f"  {t['kind']} #{t['n']}: {event['status']:<10} attempt {event['attempt']}  {detail[:70]}")
            t["seen"] = len(events)
            t["task"] = HTTP.get(f"{base}/api/tasks/{t['id']}", timeout=5).json()
        if all(settled(t) for t in tasks):
            return
        time.sleep(0.3)
    print(f"  (stopped following after {DEADLINE_SECONDS}s)")


def settled(t: dict) -> bool:
    task = t["task"]
    return task.get("status") == "completed" or (task.get("status") == "failed" and t["expected"] == "failed")


def summary(tasks: list[dict], port: dict[str, int], env: dict[str, str]) -> bool:
    print("\n  #  kind   status     attempts  as designed  result")
    ok = True
    for t in tasks:
        task = t["task"]
        good = task.get("status") == t["expected"] and task.get("attempts") == t["expected_attempts"]
        ok = ok and good
        result = task.get("result") or {}
        ours = result.get("media") or {}  # our stored copies (they outlive the provider's 24 h links)
        shown = (ours.get("videoUrl") or (ours.get("imageUrls") or [None])[0] or result.get("videoUrl")
                 or (result.get("imageUrls") or [None])[0] or task.get("error") or "")
        print(f"  {t['n']}  {t['kind']:<6} {task.get('status', '?'):<10} {task.get('attempts', '?'):<9} "
              f"{'yes' if good else 'NO':<12} {shown[:100]}")
    print(f"\n  dashboard:   http://127.0.0.1:{port['WEB_PORT']}/  (log in as {env['DASHBOARD_USERNAME']} / "
          f"{env['DASHBOARD_PASSWORD']})")
    print(f"  a task:      curl -H 'Authorization: Bearer {env['CLIENT_API_KEYS'].split(',')[0]}' "
          f"http://127.0.0.1:{port['WEB_PORT']}/api/tasks/{tasks[0]['id']}")
    stored = next((m for t in tasks for m in [(t["task"].get("result") or {}).get("media") or {}]
                   if m.get("videoUrl")), None)
    if stored:
        print(f"  a video:     curl -o video.mp4 -H 'Authorization: Bearer {env['CLIENT_API_KEYS'].split(',')[0]}' "
              f"{stored['videoUrl']}  (media live in data/media/)")
    print(f"  Temporal UI: http://127.0.0.1:{port['TEMPORAL_UI_PORT']}/namespaces/default/workflows")
    print("  logs:        data/demo.log")
    return ok


def stop_stack(stack: subprocess.Popen) -> None:
    if stack.poll() is None:
        os.killpg(stack.pid, signal.SIGTERM)
        try:
            stack.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait()


def main() -> int:
    os.chdir(ROOT)
    data = ROOT / "data"
    data.mkdir(exist_ok=True)
    port = ports()
    env = environment(port, data)
    HTTP.headers["Authorization"] = f"Bearer {env['CLIENT_API_KEYS'].split(',')[0]}"
    subprocess.run([str(BIN / "flask"), "--app", "app", "db", "upgrade"], env=env, check=True)  # an older demo.db
    print("demo: starting Temporal, the fake providers, web, processor and worker (Procfile.dev)")
    with open(data / "demo.log", "ab") as log:
        stack = subprocess.Popen([str(BIN / "honcho"), "-f", "Procfile.dev", "start"], cwd=ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = env["MAIN_ENDPOINT"]
        wait_for(f"{base}/healthz", "the web process", stack)
        wait_for(f"http://127.0.0.1:{port['TEMPORAL_UI_PORT']}/", "the Temporal UI", stack)
        print("demo: submitting sample tasks")
        tasks = submit(base)
        follow(base, tasks)
        ok = summary(tasks, port, env)
        if os.environ.get("DEMO_EXIT") == "1":
            print(f"\ndemo: {'every sample task ended as designed' if ok else 'some task did NOT end as designed'}")
            return 0 if ok else 1
        print("\ndemo: running; press Ctrl-C to stop every process")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        print("demo: stopping")
        stop_stack(stack)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # stop the stack on SIGTERM as on Ctrl-C
    raise SystemExit(main())
