"""`Idempotency-Key` on create (issue 15): a client's retry of the same request returns the first task, never a
second (paid) one; the same key with another body is refused; keys are per client; concurrent duplicates
make one task."""

from __future__ import annotations

import threading

import pytest
import requests
from freezegun import freeze_time

from app import create_app
from dev import dbaccess
from tests.conftest import BACKENDS, SECRETS, USER, VIDEO, db_config, snapshot

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)  # the same assertions on both stores

CLIENT_B = "second-client-key-0123456"
BODY = {"prompt": "a heron at dawn", "duration": 5}


def post(client, body=BODY, key="retry-1", path="/api/video/generate", headers=None):
    return client.post(path, json=body, headers={**({"Idempotency-Key": key} if key else {}), **(headers or {})})


def count_tasks(target):
    return sum(dbaccess.query(target, f"SELECT COUNT(*) AS n FROM {t}")[0]["n"] for t in ("video_tasks", "image_tasks"))


def test_a_retry_with_the_same_key_and_body_returns_the_first_task(client, db_target):
    first = post(client)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    again = post(client, body={"duration": 5, "prompt": "a heron at dawn"})  # same body, keys in another order
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json == {"taskId": first.json["taskId"], "status": "pending"}
    assert count_tasks(db_target) == 1
    # one `pending` event: the replay wrote nothing
    assert dbaccess.query(db_target, "SELECT COUNT(*) AS n FROM task_events")[0]["n"] == 1


def test_the_replay_answers_the_first_answer_even_after_the_task_moved_on(client, tasks):
    first = post(client).json
    assert tasks.report(first["taskId"], "queued").status_code == 200  # a processor claimed it
    assert post(client).json == first


def test_the_same_key_with_another_body_or_path_is_422_and_changes_nothing(client, db_target):
    post(client)
    before = snapshot(db_target)
    other_body = post(client, body={"prompt": "a heron at dusk"})
    assert other_body.status_code == 422 and "different request" in other_body.json["error"]
    assert post(client, body={"prompt": "a wren"}, key="retry-2").status_code == 201
    before = snapshot(db_target)
    other_path = post(client, body={"prompt": "a wren"}, key="retry-2", path="/api/image/generate")
    assert other_path.status_code == 422
    assert snapshot(db_target) == before


def test_keys_are_per_client(db_target):
    client = create_app({**db_config(db_target), **SECRETS,
                         "CLIENT_API_KEYS": f"{SECRETS['CLIENT_API_KEYS']},{CLIENT_B}"}).test_client()
    mine = post(client, headers=USER)
    theirs = post(client, headers={"Authorization": f"Bearer {CLIENT_B}"})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json["taskId"] != theirs.json["taskId"]
    # no client key is stored, only a hash of it
    rows = dbaccess.query(db_target, "SELECT * FROM idempotency_keys")
    stored = " ".join(str(v) for row in rows for v in row.values())
    assert SECRETS["CLIENT_API_KEYS"] not in stored and CLIENT_B not in stored


def test_a_key_is_kept_24_hours(client, db_target):
    with freeze_time() as clock:
        first = post(client).json
        clock.tick(86_399)
        assert post(client).json == first
        clock.tick(2)
        later = post(client)
        assert later.status_code == 201 and later.json["taskId"] != first["taskId"]
        assert post(client, body={"prompt": "a new day"}, key="retry-2").status_code == 201
    assert count_tasks(db_target) == 3


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tin", "é-accent", " lead"])
def test_a_malformed_key_is_400_and_changes_nothing(client, db_target, key):
    before = snapshot(db_target)
    answer = client.post("/api/video/generate", json=BODY, headers={"Idempotency-Key": key})
    assert answer.status_code == 400 and "Idempotency-Key" in answer.json["error"]
    assert snapshot(db_target) == before


def test_an_invalid_request_stores_no_key(client, db_target):
    assert post(client, body={"prompt": ""}).status_code == 400
    assert post(client).status_code == 201  # the key was not taken by the refused request


@pytest.mark.slow
def test_concurrent_duplicates_make_one_task(web):
    """24 threads send the same keyed create at once to gunicorn's 2 worker processes: one task."""
    app = web()
    gate, answers = threading.Barrier(24), []

    def send():
        gate.wait()
        answer = requests.post(f"{app.url}/api/video/generate", json=BODY, timeout=20,
                               headers={**USER, "Idempotency-Key": "burst-1"})
        answers.append((answer.status_code, answer.json()["taskId"]))

    threads = [threading.Thread(target=send) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 24
    assert sorted(status for status, _ in answers) == [200] * 23 + [201]
    assert len({task_id for _, task_id in answers}) == 1
    assert len(app.rows(VIDEO)) == 1
