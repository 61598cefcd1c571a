"""Account rules and sign-in defences: name and password rules, token hashing, login throttling."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import deque

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MIN_PASSWORD = 8
# A small list of very common passwords of 8+ characters (as found in public breach lists), lower-cased.
COMMON_PASSWORDS = frozenset(
    """
    password password1 password12 password123 password1234 passw0rd p@ssw0rd p@ssword 12345678 123456789 1234567890
    0123456789 123123123 11111111 00000000 12341234 87654321 88888888 99999999 abcd1234 abc12345 abcdefgh qwertyui
    qwertyuiop qwerty123 qwerty12 1q2w3e4r 1q2w3e4r5t 1qaz2wsx zaq12wsx asdfghjk asdfasdf iloveyou iloveyou1
    princess sunshine football baseball basketball superman batman123 starwars trustno1 whatever welcome1 welcome123
    letmein1 letmein123 changeme changeme1 administrator admin123 admin1234 computer internet michelle jennifer
    jordan23 charlie1 master123 mustang1 monkey123 dragon123 shadow123 freedom1 loveyou1 liverpool chelsea1 arsenal1
    samsung1 google123 nicole123 jessica1 access14 default1 secret123 security letmeinnow hello123 hello1234
    123qweasd qweasdzxc 1qazxsw2 q1w2e3r4 a1b2c3d4 aa123456
    """.split()  # noqa: SIM905 (a word list reads better as words)
)


def username_problem(name: str) -> str | None:
    """Why `name` cannot be a user name (letters, digits, '.', '_', '-'; 1-64, starting alphanumeric), or None."""
    if USERNAME.fullmatch(name):
        return None
    return f"field 'name': {name!r} is not a user name (1-64 letters, digits, '.', '_' or '-', starting alphanumeric)"


def password_problem(password: str) -> str | None:
    """Why `password` is refused (too short, only spaces, a well-known password), or None."""
    if len(password) < MIN_PASSWORD:
        return f"field 'password': at least {MIN_PASSWORD} characters"
    if not password.strip():
        return "field 'password': not only spaces"
    if password.strip().lower() in COMMON_PASSWORDS:
        return "field 'password': one of the most common passwords; choose another"
    return None


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh random token and its SHA-256 (what the store keeps). Tokens carry 256 random bits, so a fast
    hash is enough: there is nothing to guess, unlike a password."""
    token = f"{prefix}_{secrets.token_urlsafe(32)}"
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Throttle:
    """Failed sign-ins per key (an account name, a client address) in a sliding window. In memory, per server
    process: a restart forgets it, which only gives an attacker one more window."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 when it may now."""
        with self._lock:
            failures = self._recent(key)
            if len(failures) < self.limit:
                return 0
            return max(1, int(failures[0] + self.window_s - time.monotonic()) + 1)

    def fail(self, key: str) -> None:
        with self._lock:
            self._failures[key] = self._recent(key)
            self._failures[key].append(time.monotonic())

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _recent(self, key: str) -> deque[float]:
        """`key`'s failures within the window; keys without any are forgotten, so memory stays bounded."""
        failures = self._failures.pop(key, deque())
        while failures and failures[0] < time.monotonic() - self.window_s:
            failures.popleft()
        if failures:
            self._failures[key] = failures
        return failures
