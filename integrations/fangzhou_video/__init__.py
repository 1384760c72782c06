"""Text-to-video through Volcengine Ark (方舟) content generation tasks (DESIGN §7)."""

from __future__ import annotations

from typing import Any

from integrations import Integration
from integrations.shared.validation import MAX_PROMPT_CHARS, MAX_URL_CHARS, Field, validate_fields

NAMESPACE = "fangzhouVideoGeneration"

REQUEST = {
    "prompt": Field(str, required=True, max_chars=MAX_PROMPT_CHARS),
    "ratio": Field(str, choices=("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")),
    "duration": Field(int, low=2, high=12),
    "resolution": Field(str, choices=("480p", "720p", "1080p")),
    "seed": Field(int, low=-1, high=2**32 - 1),
    "watermark": Field(bool),
    "firstFrameUrl": Field(str, max_chars=MAX_URL_CHARS),
}


class FangzhouVideoGeneration(Integration):
    namespace = NAMESPACE
    short_name = "video"
    report_api_name = "reportFangzhouVideoResult"
    user_path = "/api/video/generate"
    default_workflow_name = "VideoPollingWorkflow"
    default_task_queue = "integration-fangzhouvideogeneration-queue"

    def validate_request(self, body: Any) -> dict:
        return validate_fields(body, REQUEST)
