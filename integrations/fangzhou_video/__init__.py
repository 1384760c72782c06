"""Text-to-video through Volcengine Ark (方舟) content generation tasks (docs/design.md §7)."""

from __future__ import annotations

from integrations.base import Integration
from integrations.shared.validation import MAX_PROMPT_CHARS, MAX_URL_CHARS, Field

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
    default_workflow_name = "VideoPollingWorkflow"
    request_fields = REQUEST
