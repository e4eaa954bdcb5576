"""Named users and their roles (docs/AUTH.md): ``<BDI_MODELS_DIR>/.users.json``.

Each user has a name, a role (``operator`` or ``engineer``), an argon2id password hash,
the time it was created and a disabled flag. No plain password is ever stored, and no
hash leaves this module in an answer or a log line (:meth:`User.public`). The file is
replaced atomically (0600) under an exclusive lock, so two ``bdi users`` commands never
lose each other's change. No torch, no HTTP here.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from store.atomic import dumps, ensure_dir, write_bytes
from store.errors import InvalidIdError, InvalidValueError, NotFoundError, StoreError
from store.locks import FileLocks

Role = Literal["operator", "engineer"]
ROLES: tuple[Role, ...] = ("operator", "engineer")  # each may do what the one before may
USERS_FILE = ".users.json"
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # argon2 takes any length; a bound keeps a login request cheap
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HASHER = PasswordHasher()  # argon2id, the library's recommended cost (RFC 9106)
_LOCKS = FileLocks()


class UserExistsError(StoreError):
    """``add`` of a name that is taken."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    created_at: str
    disabled: bool
    password_hash: str

    def public(self) -> dict[str, Any]:
        """What may be shown: everything but the hash."""
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "disabled": self.disabled,
        }


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidIdError(
            f"user name {str(name)[:80]!r} is not allowed: lower-case letters, digits, '.', "
            "'_' and '-', starting with a letter or digit, at most 64 characters"
        )
    return name


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidValueError(f"role {str(role)[:40]!r} is unknown: one of {', '.join(ROLES)}")
    return cast(Role, role)


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidValueError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidValueError(f"the password is too long: at most {MAX_PASSWORD} characters")
    if not password.strip():
        raise InvalidValueError("the password is blank")
    return password


def at_least(role: str, needed: Role) -> bool:
    """Whether ``role`` may do what ``needed`` may."""
    return role in ROLES and ROLES.index(cast(Role, role)) >= ROLES.index(needed)


class Users:
    """The users file of a store root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / USERS_FILE
        self._cache: tuple[tuple[int, ...], dict[str, User]] | None = None
        self._dummy: str | None = None

    # --- reading ------------------------------------------------------------------------
    def load(self) -> dict[str, User]:
        """Every user by name (re-read only when the file changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_mtime_ns, st.st_size)  # a replace makes a new inode
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        users = self._parse(self.path.read_bytes())
        self._cache = (key, users)
        return users

    def _parse(self, data: bytes) -> dict[str, User]:
        try:
            doc = orjson.loads(data)
            rows = doc["users"]
            return {
                r["name"]: User(
                    r["name"],
                    check_role(r["role"]),
                    str(r["created_at"]),
                    bool(r.get("disabled", False)),
                    str(r["password_hash"]),
                )  # fmt: skip
                for r in rows
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, InvalidValueError) as exc:
            raise StoreError(f"the users file {USERS_FILE} is unreadable ({exc})") from None

    def has_users(self) -> bool:
        return bool(self.load())

    def get(self, name: str) -> User:
        user = self.load().get(check_name(name))
        if user is None:
            raise NotFoundError(f"no user {name!r}")
        return user

    def verify(self, name: str, password: str) -> User | None:
        """The user, when ``name`` is an enabled user and ``password`` its password; else
        ``None``, after the same work (a hash verified) whatever the reason."""
        user = self.load().get(name) if isinstance(name, str) else None
        if self._dummy is None:
            # verified when the user is unknown: the same work, the same time
            self._dummy = _HASHER.hash(secrets.token_hex(16))
        hashed = user.password_hash if user is not None else self._dummy
        ok: bool
        try:
            ok = _HASHER.verify(hashed, password[:MAX_PASSWORD])
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or user is None or user.disabled:
            return None
        return user

    # --- changing -----------------------------------------------------------------------
    def add(self, name: str, role: str, password: str) -> User:
        check_name(name)
        role = check_role(role)
        hashed = _HASHER.hash(check_password(password))
        with self._changing() as users:
            if name in users:
                raise UserExistsError(f"user {name!r} exists already")
            now = datetime.now(UTC).isoformat(timespec="seconds")
            users[name] = User(name, role, now, False, hashed)
            return users[name]

    def set_password(self, name: str, password: str) -> User:
        hashed = _HASHER.hash(check_password(password))
        return self._update(name, password_hash=hashed)

    def set_role(self, name: str, role: str) -> User:
        return self._update(name, role=check_role(role))

    def set_disabled(self, name: str, disabled: bool) -> User:
        return self._update(name, disabled=disabled)

    def remove(self, name: str) -> User:
        check_name(name)
        with self._changing() as users:
            if name not in users:
                raise NotFoundError(f"no user {name!r}")
            return users.pop(name)

    def _update(self, name: str, **changes: Any) -> User:
        check_name(name)
        with self._changing() as users:
            if name not in users:
                raise NotFoundError(f"no user {name!r}")
            users[name] = replace(users[name], **changes)
            return users[name]

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, User]]:
        """The users, read under the lock; written back when the block ends normally."""
        ensure_dir(self.root)
        with _LOCKS.hold(self.root / ".users.lock"):
            self._cache = None
            users = dict(self.load())
            yield users
            rows = [
                {**u.public(), "password_hash": u.password_hash}
                for u in sorted(users.values(), key=lambda u: u.name)
            ]
            write_bytes(self.path, dumps({"users": rows}), private=True)
            self._cache = None
