"""Activities of the video polling workflow: create the Ark task, poll it until it is final."""

from integrations.fangzhou_video import NAMESPACE
from integrations.fangzhou_video.client import ArkClient
from integrations.shared.activities import job_activities

ACTIVITIES = create_video_task, poll_video_task = job_activities(NAMESPACE, ArkClient)
