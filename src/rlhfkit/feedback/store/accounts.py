"""Users and signing in: argon2 passwords, server-side sessions, bearer tokens for scripts, deactivation."""

from __future__ import annotations

from datetime import timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhfkit.feedback.schema import ApiToken, LoginSession, User, utcnow
from rlhfkit.feedback.security import new_token, password_problem, token_hash, username_problem
from rlhfkit.feedback.store.base import CLI_ACTOR, NotFound, StoreBase, StoreError

ROLES = ("admin", "annotator")
SESSION_LIFETIME = timedelta(hours=12)
_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """A hash to check unknown names' passwords against, so they take as long as known names' (no timing
    tells an attacker which names exist)."""
    return _hasher.hash("no user has this password")


class Accounts(StoreBase):
    def add_user(self, name: str, password: str, role: str = "annotator", actor: str = CLI_ACTOR) -> User:
        if role not in ROLES:
            raise StoreError(f"field 'role': {role!r} is not one of {', '.join(ROLES)}")
        problem = username_problem(name) or password_problem(password)
        if problem:
            raise StoreError(problem)
        try:
            with self.session() as session:
                user = User(name=name, password_hash=_hasher.hash(password), role=role, active=True)
                session.add(user)
                session.flush()
                self._audit(session, actor, "create user", f"{name} ({role})")
                return user
        except IntegrityError:
            raise StoreError(f"user {name!r} exists already") from None

    def authenticate(self, name: str, password: str) -> User | None:
        """The active user with this name and password, else None (after the same argon2 work either way)."""
        with self.reading() as session:
            user = session.scalar(select(User).where(User.name == name))
        matches: bool
        try:
            matches = _hasher.verify(user.password_hash if user is not None else _dummy_hash(), password)
        except VerificationError:
            matches = False
        return user if matches and user is not None and user.active else None

    def change_password(self, user: User, current: str, new: str) -> None:
        """Set a new password (the current one proves it is them) and sign out every session of theirs."""
        if self.authenticate(user.name, current) is None:
            raise StoreError("field 'current': not your current password")
        problem = password_problem(new)
        if problem:
            raise StoreError(problem)
        with self.session() as session:
            session.get_one(User, user.id).password_hash = _hasher.hash(new)
            self._end_sessions(session, user.id)

    def set_active(self, name: str, active: bool, actor: str = CLI_ACTOR) -> None:
        """Deactivate (sign out everywhere, tokens refused, no sign-in) or reactivate a user."""
        with self.session() as session:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                raise NotFound(f"no user {name!r}")
            user.active = active
            if not active:
                self._end_sessions(session, user.id)
            self._audit(session, actor, "activate user" if active else "deactivate user", name)

    def user(self, user_id: int) -> User | None:
        with self.reading() as session:
            return session.get(User, user_id)

    def users(self) -> list[User]:
        with self.reading() as session:
            return list(session.scalars(select(User).order_by(User.name)))

    # --- sessions and tokens -------------------------------------------------------------------------------

    def start_session(self, user: User) -> str:
        """A new session token for `user` (the cookie holds it; the store keeps its hash)."""
        token, hashed = new_token("session")
        now = utcnow()
        with self.session() as session:
            session.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
            session.add(
                LoginSession(token_hash=hashed, user_id=user.id, created_at=now, expires_at=now + SESSION_LIFETIME)
            )
        return token

    def session_user(self, token: str) -> User | None:
        """The active user of a live session, or None (signed out, expired, password changed, deactivated)."""
        with self.reading() as session:
            return session.scalar(
                select(User)
                .join(LoginSession, LoginSession.user_id == User.id)
                .where(LoginSession.token_hash == token_hash(token), LoginSession.expires_at > utcnow(), User.active)
            )

    def end_session(self, token: str) -> None:
        with self.session() as session:
            session.execute(delete(LoginSession).where(LoginSession.token_hash == token_hash(token)))

    @staticmethod
    def _end_sessions(session: Session, user_id: int) -> None:
        session.execute(delete(LoginSession).where(LoginSession.user_id == user_id))

    def create_token(self, user: User, label: str) -> str:
        """A new bearer token for `user`'s scripts; shown once, only its hash is kept."""
        label = label.strip()
        if not 1 <= len(label) <= 64:
            raise StoreError("field 'label': 1-64 characters naming what the token is for")
        token, hashed = new_token("rlhfkit")
        with self.session() as session:
            session.add(ApiToken(user_id=user.id, label=label, token_hash=hashed))
        return token

    def revoke_token(self, user: User, token_id: int) -> None:
        with self.session() as session:
            token = session.get(ApiToken, token_id)
            if token is None or token.user_id != user.id:
                raise NotFound(f"no token {token_id} of yours")
            token.revoked_at = token.revoked_at or utcnow()

    def tokens(self, user: User) -> list[ApiToken]:
        with self.reading() as session:
            return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))

    def token_user(self, token: str) -> User | None:
        """The active user of an unrevoked bearer token, or None."""
        with self.reading() as session:
            return session.scalar(
                select(User)
                .join(ApiToken, ApiToken.user_id == User.id)
                .where(ApiToken.token_hash == token_hash(token), ApiToken.revoked_at.is_(None), User.active)
            )
