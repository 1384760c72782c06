"""The fake providers tell the truth: the real APIs' errors, statuses, lifetimes and timings (fakes/common.py).

Each test asserts the wire format (HTTP status, body code, field names) where
/work/shared/research/providers.md gives it; its source tags ([S2], [S6], ...) are quoted.
"""

import json
import re
import time
import uuid

import pytest
import requests

from dev.stack import fake_provider
from tests.conftest import wait_until

pytestmark = pytest.mark.slow
KEY = "fakes-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TASKS = "/api/v3/contents/generations/tasks"
CREATE, RECORD = "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo"
MODEL = "doubao-seedance-1-0-pro-250528"
SCALE = 2e-6  # the short fakes' FAKE_EXPIRY_SCALE: 48 h -> 0.35 s, 3600 s -> 7 ms, 7 days -> 1.2 s, 24 h -> 0.17 s


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fakes")
    with fake_provider("ark", folder / "ark.log", KEY, step_seconds=0.2) as ark, \
            fake_provider("nanobanana", folder / "banana.log", KEY, step_seconds=0.2) as kie:
        yield {"ark": ark, "kie": kie}


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """Fakes whose documented lifetimes are scaled down to fractions of a second."""
    folder = tmp_path_factory.mktemp("short")
    with fake_provider("ark", folder / "ark.log", KEY, step_seconds=0.1, FAKE_EXPIRY_SCALE=SCALE) as ark, \
            fake_provider("nanobanana", folder / "banana.log", KEY, step_seconds=0.1, FAKE_EXPIRY_SCALE=SCALE) as kie:
        yield {"ark": ark, "kie": kie}


@pytest.fixture
def ark(fakes):
    yield fakes["ark"]
    requests.post(f"{fakes['ark']}/_fake/reset", timeout=5)


@pytest.fixture
def kie(fakes):
    yield fakes["kie"]
    requests.post(f"{fakes['kie']}/_fake/reset", timeout=5)


def unique(prompt):
    return f"{prompt} {uuid.uuid4().hex[:8]}"


