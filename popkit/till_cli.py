"""The crew's kit logins for the till page, made at the Pi's console (docs/till.md):

    popkit till login add NAME [--reset]     prints the new passphrase once; only its hash is kept
    popkit till login list
    popkit till login remove NAME            its sessions end at their next request

The logins live in the agent's data folder (``till-logins.json``, 0600), found as the agent finds
it: ``--data``, else ``POPKIT_AGENT_DATA`` in the environment or the settings file (``--env``,
default /etc/popkit/agent.env), else /var/lib/popkit. The running agent sees a change at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.settings import SERVICE_DATA, SettingsFileError, load_settings
from agent.till.logins import LoginError, Logins, logins_path


def _logins(args: argparse.Namespace) -> Logins:
    settings = load_settings(Path(args.env) if args.env else None, {"agent_data": args.data},
                             default_data=SERVICE_DATA)
    return Logins(logins_path(settings.agent_data))


def _run(args: argparse.Namespace) -> int:
    try:
        logins = _logins(args)
        if args.login_command == "add":
            passphrase = logins.add(args.name, replace=args.reset)
            print(f"till login {args.name!r} {'has a new passphrase' if args.reset else 'made'}; its passphrase "
                  f"(shown this once, kept nowhere in clear):\n\n    {passphrase}\n")
            print("sign in on the till page with it; `popkit till login add NAME --reset` makes a new one")
        elif args.login_command == "remove":
            logins.remove(args.name)
            print(f"till login {args.name!r} removed; a phone signed in with it is signed out at its next tap")
        else:
            names = logins.names()
            if not names:
                print(f"no till logins in {logins.path} (popkit till login add NAME makes one)")
            for entry in names:
                made = entry.get("created_ms")
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(made / 1000)) if made else "?"
                print(f"{entry['name']}\tmade {when}")
    except (LoginError, SettingsFileError) as exc:
        print(f"popkit till login: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"popkit till login: {exc.filename}: permission denied (run with sudo on the Pi)", file=sys.stderr)
        return 2
    return 0


def add_parsers(sub) -> None:
    """``popkit till login ...`` into ``popkit``'s subparsers."""
    till = sub.add_parser("till", help="the till page on the kit (docs/till.md)"
                          ).add_subparsers(dest="till_command", required=True)
    login = till.add_parser("login", help="the crew's kit logins for the till page"
                            ).add_subparsers(dest="login_command", required=True)
    add = login.add_parser("add", help="make a login and print its passphrase once")
    add.add_argument("name", help="lowercase, e.g. sam or stall-2")
    add.add_argument("--reset", action="store_true", help="give an existing login a new passphrase")
    rm = login.add_parser("remove", help="remove a login (its phones are signed out)")
    rm.add_argument("name")
    ls = login.add_parser("list", help="the logins (names only)")
    for p in (add, rm, ls):
        p.add_argument("--data", help="the agent's data folder (default: as the agent's settings say, "
                       "else /var/lib/popkit)")
        p.add_argument("--env", metavar="FILE", help="the agent's settings file (default /etc/popkit/agent.env)")
        p.set_defaults(func=_run)
