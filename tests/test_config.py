"""Seed plan step 8: configuration loading, ${VAR} substitution, env overrides, clear failures."""

import json
import os
import subprocess
import sys

import pytest

from settings import ROOT, ConfigError, describe_temporal_error, load_config, temporal_connection


def test_async_task_config_has_temporal_and_pull_mode():
    config = load_config(environ={})
    assert config.get("components.asyncTask.temporal.address")
    assert config.get("components.asyncTask.temporal.namespace") == "default"
    assert config.get("components.asyncTask.pullMode.pollIntervalMs") > 0
    assert config.get("components.asyncTask.pullMode.batchSize") > 0
    assert config.get("components.asyncTask.pullMode.maxAttempts") == 5
    assert config.get("components.asyncTask.pullMode.stuckTimeoutSeconds") == 300


def test_internal_api_token_comes_from_the_environment():
    assert load_config(environ={}).get("components.asyncTask.internalApiToken") is None
    config = load_config(environ={"INTERNAL_API_TOKEN": "s3cret"})
    assert config.get("components.asyncTask.internalApiToken") == "s3cret"


def test_var_substitution_with_defaults_and_embedding(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"a": "${A}", "b": "${B:-fallback}", "c": "x-${A}-y", "d": ["${MISSING}"]}))
    config = load_config(environ={"A": "1"}, path=path)
    assert config.data == {"a": "1", "b": "fallback", "c": "x-1-y", "d": [None]}


def test_environment_overrides_file_values_with_types():
    config = load_config(environ={"BATCH_SIZE": "25", "TEMPORAL_ADDRESS": "t:7233", "PORT": "8080"})
    assert config.get("components.asyncTask.pullMode.batchSize") == 25
    assert config.get("components.asyncTask.temporal.address") == "t:7233"
    assert config.get("components.main.port") == 8080


@pytest.mark.parametrize("environ, message", [
    ({"BATCH_SIZE": "ten"}, "BATCH_SIZE must be an integer"),
    ({"BATCH_SIZE": "500"}, "BATCH_SIZE (components.asyncTask.pullMode.batchSize) must be an integer from 1 to 100"),
    ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
    ({"MAX_IN_FLIGHT": "0"}, "MAX_IN_FLIGHT (components.asyncTask.pullMode.maxInFlight) must be an integer from 1"),
    ({"MAX_IN_FLIGHT": "-5"}, "MAX_IN_FLIGHT"),
    ({"POLL_INTERVAL_MS": "60000"}, "POLL_INTERVAL_MS (components.asyncTask.pullMode.pollIntervalMs) must be an "
                                    "integer from 1 to 30000"),
    ({"APP_CONFIG": "/nonexistent.json"}, "cannot read config file"),
    ({"RECONCILE_ENABLED": "maybe"}, "RECONCILE_ENABLED must be true or false"),
    ({"RECONCILE_INTERVAL_SECONDS": "0"}, "RECONCILE_INTERVAL_SECONDS"),
    ({"PROCESSOR_METRICS_PORT": "70000"}, "PROCESSOR_METRICS_PORT"),
    ({"DATABASE_URL": "mysql://db/tasks"}, "DATABASE_URL (components.main.databaseUrl) must be sqlite:///<path> or"),
    ({"DATABASE_URL": "postgresql://pooler/tasks", "DATABASE_DIRECT_URL": "sqlite:///x.db"},
     "DATABASE_DIRECT_URL (components.main.databaseDirectUrl) must be postgresql://"),
    ({"DATABASE_URL": "sqlite:///x.db", "DATABASE_DIRECT_URL": "postgres://db/tasks"},
     "is for a PostgreSQL DATABASE_URL"),
])
def test_bad_settings_are_refused_clearly(environ, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(environ=environ)


def test_require_names_the_variable():
    with pytest.raises(ConfigError, match="set INTERNAL_API_TOKEN"):
        load_config(environ={}).require("components.asyncTask.internalApiToken")


def test_web_process_without_token_exits_with_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from app import create_app; create_app()"], cwd=ROOT,
        capture_output=True, text=True, env={"DATABASE_PATH": str(tmp_path / "x.db"), "PATH": ""},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: missing required setting: set INTERNAL_API_TOKEN (components.asyncTask.internalApiToken)"
    ]
    assert not (tmp_path / "x.db").exists()