def ark_create(fake, prompt, key=KEY, model=MODEL, timeout=10, **fields):
    body = {"model": model, "content": [{"type": "text", "text": unique(prompt)}], **fields}
    return requests.post(f"{fake}{TASKS}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def ark_task(fake, prompt, **fields):
    response = ark_create(fake, prompt, **fields)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def ark_get(fake, task_id):
    return requests.get(f"{fake}{TASKS}/{task_id}", headers=AUTH, timeout=10)


def ark_status(fake, task_id):
    return ark_get(fake, task_id).json()["status"]


def kie_create(fake, prompt, key=KEY, model="nano-banana-2", timeout=10, **job_input):
    body = {"model": model, "input": {"prompt": unique(prompt), **job_input}}
    return requests.post(f"{fake}{CREATE}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def kie_task(fake, prompt, **job_input):
    response = kie_create(fake, prompt, **job_input)
    assert (response.status_code, response.json()["code"]) == (200, 200), response.text
    return response.json()["data"]["taskId"]


def kie_record(fake, task_id):
    return requests.get(f"{fake}{RECORD}", params={"taskId": task_id}, headers=AUTH, timeout=10)


def kie_state(fake, task_id):
    return kie_record(fake, task_id).json()["data"]["state"]


def states_seen(look, final, timeout=10.0):
    """Every distinct status `look()` reports, in order, until one in `final`."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = look()
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in final:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"never reached {final}: {seen}")


def mode(fake, **switches):
    response = requests.post(f"{fake}/_fake/mode", json=switches, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def stats(fake):
    return requests.get(f"{fake}/_fake/stats", timeout=5).json()


def posts(fake):
    return [r for r in requests.get(f"{fake}/_fake/requests", timeout=5).json() if r["method"] == "POST"]


# -- kie.ai (Nano Banana 2) --

def test_kie_create_answers_code_200_and_a_task_id(kie):
    response = kie_create(kie, "a pear")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"code", "msg", "data"}  # [S6]
    assert (body["code"], body["msg"], list(body["data"])) == (200, "success", ["taskId"])


@pytest.mark.parametrize("marker, code", [
    ("credits", 402),  # Insufficient Credits [S6]
    ("maintenance", 455),  # Service Unavailable - maintenance [S6]
    ("error501", 501),  # Generation Failed [S6]
    ("disabled", 505),  # Feature Disabled [S6]
    ("invalid", 422),  # Validation Error [S6]
    ("ratelimit", 429),  # Rate Limited [S6]
])
def test_kie_errors_come_inside_http_200(kie, marker, code):
    """kie "returns HTTP 200 even for errors", the code in the body [S9]."""
    response = kie_create(kie, f"refused [{marker}]")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"code", "msg", "data"}
    assert body["code"] == code and body["data"] is None and body["msg"]


def test_kie_wrong_key_is_code_401_inside_http_200(kie):
    response = kie_create(kie, "a pear", key="wrong")
    assert (response.status_code, response.json()["code"]) == (200, 401)  # [S9]


def test_kie_http_status_switch_sends_the_code_as_the_http_status(kie):
    mode(kie, http_status="code")
    for marker, code in (("credits", 402), ("maintenance", 455), ("disabled", 505)):
        response = kie_create(kie, f"refused [{marker}]")
        assert (response.status_code, response.json()["code"]) == (code, code)
    assert kie_create(kie, "fine").status_code == 200


def test_kie_server_error_is_http_500(kie):
    response = kie_create(kie, "broken [error500:1]")
    assert (response.status_code, response.json()["code"]) == (500, 500)


def test_kie_first_n_creates_refused_then_accepted(kie):
    """`[credits:2]`: two refusals, then the credits are "topped up"."""
    prompt = unique("top-up [credits:2]")
    answers = [requests.post(f"{kie}{CREATE}", json={"model": "nano-banana-2", "input": {"prompt": prompt}},
                             headers=AUTH, timeout=10).json()["code"] for _ in range(3)]
    assert answers == [402, 402, 200]


def test_kie_reject_marker_is_unchanged(kie):
    response = kie_create(kie, "blocked [reject]")
    assert (response.status_code, response.json()["code"]) == (400, 400)
    assert "content policy" in response.json()["msg"]


def test_kie_job_goes_waiting_queuing_generating_success(kie):
    task_id = kie_task(kie, "slowly [slow:1]")
    seen = states_seen(lambda: kie_state(kie, task_id), {"success", "fail"})
    assert seen == ["waiting", "queuing", "generating", "success"]  # the states of [S7]


def test_kie_success_record_has_the_documented_fields(kie):
    response = kie_create(kie, "a kite", output_format="jpg", aspect_ratio="1:1")
    task_id = response.json()["data"]["taskId"]
    sent = posts(kie)[-1]["json"]
    wait_until(lambda: kie_state(kie, task_id) == "success", message="success")
    response = kie_record(kie, task_id)
    body = response.json()
    assert (response.status_code, body["code"], body["msg"]) == (200, 200, "success")
    data = body["data"]
    assert set(data) == {"taskId", "model", "state", "param", "resultJson", "failCode", "failMsg", "costTime",
                         "completeTime", "createTime", "updateTime"}  # [S7] (progress is sora2 only)
    assert isinstance(data["param"], str) and json.loads(data["param"]) == sent  # the whole create request [S7]
    assert isinstance(data["resultJson"], str)  # a JSON string [S7]
    assert json.loads(data["resultJson"]) == {"resultUrls": [f"{kie}/media/{task_id}.jpg"]}
    assert (data["failCode"], data["failMsg"]) == ("", "")  # "" on success [S7]
    assert all(isinstance(data[k], int) for k in ("costTime", "completeTime", "createTime", "updateTime"))  # ms
    assert data["createTime"] <= data["completeTime"] <= time.time() * 1000


def test_kie_failed_job_is_state_fail_with_code_200_by_default(kie):
    task_id = kie_task(kie, "doomed [fail]")
    wait_until(lambda: kie_state(kie, task_id) == "fail", message="fail")
    body = kie_record(kie, task_id).json()
    assert body["code"] == 200
    assert (body["data"]["failCode"], body["data"]["failMsg"]) == ("500", "Image generation failed (fake).")


def test_kie_generation_failed_job_answers_code_501_with_its_record(kie):
    """The failure callback has `"code": 501`, `state: "fail"`, failCode, failMsg, and "is identical to the Query
    Task API response" [S8]."""
    task_id = kie_task(kie, "doomed [genfail]")
    wait_until(lambda: kie_record(kie, task_id).json()["code"] == 501, message="code 501")
    response = kie_record(kie, task_id)
    body = response.json()
    assert response.status_code == 200
    assert body["code"] == 501 and body["msg"]
    data = body["data"]
    assert data["state"] == "fail" and data["failCode"] == "500" and data["failMsg"]
    assert data["resultJson"] is None and data["costTime"] == 0  # as in [S8]


def test_kie_fail_code_switch_makes_every_failed_job_answer_501(kie):
    mode(kie, fail_code=501)
    task_id = kie_task(kie, "doomed [fail]")
    wait_until(lambda: kie_record(kie, task_id).json()["data"]["state"] == "fail", message="fail")
    body = kie_record(kie, task_id).json()
    assert (body["code"], body["data"]["failMsg"]) == (501, "Image generation failed (fake).")


def test_kie_moderated_job_fails_with_a_content_policy_message(kie):
    task_id = kie_task(kie, "naughty [moderated]")
    wait_until(lambda: kie_state(kie, task_id) == "fail", message="fail")
    assert "content policy" in kie_record(kie, task_id).json()["data"]["failMsg"]


def test_kie_moderated_first_then_fine(kie):
    prompt = unique("naughty once [moderatedfirst:1]")
    ids = [requests.post(f"{kie}{CREATE}", json={"model": "nano-banana-2", "input": {"prompt": prompt}},
                         headers=AUTH, timeout=10).json()["data"]["taskId"] for _ in range(2)]
    for task_id, end in zip(ids, ("fail", "success"), strict=True):
        wait_until(lambda task_id=task_id: kie_state(kie, task_id) in ("fail", "success"), message="the end")
        assert kie_state(kie, task_id) == end


def test_kie_record_of_an_expired_job_is_null(kie):
    """An old job's record: code 422 "recordInfo is null", data null [S7] (when kie sends it: chosen)."""
    later = kie_task(kie, "gone soon [expire:1]")
    at_end = kie_task(kie, "gone when done [expire]")
    assert kie_record(kie, later).json()["code"] == 200
    for task_id in (later, at_end):
        wait_until(lambda task_id=task_id: kie_record(kie, task_id).json()["code"] != 200, timeout=5, message="gone")
        response = kie_record(kie, task_id)
        assert response.status_code == 200
        assert response.json() == {"code": 422, "msg": "recordInfo is null", "data": None}


def test_kie_records_are_kept_for_the_retention_only(short):
    task_id = kie_task(short["kie"], "a pear")
    wait_until(lambda: kie_state(short["kie"], task_id) == "success", message="success")
    wait_until(lambda: kie_record(short["kie"], task_id).json()["code"] == 422, timeout=5, message="record gone")


def test_kie_unknown_or_missing_task_id(kie):
    assert kie_record(kie, "nb2-missing").json() == {"code": 404, "msg": "Task not found", "data": None}  # [S7]
    response = requests.get(f"{kie}{RECORD}", headers=AUTH, timeout=10)
    assert response.json() == {"code": 400, "msg": "taskId parameter is required", "data": None}  # [S7]


@pytest.mark.parametrize("job_input", [
    {"aspect_ratio": "7:5"}, {"resolution": "8K"}, {"output_format": "gif"},
    {"image_input": [f"https://x/{n}.png" for n in range(15)]},  # maxItems 14 [S6]
])
def test_kie_input_outside_the_schema_is_a_validation_error(kie, job_input):
    response = kie_create(kie, "a pear", **job_input)
    assert (response.status_code, response.json()["code"]) == (200, 422)


def test_kie_prompt_longer_than_20000_is_refused(kie):
    response = requests.post(f"{kie}{CREATE}", json={"model": "nano-banana-2", "input": {"prompt": "x" * 20001}},
                             headers=AUTH, timeout=10)
    assert response.json()["code"] == 422


# -- Volcengine Ark (Seedance) --

def test_ark_create_and_query_shape(ark):
    task_id = ark_task(ark, "a fox")
    assert re.fullmatch(r"cgt-\d{14}-[a-z0-9]{5}", task_id)  # like cgt-20250331175019-68d9t [S3]
    first = ark_get(ark, task_id).json()
    assert first["status"] == "queued" and first["error"] is None and "content" not in first
    wait_until(lambda: ark_status(ark, task_id) == "succeeded", message="succeeded")
    task = ark_get(ark, task_id).json()
    assert set(task) == {"id", "model", "status", "error", "content", "usage", "created_at", "updated_at", "seed",
                         "resolution", "ratio", "duration", "framespersecond", "service_tier",
                         "execution_expires_after"}  # [S2][S3]
    assert task["error"] is None  # null on success [S3]
    assert task["content"] == {"video_url": f"{ark}/media/doubao-seedance-1-0-pro/{task_id}.mp4"}
    assert task["usage"]["total_tokens"] == task["usage"]["completion_tokens"]  # [S1][S3]
    assert (task["resolution"], task["ratio"], task["duration"]) == ("1080p", "16:9", 5)  # defaults [S2]
    assert task["execution_expires_after"] == 172800  # [S2]
    assert task["created_at"] <= task["updated_at"]


def test_ark_last_frame_only_when_asked(ark):
    """`content.last_frame_url` is returned only with `"return_last_frame": true` [S2][S3]."""
    asked, plain = ark_task(ark, "with frame", return_last_frame=True), ark_task(ark, "without frame")
    for task_id in (asked, plain):
        wait_until(lambda task_id=task_id: ark_status(ark, task_id) == "succeeded", message="succeeded")
    assert ark_get(ark, asked).json()["content"]["last_frame_url"].endswith(f"{asked}-last-frame.png")
    assert "last_frame_url" not in ark_get(ark, plain).json()["content"]


@pytest.mark.parametrize("marker, status, code", [
    ("ratelimit:1", 429, "RateLimitExceeded.EndpointRPMExceeded"),  # [S5a]
    ("quota", 429, "QuotaExceeded"),  # [S5b]
    ("setlimit", 429, "SetLimitExceeded"),  # [S5b]
    ("nomodel", 404, "InvalidEndpointOrModel.NotFound"),  # [S4][S5]
    ("overloaded", 429, "ServerOverloaded"),  # [S5b]
    ("closed", 400, "InvalidEndpoint.ClosedEndpoint"),  # [S4]
    ("maintenance", 400, "InvalidEndpoint.ClosedEndpoint"),
    ("credits", 403, "AccountOverdueError"),  # [S4]
    ("reject", 400, "InputTextSensitiveContentDetected"),  # input moderation at create [S4]
    ("invalid", 400, "InvalidParameter"),  # [S4]
    ("error500:1", 500, "InternalServiceError"),  # [S4]
])
def test_ark_errors_have_the_status_and_the_envelope(ark, marker, status, code):
    response = ark_create(ark, f"refused [{marker}]")
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"code", "message", "param", "type"}  # [S1][S4]
    assert body["error"]["code"] == code


def test_ark_wrong_key_is_401(ark):
    response = ark_create(ark, "a fox", key="wrong")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "AuthenticationError")  # [S4]


