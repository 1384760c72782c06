"""Activities of the video polling workflow: create the Ark task, poll it until it is final, look at an earlier
attempt's task, cancel a queued one."""

from integrations.fangzhou_video import NAMESPACE
from integrations.fangzhou_video.client import ArkClient
from integrations.shared.activities import job_activities

ACTIVITIES = job_activities(NAMESPACE, ArkClient)
