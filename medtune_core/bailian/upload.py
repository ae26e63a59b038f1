"""The file upload as a streamed multipart POST: memory stays flat however large the part is.

The SDK's ``Files.upload`` builds the whole multipart body in memory (requests encodes ``files=`` by reading each
file whole): a 294 MB part costs ~600 MB of RAM. This sends the same request the SDK sends (``POST {base}/files``,
form fields ``files`` and ``descriptions``, bearer key, workspace header) with httpx, which streams a file field
in 64 KiB chunks and declares its length from the file size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

WORKSPACE_HEADER = "X-DashScope-WorkSpace"


@dataclass
class UploadAnswer:
    """What the server said: the HTTP status and the JSON body (``{}`` when it was not JSON)."""

    status_code: int
    body: dict[str, Any]
    text: str


def post_file(
    base_url: str,
    path: Path,
    *,
    name: str,
    description: str | None,
    api_key: str,
    workspace: str | None,
    timeout: float,
) -> UploadAnswer:
    """Stream ``path`` to ``{base_url}/files`` under ``name``; transport errors propagate as httpx raises them."""
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json; charset=utf-8"}
    if workspace:
        headers[WORKSPACE_HEADER] = workspace
    data = {"descriptions": description} if description is not None else None
    with open(path, "rb") as fh, httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0))) as http:
        rsp = http.post(
            base_url.rstrip("/") + "/files",
            headers=headers,
            data=data,
            files={"files": (name, fh, "application/octet-stream")},
        )
    try:
        body = rsp.json()
    except ValueError:
        body = {}
    return UploadAnswer(rsp.status_code, body if isinstance(body, dict) else {}, rsp.text[:500])
