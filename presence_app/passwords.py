"""bcrypt hashing and checking on a bounded thread pool, never on the event loop."""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import bcrypt

MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises ValueError past it


class PasswordHasher:
    """Hashes with a configurable cost; checks unknown users against a dummy hash.

    Checking a dummy hash for unknown names (and for over-long passwords) keeps a failed login
    about as slow as a wrong password, so timing does not reveal which names exist.
    """

    def __init__(self, rounds: int, threads: int = 0) -> None:
        self.rounds = rounds
        self._pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2,
                                        thread_name_prefix="bcrypt")
        self._dummy: bytes | None = None

    async def hash(self, password: str) -> str:
        secret = password.encode("utf-8")
        if len(secret) > MAX_PASSWORD_BYTES:
            raise ValueError("password longer than 72 bytes")
        loop = asyncio.get_running_loop()
        salt = bcrypt.gensalt(self.rounds)
        hashed = await loop.run_in_executor(self._pool, bcrypt.hashpw, secret, salt)
        return hashed.decode("ascii")

    async def check(self, password: str, hashed: str | None) -> bool:
        """True only if ``password`` matches ``hashed``; None checks a dummy and fails."""
        secret = password.encode("utf-8")
        if hashed is None or len(secret) > MAX_PASSWORD_BYTES:
            await self._check(b"not the password", await self._dummy_hash())
            return False
        return await self._check(secret, hashed.encode("ascii"))

    async def _check(self, secret: bytes, hashed: bytes) -> bool:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, bcrypt.checkpw, secret, hashed)
        except ValueError:  # a malformed stored hash
            return False

    async def _dummy_hash(self) -> bytes:
        if self._dummy is None:
            self._dummy = (await self.hash("dummy password for timing")).encode("ascii")
        return self._dummy

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
