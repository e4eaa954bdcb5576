"""The users file (store/users.py): argon2id hashes and never a password, the naming and
password rules, every change atomic and private (0600), the same answer for an unknown
user, a wrong password and a disabled user."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import orjson
import pytest

from store.atomic import create_once
from store.errors import InvalidIdError, InvalidValueError, NotFoundError, StoreError
from store.users import USERS_FILE, UserExistsError, Users, at_least

PW = "a-long-password-1"


@pytest.fixture
def users(tmp_path: Path) -> Users:
    return Users(tmp_path / "models")


def test_a_user_is_stored_with_an_argon2id_hash_in_a_private_file(users: Users) -> None:
    user = users.add("ana.silva", "engineer", PW)
    assert user.public() == {"name": "ana.silva", "role": "engineer",
                             "created_at": user.created_at, "disabled": False}  # fmt: skip
    raw = users.path.read_bytes()
    assert PW.encode() not in raw
    (row,) = orjson.loads(raw)["users"]
    assert row["password_hash"].startswith("$argon2id$")
    assert stat.S_IMODE(os.stat(users.path).st_mode) == 0o600
    assert [p.name for p in users.root.iterdir() if p.name.endswith(".tmp")] == []
    assert users.verify("ana.silva", PW) == user
    assert Users(users.root).get("ana.silva") == user  # another reader, same user


@pytest.mark.parametrize(
    "name", ["Ana", "", "-ana", ".ana", "ana silva", "ana/..", "a" * 65, "ané", "ana\n"]
)
def test_bad_user_names_are_refused(users: Users, name: str) -> None:
    with pytest.raises(InvalidIdError, match="is not allowed"):
        users.add(name, "operator", PW)
    assert not users.path.exists()


def test_bad_roles_and_passwords_are_refused_and_nothing_is_stored(users: Users) -> None:
    with pytest.raises(InvalidValueError, match="role 'admin' is unknown"):
        users.add("ana", "admin", PW)
    with pytest.raises(InvalidValueError, match="too short: at least 10"):
        users.add("ana", "operator", "123456789")
    with pytest.raises(InvalidValueError, match="blank"):
        users.add("ana", "operator", " " * 12)
    assert not users.has_users()
    users.add("ana", "operator", PW)
    with pytest.raises(UserExistsError, match="exists already"):
        users.add("ana", "engineer", PW)
    for change in (lambda: users.set_role("bob", "engineer"), lambda: users.remove("bob"),
                   lambda: users.set_password("bob", PW), lambda: users.get("bob")):  # fmt: skip
        with pytest.raises(NotFoundError, match="no user 'bob'"):
            change()


def test_unknown_wrong_and_disabled_all_fail_alike(users: Users) -> None:
    users.add("ana", "engineer", PW)
    assert users.verify("ana", PW + "x") is None
    assert users.verify("nobody", PW) is None
    assert users.verify("ana", PW) is not None
    users.set_disabled("ana", True)
    assert users.verify("ana", PW) is None
    users.set_disabled("ana", False)
    users.set_password("ana", "another-password")
    assert users.verify("ana", PW) is None and users.verify("ana", "another-password")
    assert users.set_role("ana", "operator").role == "operator"
    users.remove("ana")
    assert not users.has_users() and users.verify("ana", "another-password") is None


def test_roles_are_ordered() -> None:
    assert at_least("engineer", "operator") and at_least("engineer", "engineer")
    assert at_least("operator", "operator") and not at_least("operator", "engineer")
    assert not at_least("root", "operator")


def test_concurrent_adds_lose_nothing(users: Users) -> None:
    names = [f"user{i}" for i in range(6)]
    threads = [threading.Thread(target=users.add, args=(n, "operator", PW)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(Users(users.root).load()) == names


def test_a_garbled_users_file_is_an_error_not_an_empty_list(users: Users) -> None:
    users.root.mkdir(parents=True)
    (users.root / USERS_FILE).write_text('{"users": [{"name": "x"}]}')
    with pytest.raises(StoreError, match="unreadable"):
        users.load()


def test_a_private_key_file_is_made_once(tmp_path: Path) -> None:
    path = tmp_path / "k" / ".session_key"
    first = create_once(path, b"1" * 32, private=True)
    assert create_once(path, b"2" * 32, private=True) == first == b"1" * 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
