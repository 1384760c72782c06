"""The test stack's own start-up (dev.stack): a port found free may be taken by another process before ours binds it.

free_port lets go of the port it found, so with tests running side by side another process (another test's
server, the Temporal dev server's internal services) can take it first. A CI run failed on exactly this: a
fake provider exited with "Port N is in use" and the test with it.
"""

import socket
import threading

import requests

from dev.stack import Stack
from tests.conftest import wait_until


def occupy(port: int) -> socket.socket:
    """Another program listening on `port` (that never answers)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_fake_whose_port_was_taken_first_starts_on_another_and_the_stack_is_told(tmp_path):
    stack = Stack(tmp_path)
    taken = stack.ports["banana"]
    with occupy(taken), stack:
        stack.start_fakes()
        assert stack.ports["banana"] != taken
        assert stack.env["NANOBANANA_BASE_URL"] == stack.fake("banana")
        assert requests.get(f"{stack.fake('banana')}/_fake/health", timeout=5).status_code == 200
        assert "in use" in (tmp_path / "banana.log").read_text()


def test_a_web_process_whose_port_was_taken_first_starts_on_another_and_the_others_are_told(tmp_path):
    stack = Stack(tmp_path)
    taken = stack.ports["web"]
    with occupy(taken), stack:
        url = stack.start_web(workers=1)
        assert stack.ports["web"] != taken
        assert url == stack.web_url == stack.env["MAIN_ENDPOINT"] == stack.web_urls["web"]
        assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


def test_a_fake_whose_port_an_http_server_took_first_is_not_mistaken_for_it(tmp_path):
    """The squatter answers HTTP (another test's server would): an answer on the port is no proof that the fake
    listens; its own "Running on" line is. The fake moves, and the stack is told its new port."""
    from http.server import ThreadingHTTPServer

    from tests.conftest import QuietHandler

    class Answering(QuietHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    stack = Stack(tmp_path)
    taken = stack.ports["banana"]
    squatter = ThreadingHTTPServer(("127.0.0.1", taken), Answering)
    threading.Thread(target=squatter.serve_forever, args=(0.02,), daemon=True).start()
    try:
        with stack:
            stack.start_fakes()
            assert stack.ports["banana"] != taken and stack.processes["banana"].poll() is None
            assert stack.env["NANOBANANA_BASE_URL"] == stack.fake("banana")
            assert requests.get(f"{stack.fake('banana')}/_fake/health", timeout=5).status_code == 200
    finally:
        squatter.shutdown()
        squatter.server_close()


def test_a_restarted_fake_waits_for_its_own_port_because_the_worker_was_told_it(tmp_path):
    stack = Stack(tmp_path)
    with stack:
        stack.start_fake("ark")
        port, url = stack.ports["ark"], stack.fake("ark")
        stack.kill("ark")
        blocker = occupy(port)
        log = tmp_path / "ark.log"
        seen = log.stat().st_size

        def free_once_refused():  # so the first try surely finds the port taken
            wait_until(lambda: "in use" in log.read_text()[seen:], timeout=30, message="the fake refused")
            blocker.close()

        threading.Thread(target=free_once_refused, daemon=True).start()
        stack.start_fake("ark")
        assert (stack.ports["ark"], stack.fake("ark")) == (port, url)
        assert requests.get(f"{url}/_fake/health", timeout=5).status_code == 200


def test_each_xdist_worker_takes_its_ports_from_its_own_range_below_the_kernels(monkeypatch):
    """Two workers never pick the same port, and neither picks one the kernel hands out for port 0."""
    from dev import stack as stack_module

    monkeypatch.setattr(stack_module, "_next_port", {})  # this worker's own turn is left as it was
    found = {}
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        found[worker] = {stack_module.free_port() for _ in range(200)}
    assert len(found["gw0"]) == len(found["gw1"]) == 200  # no port handed out twice in a row
    assert found["gw0"].isdisjoint(found["gw1"])
    assert max(found["gw0"] | found["gw1"]) < 32_768
