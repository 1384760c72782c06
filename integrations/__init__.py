"""The integration interface and the registry of integrations (DESIGN §2).

An integration names a provider by namespace, maps onto its own table, and
tells the processor how to dispatch its tasks (`get_pull_mode_config`). It
serves its HTTP routes (`create_apis`) and starts nothing from a write
(`create_side_effects() == []`).

Importing this package must not import the database layer: the processor and
the worker load it too. Only `create_apis()` reaches the task store, lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from settings import Config

FETCH_PENDING_TASKS_API_NAME = "fetchPendingTasks"
CLAIM_PENDING_TASKS_API_NAME = "claimPendingTasks"
FIELDS = (
    "id", "status", "attempts", "startedAt", "requestParams", "createdAt",
    "updatedAt", "externalId", "result", "error", "retryable", "dispatchedAt",
)


def build_api_path(namespace: str, api_name: str) -> str:
    """The path (no host, no leading slash) of an integration's API."""
    return f"api/{namespace}/{api_name}"


@dataclass(frozen=True)
class InternalApis:
    fetch_pending_tasks: str
    report_task_event: str
    claim_pending_tasks: str = ""


@dataclass(frozen=True)
class PullModeConfig:
    """What the processor needs to dispatch one integration's tasks."""

    enabled: bool
    task_queue: str
    workflow_name: str
    build_workflow_id: Callable[[dict], str]
    build_workflow_params: Callable[[dict], dict]
    internal_apis: InternalApis
    namespace: str = ""


@dataclass(frozen=True)
class Api:
    """One HTTP route of an integration, mounted at /api/{namespace}/{name}."""

    namespace: str
    name: str
    methods: tuple[str, ...]
    view: Callable[..., Any]


@dataclass(frozen=True)
class EntityMapping:
    """The table an integration writes and its column names, keyed by field (camelCase)."""

    table: str
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    @classmethod
    def from_config(cls, section: dict) -> EntityMapping:
        columns = {name: section.get("columns", {}).get(name, name) for name in FIELDS}
        return cls(table=section["table"], columns=columns)


class Integration:
    """Base class: subclasses set the class attributes and `validate_request`."""

    namespace: str = ""
    short_name: str = ""  # what people call it: "video", "image"
    report_api_name: str = ""
    user_path: str = ""  # POST endpoint that creates a task, e.g. /api/video/generate
    default_workflow_name: str = ""
    default_task_queue: str = ""

    def __init__(self, config: Config):
        self.config = config
        self.settings = config.section(f"integrations.{self.namespace}")
        self.pull = config.section("components.asyncTask.pullMode")

    # -- lifecycle hooks (optional in the seed's interface) --
    def configure(self) -> None:
        """Read or check configuration before use; nothing to do by default."""

    def setup(self, app: Any) -> None:
        """Attach to the web app after its routes exist; nothing to do by default."""

    # -- the pull-mode contract --
    @property
    def entity(self) -> EntityMapping:
        section = self.config.section(f"components.main.integrations.{self.namespace}")
        return EntityMapping.from_config(section)

    @property
    def max_attempts(self) -> int:
        return int(self.pull.get("maxAttempts", 5))

    @property
    def stuck_timeout_seconds(self) -> int:
        return int(self.pull.get("stuckTimeoutSeconds", 300))

    def endpoint_url(self, api_name: str) -> str:
        main = str(self.config.get("components.main.endpoint", "")).rstrip("/")
        return f"{main}/{build_api_path(self.namespace, api_name)}"

    def get_pull_mode_config(self) -> PullModeConfig:
        report_url = self.endpoint_url(self.report_api_name)
        namespace = self.namespace
        poll_interval = float(self.settings.get("pollIntervalSeconds", 5))
        deadline = float(self.settings.get("deadlineSeconds", 1800))

        def build_workflow_id(api_call: dict) -> str:
            return f"{namespace}:{api_call['id']}"

        def build_workflow_params(api_call: dict) -> dict:
            # No secrets here: the worker's activities read keys from their own config.
            return {
                "namespace": namespace,
                "apiCallId": api_call["id"],
                "attempt": api_call["attempt"],
                "requestParams": api_call.get("requestParams") or {},
                "reportUrl": report_url,
                "pollIntervalSeconds": poll_interval,
                "deadlineSeconds": deadline,
            }

        return PullModeConfig(
            enabled=bool(self.settings.get("enabled", True)),
            task_queue=self.settings.get("taskQueue") or self.default_task_queue,
            workflow_name=self.settings.get("workflowName") or self.default_workflow_name,
            build_workflow_id=build_workflow_id,
            build_workflow_params=build_workflow_params,
            internal_apis=InternalApis(
                fetch_pending_tasks=self.endpoint_url(FETCH_PENDING_TASKS_API_NAME),
                report_task_event=report_url,
                claim_pending_tasks=self.endpoint_url(CLAIM_PENDING_TASKS_API_NAME),
            ),
            namespace=namespace,
        )

    def create_apis(self) -> list[Api]:
        """fetchPendingTasks and claimPendingTasks (shared factories) and this integration's report endpoint."""
        from integrations.shared.apis import (
            create_claim_pending_tasks_api,
            create_fetch_pending_tasks_api,
            create_report_api,
        )

        return [
            *(factory(
                self.namespace,
                self.entity,
                max_attempts=self.max_attempts,
                stuck_timeout_seconds=self.stuck_timeout_seconds,
                default_limit=int(self.pull.get("batchSize", 10)),
            ) for factory in (create_fetch_pending_tasks_api, create_claim_pending_tasks_api)),
            create_report_api(
                self.namespace,
                self.report_api_name,
                self.entity,
                max_attempts=self.max_attempts,
                stuck_timeout_seconds=self.stuck_timeout_seconds,
            ),
        ]

    def create_side_effects(self) -> list:
        """Pull mode: no write starts a workflow."""
        return []

    def validate_request(self, body: Any) -> dict:
        """Check a user's create request; return the requestParams to store."""
        raise NotImplementedError


def load_integrations(config: Config) -> list[Integration]:
    """Every integration, configured from `config`."""
    from integrations.fangzhou_video import FangzhouVideoGeneration
    from integrations.nanobanana2_image import Nanobanana2ImageGeneration

    integrations = [FangzhouVideoGeneration(config), Nanobanana2ImageGeneration(config)]
    for integration in integrations:
        integration.configure()
    return integrations
