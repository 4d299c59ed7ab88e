"""The web console: static HTML, JS and CSS served at `/console`, calling the hub's JSON API.

The files ship inside the package (`mcp_hub/console/`), need no build step, and are public:
they hold no data. The page asks the operator for an API key, keeps it in sessionStorage
and sends it with each API call, so the console sees exactly what that key may see. A strict
Content-Security-Policy allows only the hub's own scripts, styles and API.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .errors import NotFound

FILES = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
         "console.css": "text/css; charset=utf-8"}
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


async def console_root(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=308)


async def console_file(request: Request) -> Response:
    name = request.path_params.get("file") or "index.html"
    if name not in FILES:
        raise NotFound(f"no console file {name!r}")
    body = (files("mcp_hub") / "console" / name).read_bytes()
    return Response(body, media_type=FILES[name], headers=HEADERS)
