"""Seed plan step 8: configuration loading, ${VAR} substitution, env overrides, clear failures."""

import json
import subprocess
import sys

import pytest

from settings import ROOT, ConfigError, load_config


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
