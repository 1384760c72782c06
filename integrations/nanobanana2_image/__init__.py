"""Text-to-image through the Nano Banana 2 asynchronous job API (DESIGN §7)."""

from __future__ import annotations

from typing import Any

from integrations import Integration
from integrations.shared.validation import MAX_PROMPT_CHARS, Field, validate_fields

NAMESPACE = "nanobanana2ImageGeneration"

REQUEST = {
    "prompt": Field(str, required=True, max_chars=MAX_PROMPT_CHARS),
    "aspectRatio": Field(
        str, choices=("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "auto")),
    "resolution": Field(str, choices=("1K", "2K", "4K")),
    "outputFormat": Field(str, choices=("png", "jpg")),
    "imageInput": Field(list, max_items=14),
}


class Nanobanana2ImageGeneration(Integration):
    namespace = NAMESPACE
    short_name = "image"
    report_api_name = "reportNanobanana2ImageResult"
    user_path = "/api/image/generate"
    default_workflow_name = "ImagePollingWorkflow"
    default_task_queue = "integration-nanobanana2imagegeneration-queue"

    def validate_request(self, body: Any) -> dict:
        return validate_fields(body, REQUEST)
