"""The page for people: ``GET /`` is service/static/index.html, ``GET /static/<file>`` its scripts,
styles and samples, and ``GET /docs`` BentoML's API page, which used to be at ``/``.

Only the files found under service/static/ when the service starts are served, looked up by their
exact path, so no request can name another file. Every other request, and every file not found,
goes on to the app behind, whose answers (a 404 or 405 too) are the service's usual JSON.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS = "/docs"
# Nothing but this origin: the page works offline and nothing reaches it from elsewhere.
HEADERS = {"content-security-policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'",
           "x-content-type-options": "nosniff", "cache-control": "no-cache"}


def static_files(root: Path = STATIC_DIR) -> dict[str, Path]:
    """URL path -> file, for the page at ``/`` and every file under ``root`` at ``/static/...``."""
    files = {"/static/" + p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    return {"/": root / "index.html", **files}


class Page:
    """ASGI middleware serving the page, its files and the docs route in front of ``app``."""

    def __init__(self, app: Any, root: Path = STATIC_DIR) -> None:
        self.app, self.files = app, static_files(root)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path = scope["path"]
            if path == DOCS:  # BentoML's page still loads ./static_content and ./docs.json from here
                return await self.app({**scope, "path": "/", "raw_path": b"/"}, receive, send)
            file = self.files.get(path)
            if file is not None:
                return await FileResponse(file, headers=HEADERS)(scope, receive, send)
        return await self.app(scope, receive, send)
