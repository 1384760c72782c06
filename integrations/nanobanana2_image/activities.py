"""Activities of the image polling workflow: create the job, poll recordInfo until it is final."""

from integrations.nanobanana2_image import NAMESPACE
from integrations.nanobanana2_image.client import NanoBananaClient
from integrations.shared.activities import job_activities

ACTIVITIES = create_image_task, poll_image_task = job_activities(NAMESPACE, NanoBananaClient)