def test_ark_quota_first_n_then_accepted(ark):
    prompt = unique("quota [quota:2]")
    body = {"model": MODEL, "content": [{"type": "text", "text": prompt}]}
    codes = [requests.post(f"{ark}{TASKS}", json=body, headers=AUTH, timeout=10).status_code for _ in range(3)]
    assert codes == [429, 429, 200]


def test_ark_queue_limit_answers_quota_exceeded(ark):
    """At most 120 queued tasks per account [S2-ja]; the code is unconfirmed, QuotaExceeded is the documented 429
    for it [S5b]. The limit is lowered here to 2."""
    time.sleep(0.3)  # the jobs of earlier tests have left the queue (0.2 s steps)
    mode(ark, queue_limit=2)
    waiting = [ark_task(ark, "waits [slow:30]") for _ in range(2)]
    refused = ark_create(ark, "one too many")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "QuotaExceeded"
    assert requests.delete(f"{ark}{TASKS}/{waiting[0]}", headers=AUTH, timeout=10).status_code == 200
    assert ark_create(ark, "room again").status_code == 200
    assert stats(ark)["refused"] == {"queue_limit": 1}


def test_ark_statuses_queued_running_succeeded(ark):
    task_id = ark_task(ark, "slowly [slow:0.6]")
    assert states_seen(lambda: ark_status(ark, task_id), {"succeeded", "failed"}) == ["queued", "running",
                                                                                      "succeeded"]


