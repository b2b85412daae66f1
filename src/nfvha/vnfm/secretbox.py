"""Secrets the manager must keep and use again (subscription passwords), sealed with a
key kept in a file of its own: a copy of the state store or of its backups alone reveals
no password.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from nfvha.errors import PROBLEM_PREFIX, ConfigError

__all__ = ["SecretBox", "SecretBoxError"]

log = logging.getLogger("nfvha.secretbox")


class SecretBoxError(ConfigError):
    """The key file cannot be read or made, or a sealed secret does not open with it."""

    problem_type = PROBLEM_PREFIX + "secret-box"


class SecretBox:
    """Seal and open short secrets with Fernet (AES-128-CBC and HMAC-SHA256: a sealed
    value that was altered, or sealed with another key, does not open)."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise SecretBoxError(f"not a Fernet key ({exc})") from exc

    @classmethod
    def ephemeral(cls) -> SecretBox:
        """A key held in memory only: what it sealed is lost with the process."""
        return cls(Fernet.generate_key())

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """The key of ``path``, created (mode 0600, never looser) when it does not exist."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SecretBoxError(f"cannot create the key file {path}: {exc}") from exc
        else:
            try:
                os.write(fd, Fernet.generate_key() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            log.info("created the key that seals subscription passwords: %s", path)
        try:
            st = path.stat()
            key = path.read_bytes().strip()
        except OSError as exc:
            raise SecretBoxError(f"cannot read the key file {path}: {exc}") from exc
        if st.st_mode & 0o077:
            raise SecretBoxError(f"key file {path} is readable by others (mode "
                                 f"{st.st_mode & 0o777:o}): run `chmod 600 {path}`")
        try:
            return cls(key)
        except SecretBoxError as exc:
            raise SecretBoxError(f"key file {path}: {exc}; it must hold the key the manager "
                                 "created there (remove it to start with a new one: stored "
                                 "subscription passwords are then lost)") from None

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise SecretBoxError("a sealed secret does not open with this key (another "
                                 "key file, or the value was altered)") from exc
