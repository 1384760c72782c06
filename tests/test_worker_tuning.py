"""The worker's own tuning: what it does at start so that each workflow run costs less."""

import importlib.util
import logging
import marshal
import os
import sys

import workflows


def test_the_worker_caches_the_workflow_modules_bytecode_even_when_python_writes_none(monkeypatch):
    """The sandbox imports workflows.py afresh for each run: without a .pyc, every run compiles the source."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as under PYTHONDONTWRITEBYTECODE=1
    cached = importlib.util.cache_from_source(workflows.__file__)
    if os.path.exists(cached):
        os.remove(cached)
    workflows.cache_bytecode(logging.getLogger("test"))
    with open(cached, "rb") as pyc:
        header = pyc.read(16)
        code = marshal.loads(pyc.read())
    assert header[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(header[8:12], "little") == int(os.stat(workflows.__file__).st_mtime)  # valid for the source
    assert code.co_filename == workflows.__file__
