"""The integrations, shared by all three processes: the interface and the registry (docs/design.md §2).

Nothing here, nor in any integration, imports the web process's modules: the
processor and the worker load integrations too (tests/test_imports.py checks).
"""

from __future__ import annotations

from integrations.base import (
    CLAIM_PENDING_TASKS_API_NAME,
    FETCH_DISPATCHED_TASKS_API_NAME,
    FETCH_PENDING_TASKS_API_NAME,
    Api,
    Integration,
    InternalApis,
    PullModeConfig,
    WorkflowInput,
    build_api_path,
)
from integrations.fangzhou_video import FangzhouVideoGeneration
from integrations.nanobanana2_image import Nanobanana2ImageGeneration
from settings import Config

__all__ = ["CLAIM_PENDING_TASKS_API_NAME", "FETCH_DISPATCHED_TASKS_API_NAME", "FETCH_PENDING_TASKS_API_NAME", "Api",
           "Integration", "InternalApis", "PullModeConfig", "WorkflowInput", "build_api_path", "load_integrations"]
KINDS = (FangzhouVideoGeneration, Nanobanana2ImageGeneration)


def load_integrations(config: Config) -> list[Integration]:
    """Every integration, configured from `config`."""
    integrations = [kind(config) for kind in KINDS]
    for integration in integrations:
        integration.configure()
    return integrations
