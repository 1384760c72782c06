"""The provider clients against the fakes alone: requests match docs/design.md §7, errors are sorted right.

Every error kind of docs/provider-errors.md is checked here over real HTTP (the fakes answer as
/work/shared/research/providers.md documents); its source tags ([S2], [S4], ...) are quoted.
"""

import json
import time
import uuid
from email.utils import formatdate

import pytest
import requests

from dev.stack import fake_provider, free_port
from integrations.fangzhou_video import FangzhouVideoGeneration
from integrations.fangzhou_video.client import ArkClient
from integrations.fangzhou_video.client import build_create_body as ark_body
from integrations.fangzhou_video.client import sort_error as ark_sort
from integrations.nanobanana2_image.client import NanoBananaClient, result_urls
from integrations.nanobanana2_image.client import build_create_body as banana_body
from integrations.nanobanana2_image.client import sort_error as kie_sort
from integrations.shared.providers import (
    ARK_CREATE_TIMEOUT,
    CREATE_TIMEOUT,
    LONGEST_CREATE_SECONDS,
    LOOK_TIMEOUT,
    ProviderBlocked,
    ProviderError,
    ProviderJobFailed,
    ProviderRejected,
    ProviderTransient,
    parse_retry_after,
)
from integrations.shared.validation import RequestInvalid
from settings import Config
from tests.conftest import wait_until

pytestmark = pytest.mark.slow
KEY = "client-test-key"
MODEL_1_0 = "doubao-seedance-1-0-pro-250528"
MODEL_1_5 = "doubao-seedance-1-5-pro-251215"


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fakes")
    with fake_provider("ark", folder / "ark.log", KEY, step_seconds=0.2) as ark, \
            fake_provider("nanobanana", folder / "banana.log", KEY, step_seconds=0.2) as banana:
        yield {"ark": ark, "banana": banana}


def last_request(fake):
    return requests.get(f"{fake}/_fake/requests", timeout=5).json()[-1]


def requests_seen(fake):
    return requests.get(f"{fake}/_fake/requests", timeout=5).json()


