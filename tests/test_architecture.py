"""The import rules of docs/architecture.md, checked on every Python file of the repository.

The page is the one statement of the rules: its ``imports`` block says, per project package, which
other project packages it may import; here that block is parsed, and every import in every file
(module level, and inside functions, methods, classes, ``if`` and ``try`` blocks: ``ast.walk`` sees
them all) is held against it. Third-party and standard-library names are not the page's business;
relative imports stay inside their package. Code the agent loads by file path (the firmware's
timeline, through a shim) is not an import and is allowed on purpose: the page says so.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "architecture.md"

# ```imports
# fleet: kits plumbing
# popkit: *
# ```
_BLOCK = re.compile(r"^```imports[ \t]*\n(.*?)^```", re.M | re.S)
ANYTHING = None  # a package whose rule is ``*``


def parse_rules(page: str) -> dict[str, frozenset[str] | None]:
    """Package -> the project packages it may import (ANYTHING for ``*``), from the page's text."""
    found = _BLOCK.findall(page)
    if len(found) != 1:
        raise AssertionError(f"docs/architecture.md must hold exactly one ```imports fenced block "
                             f"(one line per package, 'fleet: kits plumbing'); found {len(found)}")
    rules: dict[str, frozenset[str] | None] = {}
    for n, line in enumerate(found[0].splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        pkg, sep, allowed = line.partition(":")
        pkg, names = pkg.strip(), allowed.split()
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", pkg) or pkg in rules:
            raise AssertionError(f"docs/architecture.md, imports block line {n}: {line!r} is not "
                                 f"'package: other packages' (or a package named twice)")
        rules[pkg] = ANYTHING if names == ["*"] else frozenset(names)
    for pkg, allowed in rules.items():
        unknown = (allowed or frozenset()) - rules.keys()
        if unknown:
            raise AssertionError(f"docs/architecture.md: {pkg} may import {sorted(unknown)}, "
                                 f"which the imports block does not name as packages")
    return rules


def imported_modules(source: str, filename: str = "<sample>") -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the source, wherever it sits: statements,
    and ``import_module("name")`` / ``__import__("name")`` with a literal name (the same import,
    spelled so that a statement-only check would miss it)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and _called_name(node.func) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and not node.args[0].value.startswith(".")):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def _called_name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def violations(source: str, path: str, pkg: str, rules: dict[str, frozenset[str] | None]) -> list[str]:
    """Each import in ``source`` (the file ``path`` of package ``pkg``) that the rules forbid."""
    allowed = rules[pkg]
    if allowed is ANYTHING:
        return []
    said = ", ".join(sorted(allowed)) or f"nothing outside {pkg}/"
    out = []
    for line, module in imported_modules(source, path):
        top = module.split(".")[0]
        if top in rules and top != pkg and top not in allowed:
            out.append(f"{path}:{line} imports {module} ({pkg} may import: {said})")
    return out


def rules_of_the_page() -> dict[str, frozenset[str] | None]:
    assert PAGE.is_file(), "docs/architecture.md is missing: it holds the import rules this test checks"
    return parse_rules(PAGE.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the repository

def test_the_page_names_every_package_of_the_repository():
    rules = rules_of_the_page()
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} | {"device"}  # device/: no __init__
    assert sorted(on_disk - rules.keys()) == [], "top-level packages with no rule in docs/architecture.md"
    assert sorted(p for p in rules if not (REPO / p).is_dir()) == [], "rules for folders that do not exist"


def test_no_package_imports_what_the_page_forbids():
    rules = rules_of_the_page()
    found = []
    for pkg in sorted(rules):
        if rules[pkg] is ANYTHING:
            continue
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            found += violations(path.read_text(encoding="utf-8"), rel, pkg, rules)
    assert not found, f"{len(found)} import(s) break docs/architecture.md's rules:\n" + "\n".join(found)


# ---------------------------------------------------------------- the checker itself, on samples