# -- the Temporal connection (settings.temporal_connection, through temporalio.envconfig) --

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def connection(environ, overrides=None):
    environ = {"TEMPORAL_CONFIG_FILE": os.devnull, **environ}  # never the developer's own temporal.toml
    return temporal_connection(load_config(overrides, environ=environ), environ=environ)


def test_temporal_connection_defaults_to_our_config_and_its_variables():
    assert connection({}) == {"target_host": "127.0.0.1:7233", "namespace": "default"}
    assert connection({"TEMPORAL_ADDRESS": "t:7233", "TEMPORAL_NAMESPACE": "ns"}) == {"target_host": "t:7233",
                                                                                      "namespace": "ns"}
    assert connection({"TEMPORAL_ADDRESS": "t:7233"}, {"TEMPORAL_ADDRESS": "o:7233"})["target_host"] == "o:7233"


def test_temporal_tls_api_key_and_metadata_come_from_temporal_variables(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    found = connection({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(ca), "TEMPORAL_TLS_SERVER_NAME": "temporal.internal",
                        "TEMPORAL_API_KEY": "k", "TEMPORAL_GRPC_META_X_TENANT": "acme"})
    assert (found["tls"].server_root_ca_cert, found["tls"].domain) == (PEM.encode(), "temporal.internal")
    assert (found["api_key"], found["rpc_metadata"]) == ("k", {"x-tenant": "acme"})
    assert connection({"TEMPORAL_API_KEY": "k"})["tls"] is True  # an API key turns TLS on (system roots)
    assert connection({"TEMPORAL_API_KEY": "k", "TEMPORAL_TLS": "false"})["tls"] is False
    assert "tls" not in connection({"TEMPORAL_TLS": ""})  # empty is unset, as for our settings


def test_temporal_toml_profile_is_selected_and_variables_override_it(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM)
    toml = tmp_path / "temporal.toml"
    toml.write_text(f'[profile.default]\nnamespace = "dev"\n\n[profile.prod]\naddress = "prod.example:7233"\n'
                    f'namespace = "prod"\n[profile.prod.tls]\nserver_ca_cert_path = "{ca}"\n')
    prod = connection({"TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_PROFILE": "prod"})
    assert (prod["target_host"], prod["namespace"], prod["tls"].server_root_ca_cert) == ("prod.example:7233", "prod",
                                                                                        PEM.encode())
    assert connection({"TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_PROFILE": "prod",
                       "TEMPORAL_ADDRESS": "t:1"})["target_host"] == "t:1"
    assert connection({"TEMPORAL_CONFIG_FILE": str(toml)}) == {"target_host": "127.0.0.1:7233", "namespace": "dev"}


@pytest.mark.parametrize("environ, message", [
    ({"TEMPORAL_TLS": "yes"}, "TEMPORAL_TLS must be true or false, got 'yes'"),
    ({"TEMPORAL_TLS_DISABLE_HOST_VERIFICATION": "true"}, "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is not supported"),
    ({"TEMPORAL_CONFIG_FILE": "{tmp}/none.toml"}, "TEMPORAL_CONFIG_FILE {tmp}/none.toml does not exist"),
    ({"TEMPORAL_CONFIG_FILE": "{tmp}/typo.toml"}, "unknown field `server_ca_cert_file`"),
    ({"TEMPORAL_CONFIG_FILE": "{tmp}/good.toml", "TEMPORAL_PROFILE": "prod"}, "Profile 'prod' not found"),
    ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "{tmp}/none.pem"}, "cannot read the TLS server CA certificate {tmp}/none"),
    ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "{tmp}/typo.toml"}, "server CA certificate {tmp}/typo.toml "
                                                              "(TEMPORAL_TLS_SERVER_CA_CERT_PATH or "
                                                              "tls.server_ca_cert_path) is not PEM"),
    ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "{tmp}/ca.pem"}, "mTLS needs both the client certificate and its key"),
    ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "{tmp}/ca.pem", "TEMPORAL_TLS_SERVER_CA_CERT_DATA": PEM},
     "Cannot specify both TEMPORAL_TLS_SERVER_CA_CERT_PATH and TEMPORAL_TLS_SERVER_CA_CERT_DATA"),
])
def test_temporal_connection_mistakes_are_one_line_config_errors(tmp_path, environ, message):
    (tmp_path / "ca.pem").write_text(PEM)
    (tmp_path / "typo.toml").write_text('[profile.default.tls]\nserver_ca_cert_file = "ca.pem"\n')
    (tmp_path / "good.toml").write_text('[profile.default]\naddress = "t:7233"\n')
    environ = {k: v.replace("{tmp}", str(tmp_path)) for k, v in environ.items()}
    with pytest.raises(ConfigError) as raised:
        connection(environ)
    assert message.replace("{tmp}", str(tmp_path)) in str(raised.value)
    assert "\n" not in str(raised.value)


