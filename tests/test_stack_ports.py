"""The test stack's own start-up (dev.stack): a port found free may be taken by another process before ours binds it.

free_port lets go of the port it found, so with tests running side by side another process (another test's
server, the Temporal dev server's internal services) can take it first. A CI run failed on exactly this: a
fake provider exited with "Port N is in use" and the test with it.
"""

import socket
import threading

import requests

from dev.stack import Stack


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


def test_a_restarted_fake_waits_for_its_own_port_because_the_worker_was_told_it(tmp_path):
    stack = Stack(tmp_path)
    with stack:
        stack.start_fake("ark")
        port, url = stack.ports["ark"], stack.fake("ark")
        stack.kill("ark")
        blocker = occupy(port)
        threading.Timer(1.0, blocker.close).start()
        stack.start_fake("ark")
        assert (stack.ports["ark"], stack.fake("ark")) == (port, url)
        assert requests.get(f"{url}/_fake/health", timeout=5).status_code == 200
