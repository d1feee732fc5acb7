"""The agent's ``fw``, ``agent-<version>`` of the installed package, for every process that speaks as
the agent (the daemon, ``kit up``, ``kit down``): after a self-update they all say the release that
runs (the release build refuses a version the package does not report)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

FALLBACK = "agent-0.1.0"  # a checkout run without installing it (pyproject.toml's version)


def agent_fw() -> str:
    try:
        return f"agent-{version('popkit')}"
    except PackageNotFoundError:
        return FALLBACK