def test_ark_failed_job_has_an_error(ark):
    task_id = ark_task(ark, "doomed [fail]")
    wait_until(lambda: ark_status(ark, task_id) == "failed", message="failed")
    task = ark_get(ark, task_id).json()
    assert set(task["error"]) == {"code", "message"} and "content" not in task  # [S2]


def test_ark_moderated_job_fails_with_output_sensitive_content(ark):
    task_id = ark_task(ark, "naughty [moderated]")
    wait_until(lambda: ark_status(ark, task_id) == "failed", message="failed")
    assert ark_get(ark, task_id).json()["error"]["code"] == "OutputVideoSensitiveContentDetected"  # [S5b]


def test_ark_expire_marker(ark):
    task_id = ark_task(ark, "forever [slow:0.3] [expire:1]")
    seen = states_seen(lambda: ark_status(ark, task_id), {"succeeded", "failed", "expired"})
    assert seen == ["queued", "running", "expired"]
    task = ark_get(ark, task_id).json()
    assert task["error"] is None and "content" not in task


def test_ark_job_not_finished_within_its_execution_expires_after_is_expired(short):
    """"Tasks past it will be automatically terminated and marked as `expired`" [S2], scaled by FAKE_EXPIRY_SCALE:
    3600 s -> 7 ms (expired while queued); the 48 h default -> 0.35 s (a 0.2 s job finishes first; a 2 s one
    does not)."""
    fake = short["ark"]
    quick = ark_task(fake, "a short one", execution_expires_after=3600)
    fine = ark_task(fake, "in time")
    late = ark_task(fake, "too long [slow:1]")
    wait_until(lambda: ark_status(fake, late) == "expired", timeout=3, message="expired")
    assert ark_status(fake, quick) == "expired"
    assert ark_status(fake, fine) == "succeeded"


