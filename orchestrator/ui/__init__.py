"""The web UI of the orchestrator: three static files served by the API process.

``mount_ui(app)`` adds ``GET /`` (a redirect to ``/ui/``), ``GET /ui/`` (the page) and
``GET /ui/app.js`` / ``app.css`` / ``icon.svg``. The page is plain HTML and one vanilla JavaScript
file, with no build step and nothing vendored: the script asks for the API token once,
keeps it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer`` to the
same REST API scripts use (``/api``). It shows the jobs list and, per job, the three
phases the way SMS shows them: inventory, transfer (live counters by polling, the error
list, reconciliation, CSV logs) and cutover (stages with progress).

The static files hold no data and no secret, so they are served without the token; every
number on the page comes from the token-protected API. Each answer carries a strict
Content-Security-Policy (scripts and styles from this origin only, no inline script,
no framing) and ``no-store`` caching. This module must never embed a token or any job
data in what it serves, and the script must never put the token in a URL or render
server data as HTML (it only sets ``textContent``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse

STATIC = Path(__file__).resolve().parent / "static"

# The only files served, with their media types: a fixed list, so no path from a request
# ever reaches the file system.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _static(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type=FILES[name], headers=SECURITY_HEADERS)


def mount_ui(app: FastAPI) -> None:
    """Serve the web UI from ``app``: ``/`` redirects to ``/ui/``, which loads the page."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        """The UI lives at /ui/."""
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    def page() -> FileResponse:
        """The single page of the UI."""
        return _static("index.html")

    @app.get("/ui/app.js", include_in_schema=False)
    def script() -> FileResponse:
        """The UI's script."""
        return _static("app.js")

    @app.get("/ui/app.css", include_in_schema=False)
    def stylesheet() -> FileResponse:
        """The UI's stylesheet."""
        return _static("app.css")

    @app.get("/ui/icon.svg", include_in_schema=False)
    @app.get("/favicon.ico", include_in_schema=False)
    def icon() -> FileResponse:
        """The UI's icon (browsers also ask for /favicon.ico)."""
        return _static("icon.svg")