# What the Rust core says (recorded against nginx and openssl s_server), and the line the processes log.
@pytest.mark.parametrize("core_error, line", [
    ("Server connection error: tonic::transport::Error(Transport, ConnectError(Custom { kind: InvalidData, "
     "error: InvalidCertificate(UnknownIssuer) }))",
     "TLS: the server's certificate is not signed by a trusted CA; set TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
    ('Server connection error: tonic::transport::Error(Transport, ConnectError(Custom { kind: InvalidData, error: '
     'InvalidCertificate(NotValidForNameContext { expected: DnsName("temporal.example.com"), presented: '
     '["DnsName(\\"localhost\\")", "IpAddress(127.0.0.1)"] }) }))',
     "TLS: the server's certificate is for localhost, 127.0.0.1, not temporal.example.com; connect by one of those "
     "names or set TEMPORAL_TLS_SERVER_NAME"),
    ('`get_system_info` call error after connection: Status { code: Internal, message: "protocol error: received '
     'message with invalid compression flag: 60 (valid flags are 0 and 1) while receiving response with status: '
     '400 Bad Request", metadata: MetadataMap { headers: {"server": "nginx/1.22.1", "content-type": "text/html"} '
     '}, source: None }',
     "TLS: the server (nginx/1.22.1) answered HTTP 400, not gRPC: most often a proxy refusing a missing or "
     "untrusted client certificate"),
    ('`get_system_info` call error after connection: Status { code: Unknown, message: "transport error", source: '
     'Some(tonic::transport::Error(Transport, hyper::Error(Io, Custom { kind: InvalidData, error: "received fatal '
     'alert: CertificateRequired" }))) }',
     "TLS: the server refused the handshake (CertificateRequired alert): it wants a client certificate"),
    ("Server connection error: tonic::transport::Error(Transport, ConnectError(Custom { kind: InvalidData, "
     "error: AlertReceived(HandshakeFailure) }))", "(HandshakeFailure alert): it wants a client certificate"),
    ("Server connection error: tonic::transport::Error(Transport, ConnectError(Custom { kind: InvalidData, "
     "error: InvalidMessage(InvalidContentType) }))", "TLS: the server at this address does not speak TLS"),
    ('`get_system_info` call error after connection: Status { code: Internal, message: "h2 protocol error: http2 '
     'error", source: Some(tonic::transport::Error(Transport, hyper::Error(Http2, Error { kind: GoAway(b"", '
     'FRAME_SIZE_ERROR, Library) }))) }', "the server at this address speaks TLS and this client did not"),
    ('Server connection error: tonic::transport::Error(Transport, ConnectError(ConnectError("tcp connect error", '
     '127.0.0.1:1, Os { code: 111, kind: ConnectionRefused, message: "Connection refused" })))',
     "connection refused: nothing listens at that address"),
    ("something else\nentirely", "RuntimeError: something else entirely"),
])
def test_temporal_errors_are_described_in_one_plain_line(core_error, line):
    described = describe_temporal_error(RuntimeError(f"Failed client connect: {core_error}"))
    assert line in described and "\n" not in described and len(described) < 200