def test_ark_tasks_older_than_seven_days_are_not_found(short):
    fake = short["ark"]
    task_id = ark_task(fake, "old one")
    assert ark_get(fake, task_id).status_code == 200
    wait_until(lambda: ark_get(fake, task_id).status_code == 404, timeout=5, message="gone after the window")


def test_ark_execution_expires_after_out_of_range_is_refused(ark):
    for value in (3599, 259201, "3600"):  # [3600, 259200] [S2]
        response = ark_create(ark, "a fox", execution_expires_after=value)
        assert response.status_code == 400
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
            "InvalidParameter", "execution_expires_after")


def test_ark_adaptive_ratio_without_first_frame_is_refused_on_seedance_1_0(ark):
    """"adaptive is not supported ... in Text-to-Video scenarios using the Seedance 1.0 series" [S2]."""
    refused = ark_create(ark, "a fox", ratio="adaptive")
    assert refused.status_code == 400
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("InvalidParameter", "ratio")
    frame = {"type": "image_url", "image_url": {"url": "https://x/first.png"}, "role": "first_frame"}
    body = {"model": MODEL, "content": [{"type": "text", "text": unique("a fox")}, frame], "ratio": "adaptive"}
    assert requests.post(f"{ark}{TASKS}", json=body, headers=AUTH, timeout=10).status_code == 200
    assert ark_create(ark, "a fox", ratio="adaptive", model="doubao-seedance-1-5-pro-251215").status_code == 200
    assert ark_create(ark, "a fox", ratio="5:4").status_code == 400


def test_ark_cancel_only_while_queued_and_delete_when_finished(ark):
    """DELETE: queued -> cancelled; running or cancelled -> not allowed; finished -> the record is deleted [S2]."""
    queued = ark_task(ark, "to cancel [slow:30]")
    response = requests.delete(f"{ark}{TASKS}/{queued}", headers=AUTH, timeout=10)
    assert (response.status_code, response.json()) == (200, {})  # "no response parameters" [S2]
    assert ark_status(ark, queued) == "cancelled"
    again = requests.delete(f"{ark}{TASKS}/{queued}", headers=AUTH, timeout=10)
    assert again.status_code == 400 and set(again.json()["error"]) == {"code", "message", "param", "type"}

    running = ark_task(ark, "busy [hang]")
    wait_until(lambda: ark_status(ark, running) == "running", message="running")
    assert requests.delete(f"{ark}{TASKS}/{running}", headers=AUTH, timeout=10).status_code == 400

    done = ark_task(ark, "done")
    wait_until(lambda: ark_status(ark, done) == "succeeded", message="succeeded")
    assert requests.delete(f"{ark}{TASKS}/{done}", headers=AUTH, timeout=10).status_code == 200
    assert ark_get(ark, done).status_code == 404


