"""gunicorn settings for the web process (read by `gunicorn 'app:create_app()'` from this folder).

Threaded workers: a processor's long poll (fetchPendingTasks?waitMs=) holds a
thread, not a whole process; at most half a worker's threads wait in long polls
(WEB_LONG_POLLS), and a thread is given a request only once it has fully arrived
(BufferingThreadWorker, below). Every knob can be set from the environment.
"""

import contextlib
import glob
import json
import os
import selectors
import shutil
import socket
import sys
import tempfile
import time
from functools import partial

from gunicorn import http as gunicorn_http
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import ThreadWorker

bind = os.environ.get("GUNICORN_BIND") or f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
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


def post_worker_init(worker):
    from web import retention

    retention.start(worker.wsgi)  # RETENTION_DAYS: one worker at a time prunes (web/retention.py)


def worker_exit(server, worker):
    from web import retention

    retention.stop()


def post_fork(server, worker):
    # Short requests (claims, fetches) should not queue behind the GIL's default
    # 5 ms slices of longer ones in the same worker process.
    sys.setswitchinterval(float(os.environ.get("WEB_SWITCH_INTERVAL", "0.001")))
    from web import commit_watch

    commit_watch.limit_waiting(long_polls_per_worker(worker.cfg.threads))


# -- Long polls and slow clients (README "Many processors and an exposed web process") --
#
# A waiting long poll holds a thread; past WEB_LONG_POLLS of them (half its threads) a worker answers a poll at
# once with a `retryAfterMs` hint instead (web/commit_watch.py), so the other threads stay free for
# users whatever the number of processors. And a thread gets a request only once it has arrived in
# full (BufferingThreadWorker): a client that sends slowly, or nothing, costs a socket, not a thread.
def long_polls_per_worker(threads: int) -> int:
    """WEB_LONG_POLLS, by default half the threads; always at least one thread left for everything else."""
    return max(0, min(threads - 1, int(os.environ.get("WEB_LONG_POLLS", max(1, threads // 2)))))


REQUEST_READ_SECONDS = float(os.environ.get("WEB_REQUEST_READ_SECONDS", "10"))  # a whole request must arrive in
MAX_HEAD_BYTES = 64 * 1024  # request line and headers: larger is refused (431)
MAX_BUFFERED_BODY_BYTES = 1024 * 1024  # above the app's own limit (256 KiB, 413), so the app judges up to here
LINGER_SECONDS = 2.0  # after a refusal, read and drop what the client still sends, so it gets the answer


class Refused(Exception):
    """A request the worker answers itself, before any thread sees it."""

    def __init__(self, status: str, error: str):
        super().__init__(status)
        body = json.dumps({"success": False, "error": error}).encode()
        self.answer = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                       "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n").encode() + body


def request_end(data: bytes | bytearray) -> int | None:
    """Where the first HTTP/1.1 request in `data` ends, or None while part of it is still to come.

    Raises Refused for a head over MAX_HEAD_BYTES or a body over MAX_BUFFERED_BODY_BYTES. A
    request gunicorn's parser will reject anyway (a bare LF, a malformed length or chunk) ends
    where the reading can stop: the parser then answers 400 from what is already here.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        if data.count(b"\n") != data.count(b"\r\n"):
            return len(data)  # a bare LF: the parser refuses it without reading more
        if len(data) > MAX_HEAD_BYTES:
            raise Refused("431 Request Header Fields Too Large", "Request headers too large")
        return None
    body = head_end + 4
    length, chunked = 0, False
    for line in bytes(data[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit():
                return body
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
            if not chunked:
                return body
    if not chunked:
        if length > MAX_BUFFERED_BODY_BYTES:
            raise Refused("413 Content Too Large", "Request body too large")
        return body + length if len(data) >= body + length else None
    end = chunked_end(data, body)
    if end is None and len(data) - body > MAX_BUFFERED_BODY_BYTES:
        raise Refused("413 Content Too Large", "Request body too large")
    return end


def chunked_end(data: bytes | bytearray, at: int) -> int | None:
    """Where a chunked body starting at `at` ends (None: not yet): chunks of a hex size line, the data and
    CRLF; a zero size, trailers, an empty line. A malformed size ends it there (the parser refuses it)."""
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        try:
            size = int(bytes(data[at:line_end]).split(b";")[0].strip(), 16)
        except ValueError:
            return line_end
        if size < 0:
            return line_end
        if size == 0:
            if data[line_end + 2:line_end + 4] == b"\r\n":
                return line_end + 4
            trailers_end = data.find(b"\r\n\r\n", line_end)
            return None if trailers_end < 0 else trailers_end + 4
        at = line_end + 2 + size + 2
        if at > len(data):
            return None


def expects_continue(data: bytes | bytearray) -> bool:
    """Whether a whole head asks for `100 Continue` before the client sends the body."""
    head_end = data.find(b"\r\n\r\n")
    head = bytes(data[:head_end]).lower() if head_end >= 0 else b""
    return b"\r\nexpect:" in head and b"100-continue" in head


def without_expect(data: bytes | bytearray) -> bytes:
    """The request with its Expect header left out."""
    head_end = data.find(b"\r\n\r\n")
    lines = bytes(data[:head_end]).split(b"\r\n")
    kept = [lines[0], *(line for line in lines[1:] if not line.lower().startswith(b"expect:"))]
    return b"\r\n".join(kept) + bytes(data[head_end:])


class BufferingThreadWorker(ThreadWorker):
    """gunicorn's gthread worker, but a connection reaches a thread only with a whole request in hand.

    gthread hands a connection to a thread as soon as a byte arrives, and the thread
    then reads the rest with a blocking socket: a client trickling its headers (or a
    body) holds the thread as long as it likes, and 40 such clients hold every thread of
    every worker. Here the worker's own event loop (its main thread, which already
    watches the listening and kept-alive sockets) reads what arrives, without blocking,
    until the request (head and body) is complete; only then does a thread get it, with
    the bytes already read. A request that has not arrived in full REQUEST_READ_SECONDS
    after its first byte (a new connection: after it was accepted) is answered 408 and
    closed; a connection that sent nothing is just closed. TLS, HTTP/2, uWSGI and PROXY
    protocol connections are left to gthread as they are.

    It overrides gthread's `enqueue_req` and `murder_pending` (gunicorn 27.0.1, pinned in
    requirements.txt); tests/test_long_polls.py fails if an upgrade changes what they rely on.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: dict = {}  # connection (its request not whole yet, or refused and lingering) -> deadline

    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        """Once the worker is to stop, for whatever reason (SIGTERM: a restart, a deploy, a scale-down, a HUP
        reload; `max_requests`; `--reload`), end the long polls it holds: a 20 s idle poll would otherwise keep
        the old worker alive (its pool's threads are joined at exit) and hold up its replacement that long
        (web/commit_watch.stop_waiting)."""
        self._alive = value
        if not value:
            from web import commit_watch

            commit_watch.stop_waiting()

    def enqueue_req(self, conn):
        if getattr(conn, "complete", False) or not self._buffers(conn):
            conn.complete = False
            return super().enqueue_req(conn)
        if conn.parser is None:  # a new connection: the parser a thread would make, made here
            conn.parser = gunicorn_http.get_parser(self.cfg, conn.sock, conn.client)
        conn.received = bytearray(conn.parser.unreader.take_buffered())  # read ahead with the last request
        conn.continued = conn.watched = conn.lingering = False
        conn.sock.setblocking(False)
        self.reading[conn] = time.monotonic() + REQUEST_READ_SECONDS
        if not self._advance(conn):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
            conn.watched = True

    def _buffers(self, conn) -> bool:
        return (not self.cfg.is_ssl and not conn.is_http2 and self.cfg.protocol == "http"
                and self.cfg.proxy_protocol == "off"
                and not negotiation.prior_knowledge_allowed(self.cfg, conn.client))

    def _readable(self, conn, _sock):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if conn.lingering:
            if not data:
                self._close(conn)
            return
        if not data:  # the client went away before its request was whole
            self._close(conn)
            return
        conn.received += data
        self._advance(conn)

    def _advance(self, conn) -> bool:
        """Hand the connection to a thread if its request is whole, or refuse it; False: read on."""
        try:
            end = request_end(conn.received)
        except Refused as refused:
            self._refuse(conn, refused.answer)
            return True
        if end is None:
            if not conn.continued and expects_continue(conn.received):
                conn.continued = True  # the client waits for this before it sends the body
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        self.reading.pop(conn, None)
        if conn.watched:
            self.poller.unregister(conn.sock)
            conn.watched = False
        if conn.continued:  # answered here already: the thread must not send another 100 Continue
            conn.received = without_expect(conn.received)
        conn.parser.unreader.unread(bytes(conn.received))
        conn.received = None
        conn.complete = conn.data_ready = True  # data_ready: gthread must not wait for bytes already read
        self.enqueue_req(conn)
        return True

    def _refuse(self, conn, answer: bytes) -> None:
        """Answer without a thread, then read and drop what still comes for a moment, then close."""
        with contextlib.suppress(OSError):
            conn.sock.send(answer)
            conn.sock.shutdown(socket.SHUT_WR)
        conn.lingering = True
        self.reading[conn] = time.monotonic() + LINGER_SECONDS
        if not conn.watched:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
            conn.watched = True

    def _close(self, conn) -> None:
        self.reading.pop(conn, None)
        if conn.watched:
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """gthread's own sweep, then requests out of time: 408 if part of one came, else just closed.
        A stopping worker closes at once the connections that have sent nothing."""
        super().murder_pending()
        now = time.monotonic()
        for conn, deadline in list(self.reading.items()):
            idle = not conn.received
            if deadline > now and (self.alive or not idle):
                continue
            if conn.lingering or idle:
                self._close(conn)
            else:
                self._refuse(conn, Refused("408 Request Timeout", "Request not received in time").answer)


worker_class = BufferingThreadWorker
