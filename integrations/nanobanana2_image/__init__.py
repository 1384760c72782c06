"""Text-to-image through the Nano Banana 2 asynchronous job API (docs/design.md §7)."""

from __future__ import annotations

from integrations.base import Integration
from integrations.shared.validation import MAX_PROMPT_CHARS, Field

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
    default_workflow_name = "ImagePollingWorkflow"
    request_fields = REQUEST
