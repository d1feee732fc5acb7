"""The dependencies every router of the API uses (fleet/api/routes/):

- ``current_user``: who is asking, from the bearer token (``Authorization: Bearer``) or the
  dashboard's HttpOnly cookie; 401 without a valid one. A machine token (``pkm_...``, bearer only:
  fleet/machines/) reads as ops or a one-kit crew user, GET only, limited further by its scope.
  A change (POST, PUT, DELETE) authenticated by the cookie alone must also come from our own page
  (Origin or Referer on this host): a browser sends the cookie with requests another site makes it
  send (CSRF).
- ``require_role(...)``: 403 for a role that may never use the route (a venue user on /kits).
- ``in_scope``: every id in the path is checked against what the user sees (fleet/auth/scope.py):
  404 when it is not theirs. SCOPE_CHECKS names, for every path parameter of the API, how it is
  checked; create_app refuses a route with a parameter it does not know (check_routes), so a new
  id route cannot go unchecked.

``guard(*roles)`` gives a router both, in that order.
"""

from __future__ import annotations

from typing import Annotated, Callable
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordBearer

from fleet.auth import scope
from fleet.auth.login import Auth
from fleet.auth.tokens import BadToken
from fleet.auth.users import Role, User
from fleet.machines.model import allows as machine_allows
from fleet.machines.model import is_machine_token, scope_kit

COOKIE = "popkit_token"
TOKEN_URL = "/api/v1/auth/token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False,
                                     description="a token from POST /api/v1/auth/token (the dashboard "
                                                 "sends it as its HttpOnly cookie instead)")

# What every guarded route may answer besides its own refusals. (An id outside the user's scope is
# the route's own 404: answered as for one that does not exist.)
# JSON whatever the route's own response class (/metrics answers text, its refusals JSON).
_REFUSAL = {"application/json": {"schema": {"type": "object", "required": ["detail"],
                                            "properties": {"detail": {"type": "string"}}}}}
AUTH_RESPONSES = {401: {"description": "not signed in, or the token is invalid or expired", "content": _REFUSAL},
                  403: {"description": "the user's role may not use this route, or a change sent cross-site",
                        "content": _REFUSAL}}


