"""For people: the web page at ``/``, the API's description at ``/openapi.json`` and readable at ``/docs``.

Open like the probes (ocr_api/access.py): a browser loads a page, its scripts and styles without headers, so no
key can come with them; the page asks for a key itself and sends it with every API call it makes. None of these
routes reads or runs anything of a user's: the description is public in the repository anyway.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template

from ocr_api.http import openapi
from ocr_api.http.state import current_service
from ocr_api.prompts import TASKS

web = Blueprint("web", __name__, static_folder="static", static_url_path="/static", template_folder="templates")
# The page runs only its own files: no inline script, nothing from elsewhere, so even model output that slipped
# past the sanitizer could not run. Images: the service's data URLs and the page's own downloads (blob:).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _description() -> dict[str, Any]:
    """Built once per app from its url map and settings (both fixed once the app serves)."""
    if "openapi" not in current_app.extensions:
        service = current_service()
        current_app.extensions["openapi"] = openapi.describe(current_app, service.settings, service.engine.modes)
    return current_app.extensions["openapi"]


@web.after_request
def protect(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@web.get("/")
def page():
    """Drop files, pick the task, see each page's text, markdown and boxes."""
    service = current_service()
    config = {  # the template's choices, and the limit past which the script sends an image as a job
        "keys_required": bool(service.settings.api_key_list),
        "tasks": list(TASKS),
        "modes": list(service.engine.modes),
        "max_upload_mb": service.settings.max_upload_mb,
        "model": service.engine.model_id,
    }
    return render_template("page.html", config=config)


@web.get("/openapi.json")
def openapi_document():
    return jsonify(_description())


@web.get("/docs")
def api_docs():
    """The description as one readable page, rendered here: no viewer from a CDN."""
    return render_template("api_docs.html", spec=_description())
