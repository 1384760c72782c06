"""A secured Temporal: TLS, mTLS, an API key and Temporal's TOML profiles, through a real TLS endpoint.

Debian's nginx terminates TLS (for mTLS it requires a client certificate signed
by the test CA) and proxies gRPC to the session's Temporal dev server; the
certificates are made with openssl for this module. The processor and the
worker read their connection through settings.temporal_connection
(temporalio.envconfig), so these tests set only Temporal's documented
variables. Without nginx the proxy tests are skipped (`.ci/run` installs it).
"""

import asyncio
import os
import subprocess
import sys
import uuid

import pytest

from dev.stack import (
    connect_temporal,
    local_environ,
    make_certificates,
    nginx_binary,
    nginx_grpc_proxy,
    python_process,
    stop,
    workflow_runs,
)
from integrations import load_integrations
from processor import ProcessorSettings, TaskProcessor, start_workflow
from settings import ROOT, load_config, temporal_connection
from tests.conftest import TOKEN, VIDEO, wait_until

pytestmark = pytest.mark.slow

API_KEY = "tls-test-api-key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_proxy(temporal, certs, tmp_path):
    """nginx with TLS in front of the dev server (any client may connect)."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    with nginx_grpc_proxy(temporal, tmp_path / "nginx-tls", certs.server_cert, certs.server_key) as proxy:
        yield proxy


@pytest.fixture
def mtls_proxy(temporal, certs, tmp_path):
    """nginx with mTLS in front of the dev server: a client certificate signed by the test CA is required."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    with nginx_grpc_proxy(temporal, tmp_path / "nginx-mtls", certs.server_cert, certs.server_key,
                          client_ca=certs.ca) as proxy:
        yield proxy


@pytest.fixture
def temporal_env(monkeypatch):
    """Sets this process's Temporal variables (envconfig reads the real environment); none inherited,
    and no Temporal TOML file unless the test names one."""
    for name in list(os.environ):
        if name.startswith("TEMPORAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", os.devnull)

    def setenv(**env):
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
    return setenv


def tls_env(certs, proxy, mtls=False, ca=None):
    env = {"TEMPORAL_ADDRESS": proxy.address, "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(ca or certs.ca),
           "TEMPORAL_CONFIG_FILE": os.devnull}
    if mtls:
        env |= {"TEMPORAL_TLS_CLIENT_CERT_PATH": str(certs.client_cert),
                "TEMPORAL_TLS_CLIENT_KEY_PATH": str(certs.client_key)}
    return env


def start_one_task(app):
    """A task created in the web process and started by an in-process processor configured by the environment."""
    config = load_config(overrides={"MAIN_ENDPOINT": app.url, "INTERNAL_API_TOKEN": TOKEN, "POLL_INTERVAL_MS": 100})
    processor = TaskProcessor(ProcessorSettings.from_config(config, instance_id="tls-test"))
    processor.load([i.get_pull_mode_config() for i in load_integrations(config)])
    task_id = app.create()
    try:
        processor.run_once()
    finally:
        processor.stop()  # waits for the claimed task's start
    assert processor.stats["started"] == 1, processor.stats
    assert app.task(task_id)["status"] == "queued"
    return task_id


def calls(proxy, method):
    """The proxy's access-log lines of one gRPC method."""
    return [line for line in proxy.access_log.read_text().splitlines() if f"Service/{method} " in line]


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_processor_starts_a_workflow_through_tls(web, temporal, certs, temporal_env, request, mtls):
    proxy = request.getfixturevalue("mtls_proxy" if mtls else "tls_proxy")
    temporal_env(**tls_env(certs, proxy, mtls=mtls))
    task_id = start_one_task(web())

    [run] = workflow_runs(temporal, [f"{VIDEO}:{task_id}"])[f"{VIDEO}:{task_id}"]
    assert (run["status"], run["attempt"]) == ("RUNNING", 1)
    [start] = calls(proxy, "StartWorkflowExecution")
    assert " 200 tls=TLSv1.3 " in start
    assert ('client_verify=SUCCESS client="CN=pull-dispatch test client"' if mtls else "client_verify=NONE") in start


def test_worker_polls_through_mtls(temporal, certs, mtls_proxy, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    env = {**tls_env(certs, mtls_proxy, mtls=True), "INTERNAL_API_TOKEN": TOKEN,
           "FANGZHOU_API_KEY": "k", "NANOBANANA_API_KEY": "k", "FANGZHOU_BASE_URL": "http://127.0.0.1:9/api/v3",
           "FANGZHOU_TASK_QUEUE": f"tls-video-{suffix}", "NANOBANANA_TASK_QUEUE": f"tls-image-{suffix}"}
    config = load_config(environ=env)
    pull = next(i.get_pull_mode_config() for i in load_integrations(config) if i.namespace == VIDEO)
    task = {"id": f"tls-{suffix}", "requestParams": {"prompt": "a lighthouse"}}

    async def first_workflow_task_done():
        from temporalio.api.enums.v1 import EventType

        client = await connect_temporal(temporal_connection(config, environ=env))  # through the proxy, mTLS
        await start_workflow(client, pull, task, 1)
        handle = client.get_workflow_handle(pull.build_workflow_id(task))
        try:
            for _ in range(300):
                history = await handle.fetch_history()
                if any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in history.events):
                    return True
                await asyncio.sleep(0.1)
            return False
        finally:
            await handle.terminate(reason="test over")

    with python_process(["workflows.py"], tmp_path / "worker.log", env) as worker:
        assert asyncio.run(first_workflow_task_done()), (tmp_path / "worker.log").read_text()
        assert stop(worker) == 0
    polls = calls(mtls_proxy, "PollWorkflowTaskQueue")
    assert polls and all('client_verify=SUCCESS client="CN=pull-dispatch test client"' in p for p in polls)
    assert any(" 200 " in line for line in calls(mtls_proxy, "RespondWorkflowTaskCompleted"))


