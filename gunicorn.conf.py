"""gunicorn settings for the web process (read by `gunicorn 'app:create_app()'` from this folder).

Threaded workers: a processor's long poll (fetchPendingTasks?waitMs=) holds a
thread, not a whole process. Every knob can be set from the environment.
"""

import glob
import os
import shutil
import sys
import tempfile

bind = os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
preload_app = True  # schema and config checked once, in the master, before forking
control_socket_disable = True  # several gunicorns on one host must not share ~/.gunicorn/gunicorn.ctl
graceful_timeout = 10
timeout = 60  # above the longest long poll (waitMs <= 30 s)

# Each worker process counts its own metrics; prometheus_client adds them up at scrape time
# from files in this folder (web/metrics.py). It must be set before prometheus_client is imported.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pull-dispatch-metrics-")


def on_starting(server):
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)  # a previous run's counts are not this one's


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # its waiting long polls are no longer waiting


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def post_fork(server, worker):
    # Short requests (claims, fetches) should not queue behind the GIL's default
    # 5 ms slices of longer ones in the same worker process.
    sys.setswitchinterval(float(os.environ.get("WEB_SWITCH_INTERVAL", "0.001")))