def get_auth(request: Request) -> Auth:
    return request.app.state.auth


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def same_origin(request: Request) -> bool:
    """The request names this host as where it comes from (Origin, else Referer)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == (request.headers.get("host") or "").lower()


def current_user(request: Request, bearer: Annotated[str | None, Depends(oauth2_scheme)]) -> User:
    """Who is asking: 401 without a valid token."""
    token, by_cookie = bearer, False
    if not token:
        token, by_cookie = request.cookies.get(COOKIE), True
    if not token:
        raise _unauthorized("not signed in: send a bearer token from POST /api/v1/auth/token")
    if not by_cookie and is_machine_token(token):
        return _machine(request, token)
    try:
        user = get_auth(request).user_for(token)
    except BadToken:
        raise _unauthorized("invalid or expired token: sign in again") from None
    if by_cookie and request.method not in SAFE_METHODS and not same_origin(request):
        raise HTTPException(status_code=403, detail="cross-site request refused: a change signed in by the "
                                                    "cookie must come from this site's page")
    request.state.user = user  # for the audit log (fleet/auth/audit.py)
    return user


def _machine(request: Request, token: str) -> User:
    """A machine token (fleet/machines/) as the user its scope reads as: ops for metrics and read, a
    crew user of the one kit for kit:<id>; then what the scope allows of this route."""
    found = request.app.state.store.machines.check(token)
    if found is None:
        raise _unauthorized("invalid, revoked or expired machine token")
    kit = scope_kit(found.scope)
    user = User(name=f"machine:{found.name}", role="crew" if kit else "ops", kits=(kit,) if kit else (),
                machine_scope=found.scope)
    route = request.scope.get("route")
    refused = machine_allows(found.scope, request.method, getattr(route, "path", request.url.path))
    if refused:
        raise HTTPException(status_code=403, detail=refused)
    request.state.user = user
    return user


UserDep = Annotated[User, Depends(current_user)]


def require_role(*roles: Role) -> Callable[[User], User]:
    def role_allowed(user: UserDep) -> User:
        if user.role not in roles:
            raise HTTPException(status_code=403, detail=f"not for {user.role} users: this needs "
                                                        f"{' or '.join(roles)}")
        return user

    role_allowed.roles = roles  # read by docs and tests: who may use the route
    return role_allowed


def _store(request: Request):
    return request.app.state.store


# How each path parameter of the API is checked against the user's scope. None: checked otherwise,
# as the comment says.
SCOPE_CHECKS: dict[str, Callable[[User, Request, str], None] | None] = {
    "kit_id": lambda user, _r, v: scope.kit_visible(user, v),
    "device_id": lambda user, r, v: scope.device_visible(user, _store(r), v),
    "alert_id": lambda user, r, v: scope.alert_visible(user, _store(r), v),
    "venue_id": lambda user, _r, v: scope.venue_visible(user, v),
    # Parts of a venue: reached only under their venue_id, which is checked.
    "zone_id": None, "scene_id": None, "schedule_id": None, "override_id": None,
    # Events are no one's object: the event routes scope what they answer to the user's kits' scanners
    # (fleet/api/routes/events.py, revocations.py).
    "event_id": None,
    # Users: the routes are for ops only.
    "name": None,
    # Releases and rollouts (fleet/updates/): the routes are for ops only.
    "release_id": None, "rollout_id": None,
    # A kit's catalog (fleet/retail/): a SKU is reached only under its kit_id, which is checked.
    "sku": None,
    # A kit's orders (fleet/retail/): reached only under their kit_id, which is checked.
    "order_id": None,
    # Machine tokens (fleet/machines/): the routes are for ops only.
    "token_id": None,
    # Notification targets (fleet/notify/): the routes are for ops only.
    "target_id": None,
}


def in_scope(request: Request, user: UserDep) -> None:
    """404 for any id in the path the user may not see. A route narrower than its router (ops only)
    answers 403 first, whatever the ids: its role check would anyway, and comes after us."""
    roles = route_roles(request.scope["route"]) if "route" in request.scope else None
    if roles is not None and user.role not in roles:
        raise HTTPException(status_code=403, detail=f"not for {user.role} users: this needs {' or '.join(roles)}")
    for param, value in request.path_params.items():
        check = SCOPE_CHECKS[param]  # KeyError: a route check_routes would have refused
        if check is not None:
            check(user, request, value)


def guard(*roles: Role) -> list:
    """A router's dependencies: signed in, one of ``roles``, every id in the path in scope."""
    return [Depends(require_role(*roles)), Depends(in_scope)]


def api_routes(routes) -> list:
    """The API routes of an app's ``routes``, each with its full path, methods, param_convertors and
    dependant. (FastAPI 0.13x+ keeps an included router as one entry: its routes, with the prefix and
    the router's dependencies applied, come from fastapi.routing.iter_route_contexts.)"""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: include_router copied the routes into app.routes
        return [r for r in routes if isinstance(r, APIRoute)]
    return [rc for rc in iter_route_contexts(routes) if isinstance(rc.original_route, APIRoute)]


def route_roles(route) -> tuple[Role, ...] | None:
    """The roles that may use ``route`` (the narrowest require_role on it); None: public."""
    found = None
    for dep in route.dependant.dependencies:
        roles = getattr(dep.call, "roles", None)
        if roles is not None:
            found = roles if found is None else tuple(r for r in found if r in roles)
    return found


def check_routes(routes, public: set[str]) -> None:
    """Every API route but the public ones is guarded, and every path parameter has a scope check:
    raises RuntimeError naming the route otherwise (at create_app, so a new route cannot skip it)."""
    for route in api_routes(routes):
        if route.path in public:
            continue
        calls = {d.call for d in route.dependant.dependencies}
        if route_roles(route) is None or in_scope not in calls:
            raise RuntimeError(f"{sorted(route.methods)} {route.path} is not guarded: give its router "
                               f"dependencies=guard(...) (fleet/auth/deps.py)")
        unknown = [name for name in route.param_convertors if name not in SCOPE_CHECKS]
        if unknown:
            raise RuntimeError(f"{route.path}: path parameter(s) {unknown} have no scope check in SCOPE_CHECKS "
                               f"(fleet/auth/deps.py)")


def optional_user(request: Request) -> User | None:
    """The caller if signed in, else None: for the public routes that show signed-in callers more.
    (Read without the OAuth2 scheme, so the OpenAPI schema keeps such a route public.)"""
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    try:
        return current_user(request, bearer if scheme.lower() == "bearer" else None)
    except HTTPException:
        return None
