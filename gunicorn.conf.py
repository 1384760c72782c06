"""gunicorn settings for the web process (read by `gunicorn 'app:create_app()'` from this folder).

Threaded workers: a processor's long poll (fetchPendingTasks?waitMs=) holds a
thread, not a whole process. Every knob can be set from the environment.
"""

import os
import sys

bind = os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
preload_app = True  # schema and config checked once, in the master, before forking
control_socket_disable = True  # several gunicorns on one host must not share ~/.gunicorn/gunicorn.ctl
graceful_timeout = 10
timeout = 60  # above the longest long poll (waitMs <= 30 s)


def post_fork(server, worker):
    # Short requests (claims, fetches) should not queue behind the GIL's default
    # 5 ms slices of longer ones in the same worker process.
    sys.setswitchinterval(float(os.environ.get("WEB_SWITCH_INTERVAL", "0.001")))
