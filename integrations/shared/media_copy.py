"""Copy a completed job's media from the provider's URLs into our store (integrations/shared/media.py).

The rules of one download: http(s) only; (connect, read) timeouts and an overall deadline; a Content-Length
above the cap refused before any byte is read, and the stream cut off once it passes the cap; the type both
declared (Content-Type) and seen in the first bytes must be one the field expects (video/mp4 for a video,
PNG, JPEG or WebP for images and the last frame). `application/octet-stream`, or no Content-Type at all, is
taken when the bytes show an expected type (some CDNs label everything so).

Two kinds of failure: `MediaRefused` (this file will never be stored: too large, wrong type, gone at the
provider) is noted in the result and the rest goes on; `DownloadFailed` and `StorageFailed` (a timeout, a 5xx,
a full disk, a bucket down) are raised so the activity is retried.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import requests

from integrations.shared.media import (
    CHUNK,
    IMAGE_TYPES,
    VIDEO_TYPES,
    MediaError,
    MediaNotFound,
    MediaStore,
    media_name,
)

TIMEOUT = (3.05, 30)  # connect, and the longest silence between two reads
DEADLINE_SECONDS = 600.0  # one file, start to end: a server that trickles bytes cannot hold the activity forever
# result field -> (stem of the stored name, the types it may have)
FIELDS: dict[str, tuple[str, frozenset[str]]] = {
    "videoUrl": ("video", VIDEO_TYPES),
    "lastFrameUrl": ("last-frame", IMAGE_TYPES),
    "imageUrls": ("image", IMAGE_TYPES),
}
UNTYPED = frozenset({"", "application/octet-stream", "binary/octet-stream"})  # the bytes decide


class MediaRefused(MediaError):
    """This file will never be stored (too large, wrong type, gone): noted, not retried."""


class DownloadFailed(MediaError):
    """The download failed in a way that may pass (timeout, connection, 5xx, 429, cut off): retried."""


def sniff(head: bytes) -> str | None:
    """The type the first bytes show, among the ones we store."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    return None


def download(url: str, expected: frozenset[str], limit: int, session: requests.Session | None = None,
             timeout: tuple[float, float] = TIMEOUT, deadline_seconds: float = DEADLINE_SECONDS,
             ) -> tuple[str, Iterator[bytes]]:
    """Open `url`: (its checked content type, its bytes in chunks). The chunks raise MediaRefused past `limit`
    and DownloadFailed on a timeout, a cut-off or the deadline; the caller must exhaust or close them."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise MediaRefused(f"not an http(s) URL: {str(url)[:200]!r}")
    began = time.monotonic()
    try:
        answer = (session or requests).get(url, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise DownloadFailed(f"GET {_short(url)}: {type(exc).__name__}: {exc}") from exc
    try:
        if answer.status_code >= 500 or answer.status_code in (408, 425, 429):
            raise DownloadFailed(f"GET {_short(url)} answered {answer.status_code}")
        if answer.status_code != 200:  # 403/404/410: an expired or deleted link does not come back
            raise MediaRefused(f"GET {_short(url)} answered {answer.status_code}")
        declared = answer.headers.get("Content-Type", "").split(";")[0].strip().lower()
        length = answer.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise MediaRefused(f"{_short(url)} is {int(length)} bytes, above MEDIA_MAX_BYTES ({limit})")
        chunks = _capped(answer, url, limit, began + deadline_seconds, deadline_seconds)
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= 12:
                break
        seen = sniff(head)
        wanted = " or ".join(sorted(expected))
        if declared not in expected and declared not in UNTYPED:
            raise MediaRefused(f"{_short(url)} is {declared or 'untyped'}, expected {wanted}")
        if seen not in expected or (declared in expected and declared != seen):
            raise MediaRefused(f"{_short(url)} is declared {declared or 'untyped'} but its bytes are "
                               f"{seen or 'of no known type'}, expected {wanted}")
    except BaseException:
        answer.close()
        raise

    def stream() -> Iterator[bytes]:
        try:
            if head:
                yield head
            yield from chunks
        finally:
            answer.close()

    return seen, stream()


def _capped(answer: requests.Response, url: str, limit: int, deadline: float, seconds: float) -> Iterator[bytes]:
    size = 0
    try:
        for chunk in answer.iter_content(CHUNK):
            size += len(chunk)
            if size > limit:
                raise MediaRefused(f"{_short(url)} passed MEDIA_MAX_BYTES ({limit}) while downloading")
            if time.monotonic() > deadline:
                raise DownloadFailed(f"{_short(url)} took longer than {seconds:g}s to download")
            yield chunk
    except requests.RequestException as exc:  # a read timeout or a connection cut mid-body
        raise DownloadFailed(f"GET {_short(url)} broke off after {size} bytes: {type(exc).__name__}: {exc}") from exc
    length = answer.headers.get("Content-Length")
    if length is not None and length.isdigit() and size < int(length):
        raise DownloadFailed(f"GET {_short(url)} ended after {size} of {length} bytes")


def _short(url: str) -> str:
    """A URL for messages, without its query (signed URLs carry credentials there)."""
    return url.split("?", 1)[0][:200]


def copy_media(store: MediaStore, task_id: str, result: dict[str, Any], limit: int,
               session: requests.Session | None = None, timeout: tuple[float, float] = TIMEOUT,
               ) -> tuple[dict[str, Any], list[str]]:
    """Store every media URL of `result`: (the `media` dict of stored names, notes on files refused).

    Idempotent: names depend only on the field, its position and the type, and a file already stored under
    its stem (by an earlier try of this activity) is kept, not fetched again. Transient failures raise.
    """
    media: dict[str, Any] = {}
    notes: list[str] = []
    stored = set(store.names(task_id))
    for field, (stem, expected) in FIELDS.items():
        value = result.get(field)
        if value is None:
            continue
        if isinstance(value, list):
            names = []
            for index, url in enumerate(value, start=1):
                name = _copy_one(store, task_id, f"{stem}-{index}", url, expected, limit, (session, timeout),
                                 stored, notes, f"{field}[{index - 1}]")
                if name:
                    names.append(name)
            if names:
                media[field] = names
        else:
            name = _copy_one(store, task_id, stem, value, expected, limit, (session, timeout), stored, notes, field)
            if name:
                media[field] = name
    return media, notes


def _copy_one(store: MediaStore, task_id: str, stem: str, url: Any, expected: frozenset[str], limit: int,
              how: tuple[requests.Session | None, tuple[float, float]], stored: set[str], notes: list[str],
              label: str) -> str | None:
    kept = next((n for n in sorted(stored) if n.rpartition(".")[0] == stem), None)
    if kept is not None:
        return kept
    try:
        content_type, chunks = download(url, expected, limit, *how)
        name = media_name(stem, content_type)
        store.put(task_id, name, chunks)
    except MediaRefused as exc:
        notes.append(f"{label}: {exc}")
        return None
    except MediaNotFound as exc:  # a task id the store cannot key
        notes.append(f"{label}: {exc}")
        return None
    return name
