"""The picker web page at /ui/: Flask's templates and a small plain script, under a strict CSP."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, render_template

HERE = Path(__file__).parent
ui = Blueprint("ui", __name__, url_prefix="/ui", template_folder=str(HERE / "templates"),
               static_folder=str(HERE / "static"), static_url_path="/static")
# No inline script or style anywhere: everything comes from this service's own files. Images may come
# from S3's presigned URLs (https) as well as from this service.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
                           "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


@ui.get("/")
def page():
    """The picker: prompt, four images, pick one, refine it."""
    return render_template("ui.html")


@ui.after_request
def secure(response: Response) -> Response:
    """The page's security headers."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
