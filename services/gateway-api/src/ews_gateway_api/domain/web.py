"""The web's entry points: ``GET /`` (to the role's home, or the sign-in page) and ``/static/`` (the
pages' files, cached a week under content-hashed URLs; compressed by the app's compression config)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from ..guards import current_role, public
from ..web import STATIC_DIR, STATIC_MAX_AGE, STATIC_PATH


@get("/", guards=[public], operation_id="webIndex", include_in_schema=False, tags=["web"])
async def index(request: Request[Any, Any, Any]) -> Redirect:
    from ..pages._page import home_of  # pages import the domain modules, not the other way round

    return Redirect(
        path=home_of(current_role(request)), status_code=303, headers={"Cache-Control": "no-store"}
    )


MAX_NAME = 255  # bytes in a file name on the file systems the product runs on


def sane_static_path(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A static file's path that no file can have (a NUL byte, a name longer than a file system allows)
    is a 404, never a 500 from the file system call."""
    path = connection.scope.get("path", "")
    if "\x00" in path or any(len(part.encode()) > MAX_NAME for part in path.split("/")):
        raise NotFoundException()


static_files = create_static_files_router(
    path=STATIC_PATH,
    directories=[STATIC_DIR],
    name="web-static",
    guards=[public, sane_static_path],
    cache_control=CacheControlHeader(public=True, max_age=STATIC_MAX_AGE),
    include_in_schema=False,
    tags=["web"],
)

router = Router(path="/", route_handlers=[index, static_files])