def mode(fake, **switches):
    response = requests.post(f"{fake}/_fake/mode", json=switches, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def reset(fake):
    requests.post(f"{fake}/_fake/reset", timeout=5)


def unique(prompt):
    return f"{prompt} {uuid.uuid4().hex[:8]}"


def ark(fakes, key=KEY, session=None):
    return ArkClient(f"{fakes['ark']}/api/v3", key, session)


def kie(fakes, key=KEY, session=None):
    return NanoBananaClient(fakes["banana"], key, session)


def refusal(create) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        create()
    return caught.value


def test_ark_requests_match_the_real_api(fakes):
    client = ark(fakes)
    params = {"prompt": "a fox", "ratio": "16:9", "duration": 5, "resolution": "720p", "seed": 7,
              "watermark": False, "firstFrameUrl": "https://x/first.png"}
    task_id = client.create_task(ark_body(MODEL_1_0, params))
    sent = last_request(fakes["ark"])
    assert (sent["method"], sent["path"]) == ("POST", "/api/v3/contents/generations/tasks")
    assert sent["headers"] == {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert sorted(sent["json"]) == ["content", "duration", "model", "ratio", "resolution", "return_last_frame",
                                    "seed", "watermark"]
    assert sent["json"]["content"] == [
        {"type": "text", "text": "a fox"},
        {"type": "image_url", "image_url": {"url": "https://x/first.png"}, "role": "first_frame"}]
    assert task_id.startswith("cgt-")

    task = wait_until(lambda: (t := client.get_task(task_id))["status"] == "succeeded" and t, message="succeeded")
    sent = last_request(fakes["ark"])
    assert (sent["method"], sent["path"], sent["json"]) == ("GET", f"/api/v3/contents/generations/tasks/{task_id}",
                                                           None)
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert set(task) >= {"id", "model", "status", "content", "usage", "created_at", "updated_at"}
    assert task["content"]["video_url"].endswith(".mp4")


def test_ark_asks_for_the_last_frame_so_the_result_has_it(fakes):
    """`last_frame_url` comes only with `"return_last_frame": true` [S2]: always sent, so lastFrameUrl is set."""
    client = ark(fakes)
    task_id = client.create_job(MODEL_1_0, {"prompt": unique("a fox")})
    assert last_request(fakes["ark"])["json"]["return_last_frame"] is True
    job = wait_until(lambda: (j := client.look(task_id)).finished and j, message="finished")
    assert job.succeeded and job.retryable
    assert job.result["lastFrameUrl"].endswith(f"{task_id}-last-frame.png")
    assert job.result["videoUrl"].endswith(f"{task_id}.mp4")


@pytest.mark.parametrize("deadline, sent", [
    (None, None),  # nothing sent: Ark's default (48 h) [S2]
    (1800, 3600),  # below the documented minimum [S2]
    (7200.2, 7201),  # whole seconds, never less than the deadline
    (259200, 259200),
    (10**9, 259200),  # above the documented maximum [S2]
])
def test_ark_execution_expires_after_is_the_deadline_within_its_range(fakes, deadline, sent):
    ark(fakes).create_job(MODEL_1_0, {"prompt": unique("a fox")}, deadline)  # the fake accepts it: in range
    assert last_request(fakes["ark"])["json"].get("execution_expires_after") == sent


def test_kie_sends_no_expiry(fakes):
    """kie has no expiry field [S6]: the deadline is not sent."""
    kie(fakes).create_job("nano-banana-2", {"prompt": "a pear"}, deadline_seconds=600)
    assert last_request(fakes["banana"])["json"] == {"model": "nano-banana-2", "input": {"prompt": "a pear"}}


def test_nanobanana_requests_match_the_real_api(fakes):
    client = kie(fakes)
    params = {"prompt": "a pear", "aspectRatio": "1:1", "resolution": "2K", "outputFormat": "jpg",
              "imageInput": ["https://x/in.png"]}
    task_id = client.create_task(banana_body("nano-banana-2", params))
    sent = last_request(fakes["banana"])
    assert (sent["method"], sent["path"]) == ("POST", "/api/v1/jobs/createTask")
    assert sent["headers"] == {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert sent["json"] == {"model": "nano-banana-2", "input": {
        "prompt": "a pear", "aspect_ratio": "1:1", "resolution": "2K", "output_format": "jpg",
        "image_input": ["https://x/in.png"]}}

    record = wait_until(lambda: (r := client.record_info(task_id))["state"] == "success" and r, message="success")
    sent = last_request(fakes["banana"])
    assert (sent["method"], sent["path"], sent["query"]) == ("GET", "/api/v1/jobs/recordInfo", {"taskId": task_id})
    assert isinstance(record["resultJson"], str)  # a JSON string, as the real API sends it
    assert result_urls(record) == json.loads(record["resultJson"])["resultUrls"]
    assert result_urls(record)[0].endswith(".jpg")


@pytest.mark.parametrize("kind", ["ark", "banana"])
@pytest.mark.parametrize("prompt, key, error", [
    ("blocked [reject]", KEY, ProviderRejected),
    ("fine", "wrong-key", ProviderBlocked),  # a refused key refuses every task: blocked, not the task's fault
    ("busy [ratelimit:1]", KEY, ProviderTransient),
    ("broken [error500:1]", KEY, ProviderTransient),
])
def test_errors_are_sorted_by_kind(fakes, kind, prompt, key, error):
    prompt = f"{prompt} {kind}-{key}"
    if kind == "ark":
        client, body = ArkClient(f"{fakes['ark']}/api/v3", key), ark_body("m", {"prompt": prompt})
    else:
        client, body = NanoBananaClient(fakes["banana"], key), banana_body("m", {"prompt": prompt})
    with pytest.raises(error) as caught:
        client.create_task(body)
    assert type(caught.value) is error
    assert caught.value.status in (400, 401, 429, 500)


# -- Ark: by HTTP status and error.code (docs/provider-errors.md) --

@pytest.mark.parametrize("marker, kind, status, code", [
    ("closed", ProviderTransient, 400, "InvalidEndpoint.ClosedEndpoint"),  # "try again later" [S4]
    ("maintenance", ProviderTransient, 400, "InvalidEndpoint.ClosedEndpoint"),
    ("invalid", ProviderRejected, 400, "InvalidParameter"),  # [S4]
    ("reject", ProviderRejected, 400, "InputTextSensitiveContentDetected"),  # [S4]
    ("credits", ProviderBlocked, 403, "AccountOverdueError"),  # [S4]
    ("nomodel", ProviderBlocked, 404, "InvalidEndpointOrModel.NotFound"),  # [S4][S5]
    ("quota", ProviderBlocked, 429, "QuotaExceeded"),  # used up, or the queued-task limit [S5b]
    ("setlimit", ProviderBlocked, 429, "SetLimitExceeded"),  # the model is paused [S5b]
    ("overloaded", ProviderTransient, 429, "ServerOverloaded"),  # [S5b]
    ("ratelimit:1", ProviderTransient, 429, "RateLimitExceeded.EndpointRPMExceeded"),  # [S5a]
    ("error500:1", ProviderTransient, 500, "InternalServiceError"),  # [S4]
    ("down", ProviderTransient, 503, None),  # an HTML page from a gateway
])
def test_ark_errors_are_sorted_by_status_and_code(fakes, marker, kind, status, code):
    error = refusal(lambda: ark(fakes).create_job(MODEL_1_0, {"prompt": unique(f"refused [{marker}]")}))
    assert (type(error), error.status, error.code) == (kind, status, code)


@pytest.mark.parametrize("status, code, kind", [
    (400, "MissingParameter", ProviderRejected), (400, "InputImageSensitiveContentDetected", ProviderRejected),
    (400, "InvalidEndpoint.ClosedEndpoint", ProviderTransient),
    (401, "AuthenticationError", ProviderBlocked), (403, "AccessDenied", ProviderBlocked),
    (403, "AccountOverdueError", ProviderBlocked),
    (404, "InvalidEndpointOrModel.NotFound", ProviderBlocked), (404, "InvalidEndpoint.NotFound", ProviderBlocked),
    (404, "ModelNotOpen", ProviderBlocked), (404, "InvalidEndpointOrModel.ModelIDAccessDisabled", ProviderBlocked),
    (404, "ResourceNotFound", ProviderRejected), (404, None, ProviderRejected),
    (429, "QuotaExceeded", ProviderBlocked), (429, "SetLimitExceeded", ProviderBlocked),
    (429, "AccountRateLimitExceeded", ProviderTransient), (429, None, ProviderTransient),
    (408, None, ProviderTransient), (409, None, ProviderTransient), (425, None, ProviderTransient),
    (500, "InternalServiceError", ProviderTransient), (502, None, ProviderTransient),
    (422, None, ProviderRejected),
])
def test_ark_sorting_table(status, code, kind):
    """The codes the fake does not send, sorted as docs/provider-errors.md says."""
    assert ark_sort(status, code) is kind


def test_ark_unknown_task_is_rejected_and_no_server_is_transient(fakes):
    error = refusal(lambda: ark(fakes).get_task("cgt-missing"))
    assert (type(error), error.status) == (ProviderRejected, 404)
    assert type(refusal(lambda: ArkClient(f"http://127.0.0.1:{free_port()}/api/v3", KEY).get_task("x"))) \
        is ProviderTransient


# -- kie.ai: by body code (inside HTTP 200 [S9], or as the HTTP status), the job state first --

KIE_ERRORS = [
    ("credits", ProviderBlocked, 402),  # Insufficient Credits [S6]
    ("disabled", ProviderBlocked, 505),  # Feature Disabled [S6]
    ("maintenance", ProviderTransient, 455),  # Service Unavailable: maintenance [S6]
    ("ratelimit:1", ProviderTransient, 429),  # [S6]
    ("error500:1", ProviderTransient, 500),  # [S7]
    ("down", ProviderTransient, 503),  # an HTML page from a gateway
    ("error501", ProviderJobFailed, 501),  # Generation Failed, with no state to read [S6]
    ("invalid", ProviderRejected, 422),  # Validation Error [S6]
    ("reject", ProviderRejected, 400),
]


@pytest.mark.parametrize("http_status", ["200", "code"])
@pytest.mark.parametrize("marker, kind, status", KIE_ERRORS)
def test_kie_errors_are_sorted_by_body_code(fakes, http_status, marker, kind, status):
    try:
        mode(fakes["banana"], http_status=http_status)
        error = refusal(lambda: kie(fakes).create_job("nano-banana-2", {"prompt": unique(f"refused [{marker}]")}))
    finally:
        reset(fakes["banana"])
    assert (type(error), error.status) == (kind, status)


def test_kie_generation_failed_at_create_keeps_its_message(fakes):
    error = refusal(lambda: kie(fakes).create_job("nano-banana-2", {"prompt": unique("[error501]")}))
    assert isinstance(error, ProviderJobFailed)
    assert "Generation Failed - Content generation task failed" in str(error)


def test_kie_wrong_key_is_blocked_unknown_task_rejected(fakes):
    error = refusal(lambda: kie(fakes, key="wrong").create_job("nano-banana-2", {"prompt": "a pear"}))
    assert (type(error), error.status) == (ProviderBlocked, 401)
    error = refusal(lambda: kie(fakes).look("nb2-missing"))
    assert (type(error), error.status) == (ProviderRejected, 404)  # Task not found [S7]


@pytest.mark.parametrize("code, kind", [
    (401, ProviderBlocked), (402, ProviderBlocked), (505, ProviderBlocked), (429, ProviderTransient),
    (455, ProviderTransient), (500, ProviderTransient), (501, ProviderJobFailed), (404, ProviderRejected),
    (422, ProviderRejected), (400, ProviderRejected),
])
def test_kie_sorting_table(code, kind):
    assert kie_sort(code) is kind


def test_kie_failed_job_answered_with_code_501_is_read_by_its_state(fakes):
    """A record with state `fail` and body code 501 [S8] is a failed job with its failMsg, not a failed call."""
    client = kie(fakes)
    task_id = client.create_job("nano-banana-2", {"prompt": unique("doomed [genfail]")})
    job = wait_until(lambda: (j := client.look(task_id)).finished and j, message="finished")
    assert (job.status, job.succeeded, job.retryable) == ("fail", False, True)
    assert job.error.startswith("Nano Banana job fail: 500") and job.error.endswith("Internal server error (fake)")


def test_kie_fail_code_501_switch_is_read_by_its_state(fakes):
    client = kie(fakes)
    try:
        mode(fakes["banana"], fail_code=501)
        task_id = client.create_job("nano-banana-2", {"prompt": unique("doomed [fail]")})
        job = wait_until(lambda: (j := client.look(task_id)).finished and j, message="finished")
    finally:
        reset(fakes["banana"])
    assert (job.status, job.retryable) == ("fail", True) and "Image generation failed (fake)." in job.error


# -- job outcomes: moderation fails for good, the rest is retried --

@pytest.mark.parametrize("which, prompt, retryable", [
    ("ark", "naughty [moderated]", False),  # OutputVideoSensitiveContentDetected [S5b]
    ("ark", "doomed [fail]", True),
    ("ark", "forever [expire:0.3]", True),  # `expired` [S2]: a later attempt may finish in time
    ("banana", "naughty [moderated]", False),  # failMsg about the content policy (heuristic: unconfirmed)
    ("banana", "doomed [fail]", True),
])
def test_a_moderated_job_is_not_retryable(fakes, which, prompt, retryable):
    client = ark(fakes) if which == "ark" else kie(fakes)
    task_id = client.create_job("m" if which == "banana" else MODEL_1_0, {"prompt": unique(prompt)})
    job = wait_until(lambda: (j := client.look(task_id)).finished and j, message="finished")
    assert not job.succeeded and job.error
    assert job.retryable is retryable


def test_a_cancelled_ark_task_stays_retryable(fakes):
    client = ark(fakes)
    task_id = client.create_job(MODEL_1_0, {"prompt": unique("to cancel [slow:30]")})
    assert client.cancel(task_id) is True
    job = client.look(task_id)
    assert (job.status, job.finished, job.succeeded, job.retryable) == ("cancelled", True, False, True)


# -- Retry-After --

@pytest.mark.parametrize("header, seconds", [
    (7, 7.0), (99999, 3600.0), ("soon", None), ("-5", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
@pytest.mark.parametrize("which, marker", [("ark", "ratelimit:1"), ("ark", "down"), ("banana", "ratelimit:1"),
                                           ("banana", "down")])
def test_retry_after_is_read_into_the_transient_error(fakes, which, marker, header, seconds):
    fake = fakes["ark" if which == "ark" else "banana"]
    client = ark(fakes) if which == "ark" else kie(fakes)
    try:
        mode(fake, retry_after=header)
        error = refusal(lambda: client.create_job(MODEL_1_0, {"prompt": unique(f"busy [{marker}]")}))
    finally:
        reset(fake)
    assert type(error) is ProviderTransient and error.retry_after == seconds


def test_retry_after_as_an_http_date_and_absent(fakes):
    try:
        mode(fakes["ark"], retry_after=formatdate(time.time() + 120, usegmt=True))
        error = refusal(lambda: ark(fakes).create_job(MODEL_1_0, {"prompt": unique("busy [overloaded]")}))
    finally:
        reset(fakes["ark"])
    assert 100 < error.retry_after <= 120
    error = refusal(lambda: ark(fakes).create_job(MODEL_1_0, {"prompt": unique("busy [overloaded]")}))
    assert error.retry_after is None


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 -0000", now=1445412480.0) == 10.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 0.0  # in the past
    for garbage in (None, "", "  ", "later", "nan", "inf", "12 seconds", "Wed, 99 Foo 2015"):
        assert parse_retry_after(garbage) is None, garbage
    assert parse_retry_after("1e9") == 3600.0 and parse_retry_after("-1") == 0.0


# -- cancel --

def test_ark_cancel_of_a_queued_task_cancels_it(fakes):
    client = ark(fakes)
    reset(fakes["ark"])
    task_id = client.create_job(MODEL_1_0, {"prompt": unique("to cancel [slow:30]")})
    assert client.cancel(task_id) is True
    sent = [(r["method"], r["path"]) for r in requests_seen(fakes["ark"])]
    path = f"/api/v3/contents/generations/tasks/{task_id}"
    assert sent[-2:] == [("GET", path), ("DELETE", path)]
    assert client.get_task(task_id)["status"] == "cancelled"
    assert requests.get(f"{fakes['ark']}/_fake/stats", timeout=5).json()["cancelled"] == 1
    assert client.cancel(task_id) is False  # cancelled already: nothing to do


@pytest.mark.parametrize("prompt, status", [("busy [hang]", "running"), ("done", "succeeded")])
def test_ark_cancel_of_a_started_or_finished_task_sends_no_delete(fakes, prompt, status):
    """Only queued tasks can be cancelled; a DELETE of a finished one would delete its record [S2]."""
    client = ark(fakes)
    task_id = client.create_job(MODEL_1_0, {"prompt": unique(prompt)})
    wait_until(lambda: client.get_task(task_id)["status"] == status, message=status)
    assert client.cancel(task_id) is False
    assert not [r for r in requests_seen(fakes["ark"]) if r["method"] == "DELETE" and r["path"].endswith(task_id)]
    assert client.get_task(task_id)["status"] == status  # still there


def test_ark_cancel_that_loses_the_race_is_false(fakes, monkeypatch):
    """Queued when looked at, running when the DELETE arrives: Ark answers 400, and cancel says False."""
    client = ark(fakes)
    task_id = client.create_job(MODEL_1_0, {"prompt": unique("busy [hang]")})
    monkeypatch.setattr(client, "get_task", lambda _id: {"status": "queued"})
    wait_until(lambda: ArkClient.get_task(client, task_id)["status"] == "running", message="running")
    assert client.cancel(task_id) is False
    assert requests_seen(fakes["ark"])[-1]["method"] == "DELETE"
    assert client.cancel("cgt-missing") is False  # the fake's 404 answer to the DELETE


def test_ark_cancel_of_an_unknown_task_is_false(fakes):
    assert ark(fakes).cancel("cgt-missing") is False


def test_kie_has_no_cancel(fakes):
    """No cancel endpoint is documented for kie [S6][S7]: nothing is sent."""
    client = kie(fakes)
    task_id = client.create_job("nano-banana-2", {"prompt": unique("slowly [slow:30]")})
    before = len(requests_seen(fakes["banana"]))
    assert client.cancel(task_id) is False
    assert len(requests_seen(fakes["banana"])) == before


# -- timeouts --

class Recording(requests.Session):
    """A session that notes the timeout of every request it sends."""

    def __init__(self):
        super().__init__()
        self.timeouts = []

    def request(self, method, url, **kwargs):
        self.timeouts.append((method, kwargs.get("timeout")))
        return super().request(method, url, **kwargs)


def test_timeouts_fit_the_provider(fakes):
    """A create waits long for its answer (sent twice it would make two billed jobs); a look does not."""
    assert (ArkClient.create_timeout, NanoBananaClient.create_timeout) == ((10, 600), (10, 120))
    assert (ARK_CREATE_TIMEOUT, CREATE_TIMEOUT, LOOK_TIMEOUT) == ((10, 600), (10, 120), (10, 30))
    assert LONGEST_CREATE_SECONDS == 610
    for client in (ark(fakes, session=Recording()), kie(fakes, session=Recording())):
        assert sum(client.create_timeout) <= LONGEST_CREATE_SECONDS
        task_id = client.create_job(MODEL_1_0, {"prompt": unique("to cancel [slow:30]")})
        client.look(task_id)
        client.cancel(task_id)
        timeouts = client.session.timeouts
        assert timeouts[0] == ("POST", client.create_timeout)
        assert timeouts[1:] and all(timeout == LOOK_TIMEOUT for _, timeout in timeouts[1:]), timeouts


# -- model limits at the user's create (providers.md §1 [S2]) --

def video(model):
    return FangzhouVideoGeneration(Config({"integrations": {"fangzhouVideoGeneration": {"model": model}}}))


@pytest.mark.parametrize("model, body, field", [
    (MODEL_1_0, {"ratio": "adaptive"}, "'ratio'"),  # no adaptive for text-to-video on Seedance 1.0
    (MODEL_1_0, {"duration": 1}, "'duration'"),
    (MODEL_1_0, {"duration": -1}, "'duration'"),
    (MODEL_1_0, {"duration": 13}, "'duration'"),
    ("doubao-seedance-1-0-lite-t2v-250428", {"ratio": "adaptive"}, "'ratio'"),
    (MODEL_1_5, {"duration": 3}, "'duration'"),  # 4-12 or -1
    (MODEL_1_5, {"duration": 0}, "'duration'"),
    (MODEL_1_5, {"duration": 13}, "'duration'"),
    ("some-other-model", {"duration": -1}, "'duration'"),  # unknown: 2-12
    ("some-other-model", {"duration": 1}, "'duration'"),
])
def test_video_model_limits_refuse(model, body, field):
    with pytest.raises(RequestInvalid) as caught:
        video(model).validate_request({"prompt": "a fox", **body})
    assert str(caught.value).startswith(field)


@pytest.mark.parametrize("model, body", [
    (MODEL_1_0, {"ratio": "adaptive", "firstFrameUrl": "https://x/first.png"}),
    (MODEL_1_0, {"ratio": "16:9", "duration": 2}),
    (MODEL_1_0, {"duration": 12}),
    (MODEL_1_5, {"ratio": "adaptive", "duration": -1}),
    (MODEL_1_5, {"duration": 4}),
    (MODEL_1_5, {"duration": 12}),
    ("some-other-model", {"ratio": "adaptive", "duration": 2}),
    ("", {"ratio": "adaptive"}),
])
def test_video_model_limits_accept(model, body):
    assert video(model).validate_request({"prompt": "a fox", **body}) == {"prompt": "a fox", **body}


def test_video_model_limits_at_the_user_api(client):
    """The default model (Seedance 1.0 pro) refuses adaptive text-to-video with a 400 naming the field."""
    refused = client.post("/api/video/generate", json={"prompt": "a fox", "ratio": "adaptive"})
    assert refused.status_code == 400 and "'ratio'" in refused.json["error"] and "'firstFrameUrl'" in \
        refused.json["error"]
    refused = client.post("/api/video/generate", json={"prompt": "a fox", "duration": -1})
    assert refused.status_code == 400 and "'duration'" in refused.json["error"]
    accepted = client.post("/api/video/generate", json={"prompt": "a fox", "ratio": "adaptive",
                                                        "firstFrameUrl": "https://x/first.png"})
    assert accepted.status_code == 201, accepted.json
