"""Seed plan steps 1 and 7: build_api_path, the pull configs, no side effects."""

import pytest

from integrations import WorkflowInput, build_api_path, load_integrations
from settings import load_config

SECRETS = {"INTERNAL_API_TOKEN": "internal-secret", "FANGZHOU_API_KEY": "ark-secret",
           "NANOBANANA_API_KEY": "banana-secret", "MAIN_ENDPOINT": "http://main:3000"}


@pytest.mark.parametrize("namespace, name, expected", [
    ("fangzhouVideoGeneration", "fetchPendingTasks", "api/fangzhouVideoGeneration/fetchPendingTasks"),
    ("nanobanana2ImageGeneration", "reportResult", "api/nanobanana2ImageGeneration/reportResult"),
])
def test_build_api_path(namespace, name, expected):
    assert build_api_path(namespace, name) == expected


@pytest.fixture
def integrations():
    return {i.namespace: i for i in load_integrations(load_config(environ=SECRETS))}


@pytest.mark.parametrize("namespace, queue, workflow, report", [
    ("fangzhouVideoGeneration", "integration-fangzhouvideogeneration-queue",
     "VideoPollingWorkflow", "reportFangzhouVideoResult"),
    ("nanobanana2ImageGeneration", "integration-nanobanana2imagegeneration-queue",
     "ImagePollingWorkflow", "reportNanobanana2ImageResult"),
])
def test_get_pull_mode_config(integrations, namespace, queue, workflow, report):
    config = integrations[namespace].get_pull_mode_config()
    assert config.enabled is True
    assert config.task_queue == queue
    assert config.workflow_name == workflow
    assert config.internal_apis.fetch_pending_tasks == f"http://main:3000/api/{namespace}/fetchPendingTasks"
    assert config.internal_apis.report_task_event == f"http://main:3000/api/{namespace}/{report}"
    assert config.internal_apis.claim_pending_tasks == f"http://main:3000/api/{namespace}/claimPendingTasks"
    assert config.internal_apis.fetch_dispatched_tasks == f"http://main:3000/api/{namespace}/fetchDispatchedTasks"
    assert config.build_workflow_id({"id": "task-123"}) == f"{namespace}:task-123"

    params = config.build_workflow_params({"id": "task-123", "attempt": 2, "requestParams": {"prompt": "test"}})
    assert isinstance(params, WorkflowInput)
    assert (params.namespace, params.apiCallId, params.attempt) == (namespace, "task-123", 2)
    assert params.requestParams == {"prompt": "test"}
    assert params.reportUrl.endswith(report)
    assert not any(secret in repr(params) for secret in SECRETS.values() if "secret" in secret)


def test_create_side_effects_is_empty(integrations):
    assert [i.create_side_effects() for i in integrations.values()] == [[], []]


def test_create_apis_serves_fetch_claim_dispatched_and_report(integrations):
    names = {i.namespace: [api.name for api in i.create_apis()] for i in integrations.values()}
    assert names == {
        "fangzhouVideoGeneration": ["fetchPendingTasks", "claimPendingTasks", "fetchDispatchedTasks",
                                    "reportFangzhouVideoResult"],
        "nanobanana2ImageGeneration": ["fetchPendingTasks", "claimPendingTasks", "fetchDispatchedTasks",
                                       "reportNanobanana2ImageResult"],
    }


def test_every_api_an_integration_describes_is_served(integrations):
    from app import create_app
    from tests.conftest import SECRETS

    app = create_app({**SECRETS, "DATABASE_PATH": ":memory:"})
    urls = app.url_map.bind("localhost")
    for integration in integrations.values():
        for api in integration.create_apis():
            for method in api.methods:
                endpoint, args = urls.match(api.path, method)
                assert endpoint.startswith("internal_api.") and args["name"] == integration.namespace
