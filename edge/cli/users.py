"""``bdi users``: the named users of the REST API and their roles (docs/AUTH.md), in
``<BDI_MODELS_DIR>/.users.json``. Passwords are read from a prompt (twice) or, for scripts,
one line of stdin (``--password-stdin``); they are never taken as an argument, where other
users of the machine could read them. Bad input: ``bdi: error: ...``, exit status 2."""

from __future__ import annotations

import argparse
import getpass
import sys

import orjson

from configs.settings import load_settings
from store.users import MIN_PASSWORD, ROLES, Users, check_name, check_password, check_role

ROLE_HELP = f"{' or '.join(ROLES)} (an operator views and reviews; an engineer does all)"


def add_users_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    users = sub.add_parser(
        "users",
        help="named users of the REST API and their roles",
        description="Add, list and change the users who log in to the REST API "
        "(POST /auth/login) and their roles; see docs/AUTH.md. Once there is a user, the "
        "API answers only logged-in users and the X-API-Key.",
    )
    what = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    def named(action: str, help_text: str) -> argparse.ArgumentParser:
        p = what.add_parser(action, help=help_text)
        p.add_argument("name", help="user name: a-z 0-9 . _ -, at most 64 characters")
        return p

    add = named("add", "add a user (the password is asked twice)")
    add.add_argument("--role", required=True, help=ROLE_HELP)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.set_defaults(func=cmd_add)

    listing = what.add_parser("list", help="every user, its role, when added, whether disabled")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(func=cmd_list)

    passwd = named("passwd", "set a user's password")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    passwd.set_defaults(func=cmd_passwd)

    role = named("role", "change a user's role")
    role.add_argument("role", help=ROLE_HELP)
    role.set_defaults(func=cmd_role)

    for action, flag, text in (
        ("disable", True, "refuse a user's logins and end its sessions"),
        ("enable", False, "let a disabled user log in again"),
    ):
        p = named(action, text)
        p.set_defaults(func=cmd_disable, disabled=flag)

    named("remove", "remove a user").set_defaults(func=cmd_remove)


def _users() -> Users:
    return Users(load_settings().models_dir)


def _password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice at a prompt."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ValueError("--password-stdin: stdin is empty")
        return check_password(line.rstrip("\r\n"))
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask the password at: use --password-stdin")
    try:
        first = getpass.getpass(f"password (at least {MIN_PASSWORD} characters): ")
        check_password(first)
        second = getpass.getpass("the same password again: ")
    except EOFError:
        raise ValueError("no password given") from None
    if first != second:
        raise ValueError("the two passwords differ: nothing was changed")
    return first


def cmd_add(args: argparse.Namespace) -> int:
    users = _users()
    check_name(args.name)  # both before the password is asked
    check_role(args.role)
    user = users.add(args.name, args.role, _password(args.password_stdin))
    print(f"user {user.name} added, role {user.role}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [u.public() for u in sorted(_users().load().values(), key=lambda u: u.name)]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not rows:
        print("no users (the REST API is open, or needs the X-API-Key if BDI_API_KEY is set)")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = "disabled" if r["disabled"] else "enabled"
        print(f"{r['name']:<{width}}  {r['role']:<8}  {state:<8}  {r['created_at']}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    users = _users()
    users.get(args.name)  # an unknown user is said before the password is asked
    users.set_password(args.name, _password(args.password_stdin))
    print(f"password of {args.name} changed")
    return 0


def cmd_role(args: argparse.Namespace) -> int:
    user = _users().set_role(args.name, args.role)
    print(f"user {user.name} has the role {user.role}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    user = _users().set_disabled(args.name, args.disabled)
    print(f"user {user.name} {'disabled' if user.disabled else 'enabled'}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    user = _users().remove(args.name)
    print(f"user {user.name} removed")
    return 0