def test_ark_stats_count_cancels(ark):
    requests.post(f"{ark}/_fake/reset", timeout=5)
    queued = [ark_task(ark, "to cancel [slow:30]") for _ in range(2)]
    for task_id in queued:
        assert requests.delete(f"{ark}{TASKS}/{task_id}", headers=AUTH, timeout=10).status_code == 200
    assert requests.delete(f"{ark}{TASKS}/{queued[0]}", headers=AUTH, timeout=10).status_code == 400  # once only
    done = ark_task(ark, "done")
    wait_until(lambda: ark_status(ark, done) == "succeeded", message="succeeded")
    assert requests.delete(f"{ark}{TASKS}/{done}", headers=AUTH, timeout=10).status_code == 200  # deleted, not
    now = stats(ark)  # cancelled
    assert (now["cancelled"], now["by_status"]["cancelled"]) == (2, 2)
    requests.post(f"{ark}/_fake/reset", timeout=5)
    assert stats(ark)["cancelled"] == 0


def test_ark_cancelled_task_is_deleted_after_24_hours(short):
    fake = short["ark"]
    started = time.monotonic()
    task_id = ark_task(fake, "to cancel [slow:30]")
    assert requests.delete(f"{fake}{TASKS}/{task_id}", headers=AUTH, timeout=10).status_code == 200
    wait_until(lambda: ark_get(fake, task_id).status_code == 404, timeout=3, message="deleted")  # [S3]
    assert time.monotonic() - started < 1.0  # 24 h scaled (0.17 s), well before the 7-day window (1.2 s)


# -- both --

@pytest.mark.parametrize("which", ["ark", "kie"])
def test_slow_create_retried_by_a_client_that_timed_out_makes_two_jobs(fakes, which):
    """No idempotency key exists [S1][S2][S6]: the job is made when the create arrives, however late the answer."""
    fake = fakes[which]
    requests.post(f"{fake}/_fake/reset", timeout=5)
    prompt = unique("patient [slowcreate:1]")
    if which == "ark":
        body, url = {"model": MODEL, "content": [{"type": "text", "text": prompt}]}, f"{fake}{TASKS}"
    else:
        body, url = {"model": "nano-banana-2", "input": {"prompt": prompt}}, f"{fake}{CREATE}"
    started = time.monotonic()
    for _ in range(2):  # a client with a 0.3 s read timeout that retries once
        with pytest.raises(requests.ReadTimeout):
            requests.post(url, json=body, headers=AUTH, timeout=(3, 0.3))
    assert time.monotonic() - started < 1.9  # the client did not wait for the answers (1 s each)
    assert len([r for r in posts(fake) if r["json"] == body]) == 2
    assert stats(fake)["created"] == 2
    answered = requests.post(url, json=body, headers=AUTH, timeout=5)
    assert answered.status_code == 200
    assert stats(fake)["created"] == 3


@pytest.mark.parametrize("which, switch, status, code", [
    ("kie", "credits", 200, 402), ("kie", "maintenance", 200, 455), ("kie", "down", 503, None),
    ("ark", "credits", 403, "AccountOverdueError"), ("ark", "quota", 429, "QuotaExceeded"),
    ("ark", "maintenance", 400, "InvalidEndpoint.ClosedEndpoint"), ("ark", "down", 503, None),
])
def test_create_switch_refuses_every_create_until_switched_back(fakes, which, switch, status, code):
    fake = fakes[which]
    create = ark_create if which == "ark" else kie_create
    try:
        assert mode(fake, create=switch)["create"] == switch
        for prompt in ("one", "two"):
            response = create(fake, prompt)
            assert response.status_code == status
            if code is None:
                assert response.headers["Content-Type"].startswith("text/html")
            else:
                assert (response.json()["error"]["code"] if which == "ark" else response.json()["code"]) == code
        mode(fake, create="ok")
        response = create(fake, "after the outage")
        assert response.status_code == 200 and (which == "ark" or response.json()["code"] == 200)
        assert stats(fake)["refused"][switch] == 2
    finally:
        requests.post(f"{fake}/_fake/reset", timeout=5)


