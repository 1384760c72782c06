"""Text-to-video through Volcengine Ark (方舟) content generation tasks (docs/design.md §7)."""

from __future__ import annotations

from typing import Any

from integrations.base import Integration
from integrations.shared.validation import MAX_PROMPT_CHARS, MAX_URL_CHARS, Field, RequestInvalid

NAMESPACE = "fangzhouVideoGeneration"

REQUEST = {
    "prompt": Field(str, required=True, max_chars=MAX_PROMPT_CHARS),
    "ratio": Field(str, choices=("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")),
    # Every model's range together (-1: Seedance 1.5 only); model_limits narrows it to the configured model's.
    "duration": Field(int, low=-1, high=12),
    "resolution": Field(str, choices=("480p", "720p", "1080p")),
    "seed": Field(int, low=-1, high=2**32 - 1),
    "watermark": Field(bool),
    "firstFrameUrl": Field(str, max_chars=MAX_URL_CHARS),
}


def model_limits(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """Refuse at the user's create what Ark's strict validation would refuse at the provider's create for
    `model` (providers.md §1 [S2]), so the user gets a 400 now instead of a failed task later.

    Seedance 1.0 (`seedance-1-0` in the id): duration 2-12, and no `adaptive` ratio for text-to-video.
    Seedance 1.5 (`seedance-1-5`): duration 4-12 or -1. Any other model: 2-12, adaptive allowed (unknown).
    """
    duration = params.get("duration")
    if "seedance-1-5" in model:
        if duration is not None and duration != -1 and not 4 <= duration <= 12:
            raise RequestInvalid("'duration' must be from 4 to 12, or -1, for this model")
        return params
    if duration is not None and not 2 <= duration <= 12:
        raise RequestInvalid("'duration' must be from 2 to 12 for this model")
    if "seedance-1-0" in model and params.get("ratio") == "adaptive" and not params.get("firstFrameUrl"):
        raise RequestInvalid("'ratio' may be adaptive only with a 'firstFrameUrl' for this model")
    return params


class FangzhouVideoGeneration(Integration):
    namespace = NAMESPACE
    short_name = "video"
    report_api_name = "reportFangzhouVideoResult"
    default_workflow_name = "VideoPollingWorkflow"
    request_fields = REQUEST

    def validate_request(self, body: Any) -> dict:
        """The fields, then the configured model's own limits."""
        return model_limits(str(self.settings.get("model") or ""), super().validate_request(body))
