"""Where generated media live once copied from the provider: one interface, two backends.

Provider URLs die after about 24 h (Ark deletes the video, kie's links expire), so the worker copies each
completed job's files here and the web process serves them (web/media.py). Keys are `<task_id>/<name>`;
names come from `media_name` (e.g. `video.mp4`, `last-frame.png`, `image-1.jpg`).

    LocalStore   files under MEDIA_DIR (default: `media/` beside the database); each written to a temporary
                 file in the same folder and renamed into place, so a reader never sees half a file.
    S3Store      an S3-compatible bucket (MEDIA_S3_BUCKET, MEDIA_S3_ENDPOINT_URL, MEDIA_S3_PREFIX; credentials
                 and region from the standard AWS variables); a PUT is atomic by itself.

Both the worker and the web process import this module: it imports nothing of the database layer. boto3 is
imported only when the S3 backend is chosen.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from settings import Config

DEFAULT_MAX_BYTES = 200 * 1024 * 1024
CHUNK = 64 * 1024
S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 30}
# The stored types, by the extension their names carry: the name alone tells the type when serving.
EXTENSIONS = {"video/mp4": "mp4", "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
TYPES = {ext: kind for kind, ext in EXTENSIONS.items()}
VIDEO_TYPES = frozenset({"video/mp4"})
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
# A task id (uuid4 today) and a stored name: plain characters only, so no key can leave its task's folder.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\.(?:mp4|png|jpg|webp)")


class MediaError(Exception):
    """Media could not be stored or read."""


class MediaNotFound(MediaError):
    """No such task or name in the store."""


class StorageFailed(MediaError):
    """The store itself failed (disk, bucket): worth retrying."""


def valid_key(task_id: str, name: str) -> bool:
    return bool(TASK_ID.fullmatch(task_id or "")) and bool(NAME.fullmatch(name or ""))


def _checked(task_id: str, name: str | None = None) -> None:
    if not TASK_ID.fullmatch(task_id or "") or (name is not None and not NAME.fullmatch(name or "")):
        raise MediaNotFound(f"not a stored media key: {task_id!r}/{name!r}")


def media_name(stem: str, content_type: str) -> str:
    """`video` + video/mp4 -> `video.mp4`."""
    return f"{stem}.{EXTENSIONS[content_type]}"


@dataclass(frozen=True)
class StoredMedia:
    name: str
    size: int
    content_type: str


class MediaStore(Protocol):
    """What the worker writes through and the web process (and retention) reads and deletes through."""

    def put(self, task_id: str, name: str, chunks: Iterable[bytes]) -> int:
        """Store `chunks` under task_id/name, replacing any earlier copy whole; the size stored. An exception
        from `chunks` (too large, cut off) leaves nothing behind."""

    def stat(self, task_id: str, name: str) -> StoredMedia:
        """Its size and type; MediaNotFound if absent."""

    def read(self, task_id: str, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of it, in chunks."""

    def names(self, task_id: str) -> list[str]:
        """The names stored for a task (sorted)."""

    def delete_task(self, task_id: str) -> int:
        """Remove everything stored for a task; how many files were removed (0 if none)."""