@pytest.mark.parametrize("process", ["processor", "worker"])
@pytest.mark.parametrize("case", ["wrong CA", "no client certificate"])
def test_tls_failures_are_one_clear_log_line(web, certs, request, tmp_path, process, case):
    if case == "wrong CA":
        proxy = request.getfixturevalue("tls_proxy")
        env, expected = tls_env(certs, proxy, ca=certs.other_ca), "TLS: the server's certificate is not signed by a "
    else:
        proxy = request.getfixturevalue("mtls_proxy")
        env, expected = tls_env(certs, proxy), "not gRPC: most often a proxy refusing a missing or untrusted client "
    env |= {"INTERNAL_API_TOKEN": TOKEN, "POLL_INTERVAL_MS": "100", "FANGZHOU_API_KEY": "k", "NANOBANANA_API_KEY": "k"}
    log = tmp_path / f"{process}.log"
    if process == "processor":
        app = web()
        task_id = app.create()  # the processor looks at Temporal once there is work to claim
        env["MAIN_ENDPOINT"] = app.url
    script = "processor.py" if process == "processor" else "workflows.py"

    def lines():
        return [line for line in log.read_text().splitlines() if "temporal unavailable" in line]

    with python_process([script], log, env):
        wait_until(lines, timeout=20, message=f"the {process} reporting Temporal unavailable")
    assert lines()[0].count("\n") == 0 and expected in lines()[0], lines()[0]
    assert all(expected in line for line in lines())
    assert "Traceback" not in log.read_text()
    if process == "processor":
        assert app.task(task_id)["status"] == "pending"  # nothing claimed while Temporal cannot be reached


def test_api_key_reaches_the_server(web, temporal, certs, tls_proxy, temporal_env):
    temporal_env(**tls_env(certs, tls_proxy), TEMPORAL_API_KEY=API_KEY)
    connection = temporal_connection(load_config())
    assert connection["api_key"] == API_KEY and connection["tls"].server_root_ca_cert == certs.ca.read_bytes()
    start_one_task(web())
    [start] = calls(tls_proxy, "StartWorkflowExecution")
    assert f'authorization="Bearer {API_KEY}"' in start


def test_toml_profile_selects_address_namespace_and_tls(web, temporal, certs, mtls_proxy, temporal_env, tmp_path):
    namespace = f"tls-profile-{uuid.uuid4().hex[:6]}"

    async def register():
        from google.protobuf.duration_pb2 import Duration
        from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

        client = await connect_temporal(temporal)
        await client.workflow_service.register_namespace(RegisterNamespaceRequest(
            namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)))
    asyncio.run(register())
    profile = tmp_path / "temporal.toml"
    profile.write_text(f"""\
[profile.default]
address = "127.0.0.1:1"

[profile.secure]
address = "{mtls_proxy.address}"
namespace = "{namespace}"

[profile.secure.tls]
server_ca_cert_path = "{certs.ca}"
client_cert_path = "{certs.client_cert}"
client_key_path = "{certs.client_key}"
""")
    temporal_env(TEMPORAL_CONFIG_FILE=profile, TEMPORAL_PROFILE="secure")
    connection = temporal_connection(load_config())
    assert (connection["target_host"], connection["namespace"]) == (mtls_proxy.address, namespace)
    task_id = start_one_task(web())

    workflow_id = f"{VIDEO}:{task_id}"
    [run] = workflow_runs({"target_host": temporal, "namespace": namespace}, [workflow_id])[workflow_id]
    assert run["status"] == "RUNNING"
    [start] = calls(mtls_proxy, "StartWorkflowExecution")
    assert "client_verify=SUCCESS" in start


@pytest.mark.parametrize("script", ["processor.py", "workflows.py"])
@pytest.mark.parametrize("case", ["missing certificate", "malformed TOML", "unknown profile"])
def test_a_connection_mistake_stops_the_process_with_one_line(tmp_path, script, case):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('[profile.default]\naddress = "127.0.0.1:7233"\n')
    bad.write_text("[profile.default]\naddress = \n")
    env, expected = {
        "missing certificate": ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(tmp_path / "no-ca.pem")},
                                f"cannot read the TLS server CA certificate {tmp_path / 'no-ca.pem'} "
                                f"(TEMPORAL_TLS_SERVER_CA_CERT_PATH or tls.server_ca_cert_path): No such file"),
        "malformed TOML": ({"TEMPORAL_CONFIG_FILE": str(bad)},
                           f"TEMPORAL_CONFIG_FILE {bad}: Configuration loading error: TOML parse error at line 2"),
        "unknown profile": ({"TEMPORAL_CONFIG_FILE": str(good), "TEMPORAL_PROFILE": "staging"},
                            f"TEMPORAL_CONFIG_FILE {good}: Profile 'staging' not found"),
    }[case]
    env |= {"INTERNAL_API_TOKEN": TOKEN, "FANGZHOU_API_KEY": "k", "NANOBANANA_API_KEY": "k"}
    result = subprocess.run([sys.executable, script], cwd=ROOT, env=local_environ(env), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("config error: ") and expected in line, line