def test_poll_switch_makes_status_queries_fail(ark):
    task_id = ark_task(ark, "a fox")
    mode(ark, poll="down")
    assert ark_get(ark, task_id).status_code == 503
    mode(ark, poll="ok")
    assert ark_get(ark, task_id).status_code == 200


def test_mode_refuses_unknown_switches_and_errors(ark, kie):
    assert requests.post(f"{ark}/_fake/mode", json={"create": "disabled"}, timeout=5).status_code == 400  # kie's
    assert requests.post(f"{kie}/_fake/mode", json={"create": "quota"}, timeout=5).status_code == 400  # Ark's
    assert requests.post(f"{kie}/_fake/mode", json={"colour": "blue"}, timeout=5).status_code == 400
    assert requests.post(f"{kie}/_fake/mode", json={"http_status": "teapot"}, timeout=5).status_code == 400
    assert "quota" in requests.get(f"{ark}/_fake/mode", timeout=5).json()["errors"]


@pytest.mark.parametrize("which", ["ark", "kie"])
def test_stats_count_unfinished_jobs_and_their_peak(fakes, which):
    fake = fakes[which]
    requests.post(f"{fake}/_fake/reset", timeout=5)
    task = ark_task if which == "ark" else kie_task
    for _ in range(3):
        task(fake, "together [slow:1]")
    now = stats(fake)
    assert (now["created"], now["unfinished"], now["queued"]) == (3, 3, 3)
    wait_until(lambda: stats(fake)["running"] == 3, message="three running")
    wait_until(lambda: stats(fake)["unfinished"] == 0, message="all finished")
    task(fake, "alone [slow:0.2]")
    after = stats(fake)
    assert (after["created"], after["peak_unfinished"], after["peak_running"]) == (4, 3, 3)
    requests.post(f"{fake}/_fake/reset", timeout=5)
    assert stats(fake) | {"since": 0} == {"created": 0, "queued": 0, "running": 0, "unfinished": 0,
                                          "peak_unfinished": 0, "peak_running": 0, "refused": {}, "cancelled": 0,
                                          "by_status": {}, "since": 0}  # the jobs created since the reset


def test_timings_are_configurable(tmp_path):
    """FAKE_TIMINGS=realistic: Ark ~5 s queued + 50 s running ([S3]'s example took 54 s); FAKE_RUNNING_SECONDS
    wins over it."""
    with fake_provider("ark", tmp_path / "ark.log", KEY, FAKE_TIMINGS="realistic", FAKE_RUNNING_SECONDS=7) as ark, \
            fake_provider("nanobanana", tmp_path / "kie.log", KEY, FAKE_TIMINGS="realistic") as kie:
        now = requests.get(f"{ark}/_fake/mode", timeout=5).json()
        assert (now["queued_seconds"], now["running_seconds"], now["jitter"]) == (5.0, 7.0, 0.3)
        now = requests.get(f"{kie}/_fake/mode", timeout=5).json()
        assert (now["queued_seconds"], now["running_seconds"]) == (3.0, 15.0)
        task_id = ark_task(ark, "a fox")
        time.sleep(0.3)
        assert ark_status(ark, task_id) == "queued"
        mode(ark, queued_seconds=0.1, running_seconds=0.1, jitter=0)
        quick = ark_task(ark, "a quick fox")
        wait_until(lambda: ark_status(ark, quick) == "succeeded", message="succeeded")
        assert ark_status(ark, task_id) == "queued"  # a job keeps the times it was created with


# -- Retry-After (FAKE_RETRY_AFTER, the `retry_after` switch; chosen: whether the real APIs send it is unconfirmed)

