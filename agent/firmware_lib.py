"""The firmware's own lighting code, run under CPython: device/lib/jscan.py, scene.py and timeline.py.

The agent's lights follow the same compiled timeline as a lighting controller (docs/lighting-timeline.md).
Rather than keep a CPython copy of the parser and the evaluator, which would have to be kept equal by
hand, the agent loads the firmware's files as they are and gives them what MicroPython has and CPython
lacks:

* ``micropython.const`` (the identity: the compiler's inlining hint, no meaning at run time);
* ``time.ticks_ms``/``ticks_add``/``ticks_diff``: a millisecond counter wrapping at 2**30, as on the
  ESP32 (scene.py's Fader counts on ticks_diff being wrap-safe);
* ``json.loads`` of a memoryview: MicroPython's reads a buffer in place, CPython's wants bytes; and,
  as MicroPython's, it refuses NaN and Infinity.

The files' top-level imports (``from jscan import JsonScan``, ``from micropython import const``, ...)
are resolved to each other and to those shims by a private ``__import__`` in each module's builtins:
nothing named ``timeline``, ``scene``, ``jscan`` or ``micropython`` enters ``sys.modules``, and the rest
of the process sees CPython's own ``time`` and ``json``. The modules are this module's attributes
``jscan``, ``scene`` and ``timeline``.

Where the files are: beside this package in a checkout (``device/lib``), or, for an installed agent
(a wheel on the Pi), where the wheel's data files put them, ``<prefix>/share/popkit/device/lib``
(pyproject.toml's ``data-files``).
"""

from __future__ import annotations

import builtins
import json as _json
import sysconfig
import time as _time
import types
from pathlib import Path
from typing import Any

MODULES = ("jscan", "scene", "timeline")  # in the order they import each other
INSTALLED = Path("share", "popkit", "device", "lib")  # under the install prefix (pyproject.toml data-files)
TICKS_PERIOD = 1 << 30  # the ESP32 port's: its ticks_ms wraps after ~12.4 days
_TICKS_MAX = TICKS_PERIOD - 1
_TICKS_HALF = TICKS_PERIOD // 2


class FirmwareMissing(ImportError):
    pass


def lib_dirs() -> list[Path]:
    """Where the firmware's lib may be, most likely first: a checkout, then the install prefixes."""
    found = [Path(__file__).resolve().parent.parent / "device" / "lib"]
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):  # pip's, pip --user's
        found.append(Path(sysconfig.get_path("data", scheme)) / INSTALLED)
    return found


def lib_dir() -> Path:
    for d in lib_dirs():
        if all((d / f"{name}.py").is_file() for name in MODULES):
            return d
    raise FirmwareMissing("the firmware's device/lib (" + ", ".join(f"{m}.py" for m in MODULES) + ") is not in "
                          + " nor ".join(str(d) for d in lib_dirs()) + ": reinstall PopKit (its wheel carries them)")


# ---------------------------------------------------------------- what MicroPython has

def const(x: Any) -> Any:
    return x


def ticks_ms() -> int:
    return int(_time.monotonic() * 1000) & _TICKS_MAX


def ticks_add(ticks: int, delta: int) -> int:
    return (ticks + delta) & _TICKS_MAX


def ticks_diff(a: int, b: int) -> int:
    """a - b for two ticks_ms() values less than half a period apart, across a wrap."""
    return ((a - b + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF


def _no_constant(name: str) -> Any:
    raise ValueError(f"syntax error in JSON ({name})")


def _loads(s: Any) -> Any:
    return _json.loads(bytes(s) if isinstance(s, memoryview) else s, parse_constant=_no_constant)


def _shim(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(f"{__name__}.{name}")
    mod.__dict__.update(attrs)
    return mod


def _time_shim() -> types.ModuleType:
    mod = _shim("time", **{k: v for k, v in vars(_time).items() if not k.startswith("__")})
    mod.__dict__.update(ticks_ms=ticks_ms, ticks_add=ticks_add, ticks_diff=ticks_diff,
                        sleep_ms=lambda ms: _time.sleep(ms / 1000), sleep_us=lambda us: _time.sleep(us / 1e6))
    return mod


# ---------------------------------------------------------------- loading

def load(folder: Path) -> dict[str, types.ModuleType]:
    """The firmware's modules from ``folder``, by name (each load is a fresh, independent set)."""
    resolved: dict[str, types.ModuleType] = {
        "micropython": _shim("micropython", const=const),
        "time": _time_shim(),
        "json": _shim("json", loads=_loads, dumps=_json.dumps),
    }

    def _import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 - __import__'s own names
        if level == 0 and name in resolved:
            return resolved[name]
        return builtins.__import__(name, globals, locals, fromlist, level)

    own_builtins = dict(vars(builtins), __import__=_import)
    for name in MODULES:
        path = folder / f"{name}.py"
        mod = types.ModuleType(f"{__name__}.{name}")
        mod.__file__ = str(path)
        mod.__dict__["__builtins__"] = own_builtins
        exec(compile(path.read_bytes(), str(path), "exec"), mod.__dict__)  # noqa: S102 - the firmware's own file
        resolved[name] = mod
    return resolved


_modules = load(lib_dir())
jscan: Any = _modules["jscan"]
scene: Any = _modules["scene"]
timeline: Any = _modules["timeline"]
