"""The password policy of local accounts (``radstream users add|passwd``, the admin page).

A password must have ``web.password_min_length`` characters (default 12), must not be the user
name, and must not be one of the common passwords shipped in ``common_passwords.txt`` (nor one of
them with digits or symbols appended, such as ``Password2024!``), nor one listed in
``web.password_deny_file``. Comparisons ignore case.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from radstream.settings import Settings

_TAIL = re.compile(r"[\d\W_]+$")


class PasswordRejected(ValueError):
    """The password breaks the policy (the message says which rule)."""


@functools.lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    text = (resources.files("radstream.web") / "common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(_entries(text))


@functools.lru_cache(maxsize=8)
def _file_entries(path: str, mtime_ns: int) -> frozenset[str]:
    return frozenset(_entries(Path(path).read_text(encoding="utf-8")))


def _entries(text: str) -> list[str]:
    return [line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    min_length: int = 12
    deny_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordPolicy:
        return cls(min_length=settings.web.password_min_length, deny_file=settings.web.password_deny_file)

    def denied(self) -> frozenset[str]:
        if self.deny_file is None:
            return common_passwords()
        path = Path(self.deny_file)
        return common_passwords() | _file_entries(str(path), path.stat().st_mtime_ns)

    def check(self, password: str, username: str | None = None) -> None:
        """Raise :class:`PasswordRejected` unless ``password`` satisfies the policy."""
        if len(password) < self.min_length:
            raise PasswordRejected(f"passwords need at least {self.min_length} characters")
        low = password.strip().lower()
        if username and low in {username.lower(), username.lower()[::-1]}:
            raise PasswordRejected("the password must not be the user name")
        denied = self.denied()
        base = _TAIL.sub("", low)
        if low in denied or (len(base) >= 4 and base in denied):
            raise PasswordRejected("this password is too common (it is on the list of passwords that attackers "
                                   "try first); choose another")
        if len(set(low)) < 3:
            raise PasswordRejected("the password repeats too few characters; choose another")
