"""The feedback store: one SQLAlchemy engine (SQLite in WAL mode by default, PostgreSQL by URL), a media
folder, and the operations the app and the command line share, by concern: accounts (users, sessions,
tokens), projects (imports, assignments), labelling (leases, judgments). Each operation is one transaction:
it all lands or none of it.
"""

from rlhfkit.feedback.store.accounts import ROLES, SESSION_LIFETIME, Accounts
from rlhfkit.feedback.store.base import (
    CLI_ACTOR,
    DEFAULT_DB,
    Conflict,
    Forbidden,
    NotFound,
    StoreError,
    migrate,
    open_engine,
)
from rlhfkit.feedback.store.labelling import LEASE, JudgmentRow, Labelling, Progress


class Store(Accounts, Labelling):
    """The operations on one feedback database."""


__all__ = [
    "CLI_ACTOR",
    "DEFAULT_DB",
    "LEASE",
    "ROLES",
    "SESSION_LIFETIME",
    "Conflict",
    "Forbidden",
    "JudgmentRow",
    "NotFound",
    "Progress",
    "Store",
    "StoreError",
    "migrate",
    "open_engine",
]
