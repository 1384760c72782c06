"""The interface every integration implements, and what it hands the processor and the worker.

An integration names a provider (its name, `namespace`, is never a Temporal
namespace), tells the processor how to dispatch its tasks
(`get_pull_mode_config`), describes its internal HTTP routes (`create_apis`;
the web process serves them) and starts nothing from a write
(`create_side_effects() == []`). All three processes import this module, so it
imports nothing of the web process (docs/design.md §2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from integrations.shared.validation import Field, validate_fields
from settings import Config

FETCH_PENDING_TASKS_API_NAME = "fetchPendingTasks"
CLAIM_PENDING_TASKS_API_NAME = "claimPendingTasks"
FETCH_DISPATCHED_TASKS_API_NAME = "fetchDispatchedTasks"


def build_api_path(namespace: str, api_name: str) -> str:
    """The path (no host, no leading slash) of an integration's API."""
    return f"api/{namespace}/{api_name}"


@dataclass(frozen=True)
class WorkflowInput:
    """The one argument of a polling workflow: the processor builds it, the worker reads it.

    Field names are the JSON keys runs have always been started with (camelCase,
    wire names), so runs started before this type existed still replay.
    `namespace` is the integration's name. No secrets travel here (§4.9).
    """

    namespace: str
    apiCallId: str
    attempt: int
    requestParams: dict[str, Any]
    reportUrl: str
    pollIntervalSeconds: float = 5.0
    deadlineSeconds: float = 1800.0  # the default of runs started before 3600 became the configured one
    resumeExternalId: str | None = None  # the previous attempt's provider job: resumed if it is still alive
    mediaGiveUpSeconds: float = 86400.0  # copying the media is retried this long (the provider links' life)

    @property
    def task_id(self) -> str:
        return self.apiCallId


@dataclass(frozen=True)
class InternalApis:
    """Full URLs of an integration's internal endpoints on the web process."""

    fetch_pending_tasks: str
    report_task_event: str
    claim_pending_tasks: str
    fetch_dispatched_tasks: str


@dataclass(frozen=True)
class PullModeConfig:
    """What the processor needs to dispatch one integration's tasks."""

    integration: str
    enabled: bool
    task_queue: str
    workflow_name: str
    build_workflow_id: Callable[[dict], str]
    build_workflow_params: Callable[[dict], WorkflowInput]
    internal_apis: InternalApis


@dataclass(frozen=True)
class Api:
    """One internal route of an integration, `/api/{integration}/{name}` (web/internal_api.py serves it)."""

    integration: str
    name: str
    methods: tuple[str, ...]

    @property
    def path(self) -> str:
        return "/" + build_api_path(self.integration, self.name)


class Integration:
    """Base class: a subclass names its provider and the fields of its create request."""

    namespace: str = ""  # the integration's name, e.g. fangzhouVideoGeneration
    short_name: str = ""  # what people call it, in its user path: /api/{short_name}/generate
    report_api_name: str = ""
    default_workflow_name: str = ""
    request_fields: dict[str, Field] = {}

    def __init__(self, config: Config):
        self.config = config
        self.settings = config.section(f"integrations.{self.namespace}")

    # -- lifecycle hooks (optional in the seed's interface) --
    def configure(self) -> None:
        """Read or check configuration before use; nothing to do by default."""

    def setup(self, app: Any) -> None:
        """Attach to the web app after its routes exist; nothing to do by default."""

    # -- the pull-mode contract --
    @property
    def user_path(self) -> str:
        """The user's create endpoint."""
        return f"/api/{self.short_name}/generate"

    def endpoint_url(self, api_name: str) -> str:
        web = str(self.config.get("components.main.endpoint", "")).rstrip("/")
        return f"{web}/{build_api_path(self.namespace, api_name)}"

    def get_pull_mode_config(self) -> PullModeConfig:
        report_url = self.endpoint_url(self.report_api_name)
        namespace = self.namespace
        poll_interval = float(self.settings.get("pollIntervalSeconds", 5))
        deadline = float(self.settings.get("deadlineSeconds", 3600))
        media_give_up = float(self.config.get("components.media.giveUpSeconds", 86400))

        def build_workflow_id(task: dict) -> str:
            return f"{namespace}:{task['id']}"

        def build_workflow_params(task: dict) -> WorkflowInput:
            return WorkflowInput(namespace, task["id"], task["attempt"], task.get("requestParams") or {},
                                 report_url, poll_interval, deadline, task.get("externalId"), media_give_up)

        return PullModeConfig(
            integration=namespace,
            enabled=bool(self.settings.get("enabled", True)),
            task_queue=self.settings.get("taskQueue") or f"integration-{namespace.lower()}-queue",
            workflow_name=self.settings.get("workflowName") or self.default_workflow_name,
            build_workflow_id=build_workflow_id,
            build_workflow_params=build_workflow_params,
            internal_apis=InternalApis(
                fetch_pending_tasks=self.endpoint_url(FETCH_PENDING_TASKS_API_NAME),
                report_task_event=report_url,
                claim_pending_tasks=self.endpoint_url(CLAIM_PENDING_TASKS_API_NAME),
                fetch_dispatched_tasks=self.endpoint_url(FETCH_DISPATCHED_TASKS_API_NAME),
            ),
        )

    def create_apis(self) -> list[Api]:
        """Its internal routes: fetchPendingTasks, claimPendingTasks, fetchDispatchedTasks and its report endpoint."""
        return [Api(self.namespace, FETCH_PENDING_TASKS_API_NAME, ("GET",)),
                Api(self.namespace, CLAIM_PENDING_TASKS_API_NAME, ("POST",)),
                Api(self.namespace, FETCH_DISPATCHED_TASKS_API_NAME, ("GET",)),
                Api(self.namespace, self.report_api_name, ("POST",))]

    def create_side_effects(self) -> list:
        """Pull mode: no write starts a workflow."""
        return []

    def validate_request(self, body: Any) -> dict:
        """Check a user's create request; return the requestParams to store (RequestInvalid if wrong)."""
        return validate_fields(body, self.request_fields)