class LocalStore:
    """Files under `root`/<task_id>/<name>."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def _path(self, task_id: str, name: str | None = None) -> Path:
        _checked(task_id, name)
        folder = self.root / task_id
        return folder if name is None else folder / name

    def put(self, task_id: str, name: str, chunks: Iterable[bytes]) -> int:
        path = self._path(task_id, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".part")
        except OSError as exc:
            raise StorageFailed(f"cannot write under {path.parent}: {exc.strerror or exc}") from exc
        size = 0
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)  # atomic: readers see the old file or the new one, never half of one
        except OSError as exc:
            Path(temporary).unlink(missing_ok=True)
            raise StorageFailed(f"cannot write {path}: {exc.strerror or exc}") from exc
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return size

    def stat(self, task_id: str, name: str) -> StoredMedia:
        path = self._path(task_id, name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise MediaNotFound(f"{task_id}/{name} is not stored") from None
        except OSError as exc:
            raise StorageFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
        return StoredMedia(name, size, TYPES[name.rpartition(".")[2]])

    def read(self, task_id: str, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(task_id, name)
        try:
            handle = open(path, "rb")  # closed by _file_chunks
        except FileNotFoundError:
            raise MediaNotFound(f"{task_id}/{name} is not stored") from None
        except OSError as exc:
            raise StorageFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
        return _file_chunks(handle, start, end)

    def names(self, task_id: str) -> list[str]:
        folder = self._path(task_id)
        try:
            return sorted(p.name for p in folder.iterdir() if NAME.fullmatch(p.name))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageFailed(f"cannot list {folder}: {exc.strerror or exc}") from exc

    def delete_task(self, task_id: str) -> int:
        folder = self._path(task_id)
        count = len(self.names(task_id))
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageFailed(f"cannot delete {folder}: {exc.strerror or exc}") from exc
        return count


def _file_chunks(handle, start: int, end: int | None) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        left = None if end is None else max(0, end - start)
        while left is None or left > 0:
            chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


class S3Store:
    """Objects `<prefix><task_id>/<name>` in an S3-compatible bucket, with their content type."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, prefix: str = "", client=None):
        self.bucket, self.prefix = bucket, prefix
        if client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            client = boto3.client("s3", endpoint_url=endpoint_url or None,
                                  config=BotoConfig(**S3_TIMEOUTS, retries={"max_attempts": 3, "mode": "standard"}))
        self.client = client

    def _key(self, task_id: str, name: str | None = None) -> str:
        _checked(task_id, name)
        return f"{self.prefix}{task_id}/{name or ''}"

    def _failed(self, what: str, exc: Exception) -> StorageFailed:
        return StorageFailed(f"S3 {what} in bucket {self.bucket} failed: {exc}")

    def put(self, task_id: str, name: str, chunks: Iterable[bytes]) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(task_id, name)
        # Spooled to a local temporary file first: the size cap and a cut-off download end here, and the upload
        # (multipart when large) starts only with the whole file in hand, so the bucket never holds half of one.
        with tempfile.TemporaryFile() as spool:
            size = 0
            for chunk in chunks:
                spool.write(chunk)
                size += len(chunk)
            spool.seek(0)
            try:
                self.client.upload_fileobj(spool, self.bucket, key,
                                           ExtraArgs={"ContentType": TYPES[name.rpartition(".")[2]]})
            except (BotoCoreError, ClientError) as exc:
                raise self._failed(f"upload of {key}", exc) from exc
        return size

    def stat(self, task_id: str, name: str) -> StoredMedia:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(task_id, name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise MediaNotFound(f"{task_id}/{name} is not stored") from None
            raise self._failed(f"head of {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._failed(f"head of {key}", exc) from exc
        return StoredMedia(name, int(head["ContentLength"]), TYPES[name.rpartition(".")[2]])

    def read(self, task_id: str, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(task_id, name)
        wanted = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key, Range=wanted)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise MediaNotFound(f"{task_id}/{name} is not stored") from None
            raise self._failed(f"read of {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._failed(f"read of {key}", exc) from exc
        return _body_chunks(answer["Body"])

    def _listed(self, task_id: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        folder = self._key(task_id)
        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                keys += [item["Key"] for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise self._failed(f"listing of {folder}", exc) from exc
        return keys

    def names(self, task_id: str) -> list[str]:
        return sorted(name for key in self._listed(task_id) if NAME.fullmatch(name := key.rpartition("/")[2]))

    def delete_task(self, task_id: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = self._listed(task_id)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise self._failed(f"delete of {task_id}/", exc) from exc
        return len(keys)


def _body_chunks(body) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def media_dir(config: Config) -> Path:
    """MEDIA_DIR, or `media/` beside the database file."""
    configured = config.get("components.media.dir")
    if configured:
        return Path(configured)
    return Path(str(config.get("components.main.databasePath", "data/app.db"))).parent / "media"


def max_bytes(config: Config) -> int:
    return int(config.get("components.media.maxBytes", DEFAULT_MAX_BYTES))


def media_store(config: Config) -> MediaStore:
    """The configured backend: S3 when MEDIA_S3_BUCKET is set, else local disk."""
    bucket = config.get("components.media.s3.bucket")
    if bucket:
        return S3Store(str(bucket), config.get("components.media.s3.endpointUrl"),
                       str(config.get("components.media.s3.prefix", "")))
    return LocalStore(media_dir(config))