RULES = parse_rules("""
```imports
device:
plumbing:
kits: plumbing
fleet: kits plumbing   # a comment
agent: kits plumbing
simulators: kits plumbing agent
popkit: *
```
""")


def test_an_import_inside_a_function_is_caught():
    src = "import json\n\n\ndef f():\n    from agent import daemon\n    return daemon\n"
    assert violations(src, "fleet/x.py", "fleet", RULES) == [
        "fleet/x.py:5 imports agent (fleet may import: kits, plumbing)"]


def test_imports_in_methods_branches_and_handlers_are_all_caught():
    src = ("from __future__ import annotations\n"
           "import typing\n"
           "if typing.TYPE_CHECKING:\n"
           "    import popkit.demo as demo\n"
           "class C:\n"
           "    def m(self):\n"
           "        try:\n"
           "            import os, simulators.printer\n"
           "        except ImportError:\n"
           "            from popkit.broker import MosquittoBroker\n"
           "        with open('x'):\n"
           "            from fleet.store import Store\n"
           "        return importlib.import_module('simulators.lamp'), __import__('fleet')\n")
    assert violations(src, "agent/y.py", "agent", RULES) == [
        "agent/y.py:4 imports popkit.demo (agent may import: kits, plumbing)",
        "agent/y.py:8 imports simulators.printer (agent may import: kits, plumbing)",
        "agent/y.py:10 imports popkit.broker (agent may import: kits, plumbing)",
        "agent/y.py:12 imports fleet.store (agent may import: kits, plumbing)",
        "agent/y.py:13 imports fleet (agent may import: kits, plumbing)",
        "agent/y.py:13 imports simulators.lamp (agent may import: kits, plumbing)",
    ]


def test_allowed_imports_report_nothing():
    src = ("from __future__ import annotations\n"
           "import json, paho.mqtt.client as mqtt\n"
           "from kits.contract import encode\n"
           "from plumbing.mqtt import client_for\n"
           "from fleet.health import SEVERITY\n"  # its own package
           "from . import sibling\n"
           "from .store import Store\n"
           "def f():\n"
           "    import kits.manifest\n")
    assert violations(src, "fleet/x.py", "fleet", RULES) == []
    assert violations("import agent.link\nfrom kits import contract\n", "simulators/s.py", "simulators", RULES) == []
    # The agent's shim loads the firmware's files by path: not an import of device/, allowed.
    shim = ("import importlib.util\n"
            "spec = importlib.util.spec_from_file_location('timeline', DEVICE_LIB / 'timeline.py')\n"
            "mod = importlib.import_module('.drivers', __package__)\n")
    assert violations(shim, "agent/shim.py", "agent", RULES) == []
    assert violations("import fleet, agent, device, simulators\n", "popkit/p.py", "popkit", RULES) == []


def test_the_firmware_importing_the_contract_is_caught():
    src = "import scene\nfrom timeline import Timeline\nimport machine\nfrom kits.contract import topic\n"
    assert violations(src, "device/lib/x.py", "device", RULES) == [
        "device/lib/x.py:4 imports kits.contract (device may import: nothing outside device/)"]


def test_kits_importing_the_fleet_and_plumbing_importing_anything_are_caught():
    assert violations("import fleet.db\n", "kits/k.py", "kits", RULES) == [
        "kits/k.py:1 imports fleet.db (kits may import: plumbing)"]
    assert violations("def f():\n    import kits\n", "plumbing/p.py", "plumbing", RULES) == [
        "plumbing/p.py:2 imports kits (plumbing may import: nothing outside plumbing/)"]


def test_a_page_without_the_block_or_with_a_bad_line_is_refused_by_name():
    with pytest.raises(AssertionError, match="exactly one ```imports"):
        parse_rules("# Architecture\n\nno table here\n")
    with pytest.raises(AssertionError, match="line 2"):
        parse_rules("```imports\nfleet: kits\nfleet kits\n```\n")
    with pytest.raises(AssertionError, match=r"fleet may import \['agnet'\]"):
        parse_rules("```imports\nfleet: agnet\n```\n")
