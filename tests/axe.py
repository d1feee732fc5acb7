"""axe-core (npm's, vendored in tests/vendor/axe-core/) run in a page of the suite's Chromium: the
accessibility check every browser test can make of what it has drawn. The fleet's pages are all
checked by tests/test_dashboard_a11y.py; pages drawn only by one test's data (a rollout, the till on
the kit) check themselves with :func:`assert_no_serious_violation`."""

from __future__ import annotations

from pathlib import Path

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = {"serious", "critical"}


def run_axe(page) -> list[dict]:
    """axe's violations on the page as it is now (every rule axe runs by default)."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, { resultTypes: ['violations'] })")
    return result["violations"]


def describe(violations: list[dict]) -> str:
    return "\n".join(f"  {v['impact']}: {v['id']} ({v['help']}): "
                     + "; ".join(" ".join(n["target"]) if isinstance(n["target"], list) else str(n["target"])
                                 for n in v["nodes"][:5]) for v in violations)


def assert_no_serious_violation(page) -> None:
    blocking = [v for v in run_axe(page) if v["impact"] in BLOCKING]
    assert not blocking, "serious or critical accessibility violations:\n" + describe(blocking)