@pytest.mark.parametrize("which, marker, status", [
    ("ark", "ratelimit:1", 429), ("ark", "quota", 429), ("ark", "down", 503),
    ("kie", "ratelimit:1", 200),  # code 429 inside HTTP 200 [S9]
    ("kie", "down", 503),
])
def test_retry_after_switch_marks_every_429_and_503(fakes, which, marker, status):
    fake = fakes[which]
    create = ark_create if which == "ark" else kie_create
    try:
        assert mode(fake, retry_after=7)["retry_after"] == "7"
        response = create(fake, f"busy [{marker}]")
        assert response.status_code == status and response.headers["Retry-After"] == "7"
        assert "Retry-After" not in create(fake, "fine").headers  # not on a success
        assert "Retry-After" not in create(fake, "bad [invalid]").headers  # nor on other errors
        mode(fake, retry_after="Wed, 21 Oct 2099 07:28:00 GMT")
        assert create(fake, f"busy [{marker}]").headers["Retry-After"] == "Wed, 21 Oct 2099 07:28:00 GMT"
        mode(fake, retry_after=None)
        assert "Retry-After" not in create(fake, f"busy [{marker}]").headers
    finally:
        requests.post(f"{fake}/_fake/reset", timeout=5)


def test_retry_after_setting_and_reset(tmp_path):
    with fake_provider("ark", tmp_path / "ark.log", KEY, FAKE_RETRY_AFTER="3") as fake:
        assert ark_create(fake, "busy [overloaded]").headers["Retry-After"] == "3"
        mode(fake, retry_after=None)
        assert "Retry-After" not in ark_create(fake, "busy [overloaded]").headers
        requests.post(f"{fake}/_fake/reset", timeout=5)  # back to the setting
        assert ark_create(fake, "busy [overloaded]").headers["Retry-After"] == "3"
        assert requests.post(f"{fake}/_fake/mode", json={"retry_after": True}, timeout=5).status_code == 400


# -- media: the result links serve real files --

def test_result_links_serve_real_media_without_a_key_and_unlogged(ark, kie):
    """Ark's video and last frame, kie's image (png and jpg): real bytes of the declared type, fetched without
    the API key (signed links), and never counted as API requests."""
    video = ark_task(ark, "a real video", return_last_frame=True)
    png_job, jpg_job = kie_task(kie, "a png", output_format="png"), kie_task(kie, "a jpg", output_format="jpg")
    wait_until(lambda: ark_status(ark, video) == "succeeded", message="video")
    wait_until(lambda: {kie_state(kie, png_job), kie_state(kie, jpg_job)} == {"success"}, message="images")
    content = ark_get(ark, video).json()["content"]
    links = [(content["video_url"], "video/mp4", b"ftyp", 4), (content["last_frame_url"], "image/png", b"\x89PNG", 0)]
    for job in (png_job, jpg_job):
        [url] = json.loads(kie_record(kie, job).json()["data"]["resultJson"])["resultUrls"]
        links.append((url, *({"png": ("image/png", b"\x89PNG", 0), "jpg": ("image/jpeg", b"\xff\xd8\xff", 0)}[
            url.rpartition(".")[2]])))
    before = {name: len(requests.get(f"{url}/_fake/requests", timeout=5).json()) for name, url in
              (("ark", ark), ("kie", kie))}
    for url, kind, magic, at in links:
        answer = requests.get(url, timeout=5)  # no Authorization
        assert answer.status_code == 200, (url, answer.text)
        assert answer.headers["Content-Type"] == kind
        assert answer.content[at:at + len(magic)] == magic and 500 < len(answer.content) < 20_000
    after = {name: len(requests.get(f"{url}/_fake/requests", timeout=5).json()) for name, url in
             (("ark", ark), ("kie", kie))}
    assert after == before
    assert requests.get(f"{ark}/media/x/no-such-job.mp4", timeout=5).status_code == 404


def test_result_links_expire_24_hours_after_the_job(short):
    """"The output video is deleted after 24 hours" [S2]; kie's links "expire after 24 hours" [S7]: 403 after."""
    job = ark_task(short["ark"], "a short-lived video")
    wait_until(lambda: ark_status(short["ark"], job) == "succeeded", message="succeeded")
    url = ark_get(short["ark"], job).json()["content"]["video_url"]
    wait_until(lambda: requests.get(url, timeout=5).status_code == 403, timeout=5, message="expired link")
