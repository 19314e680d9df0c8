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


class KeysFileError(ValueError):
    """The keys file cannot be read (not JSON, not an mtpf keys file, a malformed entry)."""


def _digest(salt: bytes, key: str) -> str:
    return hashlib.sha256(salt + key.encode()).hexdigest()


class KeyStore:
    """Salted key hashes per app, persisted in ``path`` (optional).

    A server re-reads the file when it changes on disk (``mtpf serve keys rotate`` from another shell takes effect
    at once), and every write re-reads it first, so two processes writing different apps do not undo each other
    (writes are atomic; two writes at the same instant can still race: the last one wins).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._keys: dict[str, dict] = {}
        self._seen = None  # (inode, mtime_ns, size) of the file as last read or written
        with self._lock:
            self._reload(strict=True)

    def has(self, app: str) -> bool:
        self._maybe_reload()
        return app in self._keys

    def apps(self) -> list[str]:
        self._maybe_reload()
        return sorted(self._keys)

    def issue(self, app: str, key: str | None = None) -> str:
        """Store (a hash of) ``key`` or of a fresh random key for ``app``; returns the key in clear, once."""
        if key is not None:
            if len(key) < 16:
                raise ValueError("API keys must be at least 16 characters")
            if any(c.isspace() or c == "," for c in key):
                raise ValueError("API keys may not contain spaces or commas (a caller may send several keys "
                                 "separated by commas)")
            if not (key.isascii() and key.isprintable()):  # HTTP headers arrive as latin-1: it could never match
                raise ValueError("API keys must be printable ASCII characters")
        key = key or "mtpf_" + secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        with self._lock:
            self._reload(strict=True)
            self._keys[app] = {"salt": salt.hex(), "sha256": _digest(salt, key), "created": int(time.time())}
            self._save()
        return key

    def rotate(self, app: str) -> str:
        """A new random key for an app that has one; the old key stops working."""
        with self._lock:
            self._reload(strict=True)
            known = app in self._keys
        if not known:
            raise KeyError(app)
        return self.issue(app)

    def revoke(self, app: str) -> None:
        with self._lock:
            self._reload(strict=True)
            if self._keys.pop(app, None) is not None:
                self._save()

    def verify(self, app: str, key: str | None) -> bool:
        self._maybe_reload()
        entry = self._keys.get(app)
        if entry is None or not key:
            return False
        return hmac.compare_digest(entry["sha256"], _digest(bytes.fromhex(entry["salt"]), key))

    def owner(self, key: str | None) -> str | None:
        """The app this key belongs to, if any."""
        if not key:
            return None
        self._maybe_reload()
        for app in list(self._keys):
            if self.verify(app, key):
                return app
        return None

    # ------------------------------------------------------------------ file
    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        if self.path is None or self._stat() == self._seen:
            return
        with self._lock:
            self._reload(strict=False)  # a server keeps its keys if someone breaks the file while it runs

    def _reload(self, strict: bool) -> None:  # lock held
        if self.path is None:
            return
        stat = self._stat()
        if stat is None or stat == self._seen:
            return
        try:
            keys = _read(self.path)
        except KeysFileError:
            if strict:
                raise
            return
        self._keys, self._seen = keys, stat

    def _save(self) -> None:  # lock held
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"format": KEYS_FORMAT, "keys": self._keys}, fh, indent=2)
        os.replace(tmp, self.path)
        self._seen = self._stat()


def _read(path: Path) -> dict[str, dict]:
    fix = "fix it, or move it away to start over (every app then gets a new key)"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"{path}: cannot read the keys file ({exc}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise KeysFileError(f"{path}: line {exc.lineno}: the keys file is not valid JSON ({exc.msg}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != KEYS_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise KeysFileError(f"{path}: not an mtpf keys file (format {got!r}, expected {KEYS_FORMAT!r}); {fix}")
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        raise KeysFileError(f"{path}: key 'keys' must be an object of app -> {{salt, sha256}}; {fix}")
    for app, entry in keys.items():
        ok = isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("salt", "sha256"))
        try:
            ok = ok and len(bytes.fromhex(entry["salt"])) > 0 and len(bytes.fromhex(entry["sha256"])) == 32
        except ValueError:
            ok = False
        if not ok:
            raise KeysFileError(f"{path}: keys.{app}: expected {{\"salt\": hex, \"sha256\": 64 hex digits}}; {fix}")
    return dict(keys)
