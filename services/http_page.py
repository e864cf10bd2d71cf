"""The browser page at ``/`` (services/web: plain HTML, JS and CSS, no build step, nothing from the
network): it lists the served models and draws what the typed routes answer (services/http_typed.py)
for an uploaded image or a seed. The page and its files are open (they hold no data); what they
fetch needs the server's token when it has tokens (the page asks for one and keeps it in the
browser's local storage)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

from models.visualize import class_color

WEB = Path(__file__).with_name("web")
PALETTE_SIZE = 256  # label ids the page colours (a uint8 label map's range)
PAGE_CONFIG = {"palette": [class_color(label) for label in range(PALETTE_SIZE)]}


def add_page(app: FastAPI) -> None:
    """``GET /``, ``GET /ui/config.json`` (the class colours the server draws with, so the page's
    boxes and masks match its PNG pictures) and the page's files under ``/ui/``."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/ui/config.json", include_in_schema=False)
    async def config() -> dict:
        return PAGE_CONFIG

    app.mount("/ui", StaticFiles(directory=str(WEB)), name="ui")
