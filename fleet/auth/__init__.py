"""Who may use the fleet API, and what they may see.

- ``secret``: the key signing the tokens (refused when missing or a placeholder, outside demo mode);
- ``passwords``: argon2id hashes;
- ``tokens``: signed, expiring bearer tokens naming a user and their token generation;
- ``users``: the user records (role ops | crew | venue, the kits or venues they see) and their storage;
- ``scope``: what a user may see: a kit, a device, an alert, a venue;
- ``deps``: the FastAPI dependencies every router uses (who is asking, may their role use the route,
  is each id in the path theirs: 404 when not, as if it did not exist);
- ``throttle``: a growing wait after failed logins, per user name;
- ``audit``: every change made through the API recorded with who made it;
- ``testing``: API clients signed in as a given user, for tests and benches.
"""


class AuthError(Exception):
    """Base of the errors of fleet.auth."""
