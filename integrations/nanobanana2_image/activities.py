"""Activities of the image polling workflow: create the job, poll recordInfo until it is final, look at an
earlier attempt's job (kie has no cancel: that activity answers False)."""

from integrations.nanobanana2_image import NAMESPACE
from integrations.nanobanana2_image.client import NanoBananaClient
from integrations.shared.activities import job_activities

ACTIVITIES = job_activities(NAMESPACE, NanoBananaClient)
