"""Text from providers or clients never drives the operator's terminal: the CLI and the logs escape control characters.

A provider's error, a user's prompt or an external id may hold ESC sequences
(colours, a rewritten window title, a cleared screen), a carriage return that
hides what came before it on the line, a bell, or a bidi override that reorders
what is shown. Click strips only colour codes, and only when it is not writing
to a terminal, so these tests look for the escaped form, not for a missing ESC.
"""

from __future__ import annotations

import io
import logging
import re

import pytest

import logs
from tests.conftest import VIDEO, both_backends

HOSTILE = "red\x1b[31m alert\x1b[0m\x1b]0;owned title\x07 hidden\rshown bell\x07 \u202eevil\x9b2J \x7f"
ESCAPED = ["\\x1b[31m", "\\x1b]0;owned title\\x07", "hidden\\rshown", "\\u202eevil", "\\x9b2J", "\\x7f"]
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # all but \t and \n


def assert_escaped(output: str) -> None:
    assert not RAW.findall(output), RAW.findall(output)
    for escaped in ESCAPED:
        assert escaped in output, (escaped, output)


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@both_backends
def test_tasks_show_and_list_escape_control_characters(runner, tasks):
    task_id = tasks.create(prompt=f"a prompt {HOSTILE}")
    attempt = tasks.report(task_id, "queued").json["attempt"]
    assert tasks.report(task_id, "processing", attempt=attempt, taskId=f"cgt-{HOSTILE}").status_code == 200
    assert tasks.report(task_id, "failed", attempt=attempt, error=f"Ark says {HOSTILE}").status_code == 200

    shown = runner.invoke(args=["tasks", "show", task_id], color=True)  # as on a terminal: nothing stripped
    assert shown.exit_code == 0, shown.output
    assert_escaped(shown.output.split("request:")[0])  # the error and the external id, in full
    assert "error:         Ark says red\\x1b[31m alert" in shown.output
    timeline = shown.output.split("WHEN")[1]
    assert not RAW.findall(timeline) and "Ark says red\\x1b[31m" in timeline  # the failed event's detail
    assert "\\u001b" in shown.output.split("request:")[1].splitlines()[0]  # the prompt, JSON-escaped

    listed = runner.invoke(args=["tasks", "list"], color=True)
    assert listed.exit_code == 0 and not RAW.findall(listed.output)
    assert "Ark says red\\x1b[31m alert" in listed.output


@both_backends
def test_an_operators_reason_and_refusals_are_escaped_too(runner, tasks):
    task_id = tasks.create()
    attempt = tasks.report(task_id, "queued").json["attempt"]
    failed = runner.invoke(args=["tasks", "fail", task_id, "--reason", HOSTILE], color=True)
    assert failed.exit_code == 0, failed.output
    assert_escaped(runner.invoke(args=["tasks", "show", task_id], color=True).output.split("request:")[0])
    assert tasks.row(task_id)["error"] == HOSTILE and attempt == 1  # stored as given; only the display escapes

    missing = runner.invoke(args=["tasks", "show", f"nope{HOSTILE}"], color=True)
    assert missing.exit_code == 1 and not RAW.findall(missing.output)


def formatted(message: str, *args, **fields) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.LogfmtFormatter("worker"))
    logger = logging.getLogger(f"test-escaping-{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        if args:
            logger.warning(message, *args)
        else:
            logs.event(logger, message, logging.WARNING, **fields)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_log_lines_escape_control_characters_in_every_value():
    line = formatted("provider call failed", task="t-1", attempt=1, error=f"Ark says {HOSTILE}",
                     external_id=f"cgt-{HOSTILE}")
    assert line.count("\n") == 1 and line.endswith("\n")
    assert_escaped(line)
    assert f'error="Ark says {logs.escape_controls(HOSTILE)}"' in line
    assert " task=t-1 attempt=1 " in line


def test_a_message_built_from_arguments_is_escaped_too():
    line = formatted("temporal unavailable at %s: %s", "127.0.0.1:7233", f"TLS error {HOSTILE}")
    assert line.count("\n") == 1
    assert_escaped(line)


@pytest.mark.parametrize("value, shown", [
    ("plain", "plain"),
    ("", '""'),
    ("two words", '"two words"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", "back\\slash"),  # no quoting needed, so taken as it is
    ("back\\slash and space", '"back\\\\slash and space"'),
    ("line\nbreak", '"line\\nbreak"'),
    ("tab\there", '"tab\\there"'),
    ("esc\x1b[2J", '"esc\\x1b[2J"'),
    ("nul\x00", '"nul\\x00"'),
    ("bidi\u202e", '"bidi\\u202e"'),
    ("a=b", '"a=b"'),
    ("中文 prompt", '"中文 prompt"'),
])
def test_logfmt_values(value, shown):
    assert logs._quote(value) == shown


def test_escape_controls_leaves_printable_text_alone():
    assert logs.escape_controls("Ark 400: 提示词 contains sensitive words — «ok» \\x1b") == (
        "Ark 400: 提示词 contains sensitive words — «ok» \\x1b")
    assert logs.escape_controls("\x1b\r\n\t\x07\x9b\u2028\ufeff") == "\\x1b\\r\\n\\t\\x07\\x9b\\u2028\\ufeff"


@both_backends
def test_integration_name_is_unchanged(runner, tasks):
    """Escaping changes nothing printable: the plain output of `tasks show` is as before."""
    task_id = tasks.create(VIDEO, prompt="a heron")
    output = runner.invoke(args=["tasks", "show", task_id]).output
    assert f"id:            {task_id}" in output and f"integration:   {VIDEO}" in output
    assert '"prompt": "a heron"' in output
