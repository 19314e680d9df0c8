"""Per-app API keys, stored only as salted hashes.

Keys are 256-bit random tokens (``mtpf_`` + 43 url-safe characters), so a salted SHA-256 is enough to make a
stolen keys file useless (no dictionary to attack) while keeping verification in microseconds.

File format (written atomically, mode 0600)::

    {"format": "mtpf-keys/1", "keys": {"<app>": {"salt": hex, "sha256": hex, "created": unix_time}}}
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path

KEYS_FORMAT = "mtpf-keys/1"
ADMIN = "__admin__"


def _digest(salt: bytes, key: str) -> str:
    return hashlib.sha256(salt + key.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._keys: dict[str, dict] = {}
        if self.path and self.path.is_file():
            data = json.loads(self.path.read_text())
            if data.get("format") != KEYS_FORMAT:
                raise ValueError(f"{self.path}: not an mtpf keys file (format {data.get('format')!r})")
            self._keys = dict(data.get("keys", {}))

    def has(self, app: str) -> bool:
        return app in self._keys

    def issue(self, app: str, key: str | None = None) -> str:
        """Store (a hash of) ``key`` or of a fresh random key for ``app``; returns the key in clear, once."""
        if key is not None and len(key) < 16:
            raise ValueError("API keys must be at least 16 characters")
        key = key or "mtpf_" + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        with self._lock:
            self._keys[app] = {"salt": salt.hex(), "sha256": _digest(salt, key), "created": int(time.time())}
            self._save()
        return key

    def revoke(self, app: str) -> None:
        with self._lock:
            if self._keys.pop(app, None) is not None:
                self._save()

    def verify(self, app: str, key: str | None) -> bool:
        entry = self._keys.get(app)
        if entry is None or not key:
            return False
        return hmac.compare_digest(entry["sha256"], _digest(bytes.fromhex(entry["salt"]), key))

    def owner(self, key: str | None) -> str | None:
        """The app this key belongs to, if any."""
        if not key:
            return None
        for app in list(self._keys):
            if self.verify(app, key):
                return app
        return None

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"format": KEYS_FORMAT, "keys": self._keys}, fh, indent=2)
        os.replace(tmp, self.path)
