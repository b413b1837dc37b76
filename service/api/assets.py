"""The dashboard's static files, with URLs that change whenever a file's content does (cache-busting).

The page links `static/app.js?v=<hash>`: after an upgrade no browser, proxy or CDN can serve yesterday's file.
The current hash is cached for a year (`immutable`); any other URL is revalidated on every load. Modules import
each other by relative URLs without `v`: the page's import map sends each to its versioned URL too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

#: A relative static URL in an href/src attribute of index.html (relative: the page works under a proxy prefix).
_LINK = re.compile(r'(?P<attr>\b(?:href|src)=")static/(?P<name>[^"?#]+)"')
#: index.html's (empty) import map, which index_html() fills with every module's versioned URL.
_IMPORT_MAP = re.compile(r'(?P<open><script type="importmap">)[^<]*(?P<close></script>)')


@functools.cache
def version(name: str, static_dir: Path = STATIC_DIR) -> str:
    """The first 12 hex digits of the file's SHA-256: its URL changes exactly when its bytes do."""
    return hashlib.sha256((static_dir / name).read_bytes()).hexdigest()[:12]


@functools.cache
def index_html(static_dir: Path = STATIC_DIR) -> str:
    """index.html with `?v=<version>` on every static URL it links, and on every module in its import map."""
    page = (static_dir / "index.html").read_text()
    page = _LINK.sub(lambda m: f'{m["attr"]}static/{m["name"]}?v={version(m["name"], static_dir)}"', page)
    # Keys are URLs relative to the page, as the modules' relative imports resolve, so a proxy prefix is kept.
    modules = {f"./static/{p.name}": f"./static/{p.name}?v={version(p.name, static_dir)}"
               for p in sorted(static_dir.glob("*.js"))}
    imports = json.dumps({"imports": modules})
    return _IMPORT_MAP.sub(lambda m: f'{m["open"]}{imports}{m["close"]}', page)


class VersionedStaticFiles(StaticFiles):
    """/static: a year's caching for the current versioned URL, revalidation for everything else."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        requested = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("v", [None])[-1]
        current = response.status_code in (200, 304) and requested is not None and _current(path, requested)
        response.headers["Cache-Control"] = IMMUTABLE if current else REVALIDATE
        return response


def _current(path: str, requested: str) -> bool:
    try:
        return version(path) == requested
    except OSError:
        return False
