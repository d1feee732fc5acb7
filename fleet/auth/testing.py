"""API clients signed in as a given user, for the tests and the benches: a user record (no password:
it cannot sign in with one) and a token from the app's own key, sent as a bearer header.

    api = ops_client(create_app(store))          # the whole fleet
    crew = client_as(app, "crew-a", "crew", kits=["k1"])
"""

from __future__ import annotations

from fleet.auth.users import Role


def token_as(app, name: str, role: Role = "ops", kits=(), venues=()) -> str:
    """Create (or update) the user and return a token for them, signed with the app's key."""
    auth = app.state.auth
    user = auth.users.put(name, role, kits=kits, venues=venues)
    return auth.token_for(user)


def client_as(app, name: str, role: Role = "ops", kits=(), venues=(), **kwargs):
    """A fastapi TestClient signed in as that user."""
    from fastapi.testclient import TestClient

    client = TestClient(app, **kwargs)
    client.headers["Authorization"] = f"Bearer {token_as(app, name, role, kits, venues)}"
    return client


def ops_client(app, name: str = "ops-test", **kwargs):
    """A fastapi TestClient signed in as an ops user (sees and may change everything)."""
    return client_as(app, name, "ops", **kwargs)
