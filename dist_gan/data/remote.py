"""Shards that live elsewhere: an HTTP(S) server, any store with a command-line client, a local cache.

Why this module: ``data=`` and ``--ref`` take a folder, a URL or a command, and every reader
(the training stream, the evaluator's reference, ``iter_images``) opens a shard the same way,
through ``open_url``. Three kinds of location:

* a folder: ``shard-000000.tar`` beside ``manifest.json``;
* ``http://host/prefix/`` or ``https://``: the manifest and shards under that prefix. Read
  with the standard library, not WebDataset's ``curl`` pipe: curl retries 30 times in silence,
  and a fault we cannot see we cannot count. A read that breaks mid-shard (reset, a body
  shorter than its Content-Length, a 5xx) reconnects with an HTTP Range request from the
  byte it reached, so a transient fault costs a retry, not the rest of the shard, and the
  bytes are the same as without it;
* ``pipe:COMMAND`` with ``{name}`` for the file name: any client that writes a file to
  stdout (``pipe:aws s3 cp s3://bucket/ffhq64/{name} -``, ``gsutil cat``, ``rclone cat``).
  ``s3://bucket/prefix/`` and ``gs://bucket/prefix/`` are shorthands for the aws and gsutil
  commands. A command's stream cannot resume: a broken one is retried from the start when it
  broke before the first byte was used, and otherwise fails the shard.

A shard that still cannot be read after ``retries`` attempts is the reader's to skip and count.
``ShardCache`` keeps fetched shards on local disk (atomic writes, bounded size, shared safely
by several ranks on one node).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from dist_gan.errors import UserError

SCHEMES = ("http://", "https://", "pipe:", "s3://", "gs://")
STORE_CLIENTS = {  # shorthand scheme -> (client executable, command template for one object, install hint)
    "s3://": ("aws", "aws s3 cp {url}{{name}} -", "pip install awscli (and configure credentials)"),
    "gs://": ("gsutil", "gsutil cat {url}{{name}}", "install the Google Cloud SDK's gsutil"),
}
CHUNK = 1 << 20


def is_remote(location: str | os.PathLike) -> bool:
    """True when ``location`` names shards behind a URL or a command rather than a local folder."""
    return str(location).startswith(SCHEMES)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a reader tries before it gives a shard up: ``retries`` more attempts, backoff doubling."""

    retries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    timeout_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt)


@dataclass
class FetchStats:
    """What the network cost a reader: retried reads and bytes fetched (summed over shards)."""

    retries: int = 0
    bytes: int = 0

    def note(self, url: str, exc: BaseException) -> None:
        """One transient fault, about to be retried (a read that gives up is reported by its caller instead)."""
        self.retries += 1


def describe(exc: BaseException) -> str:
    """One line for a network error: the HTTP status, or the exception's class and text."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ------------------------------------------------------------------ locations
def expand_shorthand(location: str) -> str:
    """``s3://b/p/`` and ``gs://b/p/`` -> the ``pipe:`` command of their client; a UserError if it is not installed."""
    for prefix, (exe, template, hint) in STORE_CLIENTS.items():
        if location.startswith(prefix):
            if shutil.which(exe) is None:
                raise UserError(f"{location}: reading {prefix} needs the `{exe}` command, which is not on PATH; {hint}, "
                                f"or give data=pipe:COMMAND with {{name}} for any other client")
            return "pipe:" + template.format(url=location if location.endswith("/") else location + "/")
    return location


def member_url(location: str, name: str) -> str:
    """Where file ``name`` (a shard or the manifest) of a shard set lives."""
    location = expand_shorthand(location)
    if location.startswith("pipe:"):
        if "{name}" not in location:
            raise UserError(f"{location}: a pipe: location needs {{name}} where the file name goes, "
                            "e.g. pipe:aws s3 cp s3://bucket/ffhq64/{name} -")
        return location.replace("{name}", shlex.quote(name))
    if location.startswith(("http://", "https://")):
        return urllib.parse.urljoin(location if location.endswith("/") else location + "/", urllib.parse.quote(name))
    return str(Path(location) / name)


def sub_location(location: str, folder: str) -> str:
    """The location of a shard set in ``folder`` under ``location`` (a pack's ``holdout`` set)."""
    location = expand_shorthand(location)
    if location.startswith("pipe:"):
        return location.replace("{name}", f"{folder.strip('/')}/{{name}}")
    if location.startswith(("http://", "https://")):
        return member_url(location, folder.strip("/")) + "/"
    return str(Path(location) / folder)


# ------------------------------------------------------------------ HTTP
class ResumableHTTPReader(io.RawIOBase):
    """A shard's body over HTTP; a read that breaks reconnects from the byte it reached (Range)."""

    def __init__(self, url: str, policy: RetryPolicy, stats: FetchStats) -> None:
        super().__init__()
        self.url, self.policy, self.stats = url, policy, stats
        self.pos = 0
        self.length: Optional[int] = None
        self.resp: Optional[http.client.HTTPResponse] = None
        self._connect()

    def _request(self) -> http.client.HTTPResponse:
        headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
        resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.policy.timeout_s)
        if self.pos and resp.status != 206:  # the server ignored Range: read past what we have
            skip = self.pos
            while skip:
                got = resp.read(min(skip, CHUNK))
                if not got:
                    raise http.client.IncompleteRead(b"", skip)
                skip -= len(got)
        if self.length is None:
            size = resp.headers.get("Content-Length")
            self.length = int(size) if size is not None and resp.status == 200 else None
        return resp

    def _connect(self) -> None:
        """(Re)open at ``self.pos``, retrying transient faults; raises the last error once retries run out."""
        attempt = 0
        while True:
            try:
                self.resp = self._request()
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt >= self.policy.retries:  # 4xx: retrying will not help
                    raise
                err: BaseException = exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if attempt >= self.policy.retries:
                    raise
                err = exc
            self.stats.note(self.url, err)
            time.sleep(self.policy.delay(attempt))
            attempt += 1

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        attempt = 0
        while True:
            try:
                n = self.resp.readinto(buf) if self.resp is not None else 0
                if n == 0 and self.length is not None and self.pos < self.length:
                    raise http.client.IncompleteRead(b"", self.length - self.pos)
                self.pos += n
                self.stats.bytes += n
                return n
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if attempt >= self.policy.retries:
                    raise OSError(f"{self.url}: read failed at byte {self.pos} after {attempt} retries ({describe(exc)})") from None
                self.stats.note(self.url, exc)
                self._drop()
                time.sleep(self.policy.delay(attempt))
                attempt += 1
                self._connect()

    def _drop(self) -> None:
        if self.resp is not None:
            try:
                self.resp.close()
            except Exception:  # noqa: BLE001 - a broken socket may fail to close as well
                pass
            self.resp = None

    def close(self) -> None:
        self._drop()
        super().close()


# ------------------------------------------------------------------ commands
class CommandReader(io.RawIOBase):
    """The stdout of a store client's command; a non-zero exit at the end is an error, not a short shard."""

    def __init__(self, command: str, timeout_s: float) -> None:
        super().__init__()
        self.command, self.timeout_s = command, timeout_s
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = self.proc.stdout.readinto(buf)  # type: ignore[union-attr]
        if n == 0:
            self._finish()
        return n

    def _finish(self) -> None:
        try:
            code = self.proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise OSError(f"`{self.command}` did not exit within {self.timeout_s:.0f} s") from None
        if code:
            err = (self.proc.stderr.read() or b"").decode(errors="replace").strip().splitlines()  # type: ignore[union-attr]
            raise OSError(f"`{self.command}` exited {code}" + (f": {err[-1]}" if err else ""))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        super().close()


def _open_command(command: str, policy: RetryPolicy, stats: FetchStats) -> BinaryIO:
    """Start ``command``; retried while it fails before its first byte (refused connections, throttling)."""
    for attempt in range(policy.retries + 1):
        reader = CommandReader(command, policy.timeout_s)
        buffered = io.BufferedReader(reader, CHUNK)
        try:
            buffered.peek(1)  # the first byte, or the exit status of a command that wrote nothing
            return buffered  # type: ignore[return-value]
        except OSError as exc:
            buffered.close()
            if attempt >= policy.retries:
                raise
            stats.note(command, exc)
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


def open_url(url: str, policy: RetryPolicy = RetryPolicy(), stats: Optional[FetchStats] = None) -> BinaryIO:
    """A readable binary stream of one file: a local path, an http(s) URL or a ``pipe:`` command."""
    stats = stats if stats is not None else FetchStats()
    if url.startswith(("http://", "https://")):
        return io.BufferedReader(ResumableHTTPReader(url, policy, stats), CHUNK)  # type: ignore[return-value]
    if url.startswith("pipe:"):
        return _open_command(url[len("pipe:"):], policy, stats)
    return open(url, "rb")


def read_small(url: str, policy: RetryPolicy = RetryPolicy(), what: str = "file") -> bytes:
    """The whole of a small file (the manifest); a one-line UserError naming the URL when it cannot be read."""
    try:
        with open_url(url, policy) as fh:
            return fh.read()
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
        raise UserError(f"cannot read the {what} {url} ({describe(exc)})") from None


# ------------------------------------------------------------------ hashing while reading
class HashingReader(io.RawIOBase):
    """Passes a stream through and checks its sha256 against the manifest's when it is read to the end."""

    def __init__(self, inner: BinaryIO, expected: str, url: str) -> None:
        super().__init__()
        self.inner, self.expected, self.url = inner, expected, url
        self.h = hashlib.sha256()
        self.checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        data = self.inner.read(len(buf))
        n = len(data)
        buf[:n] = data
        if n:
            self.h.update(data)
        elif not self.checked:
            self.checked = True
            if self.h.hexdigest() != self.expected:
                raise UserError(f"{self.url}: sha256 {self.h.hexdigest()[:12]}... does not match the manifest's "
                                f"{self.expected[:12]}...; the shard changed or was corrupted in transit")
        return n

    def close(self) -> None:
        self.inner.close()
        super().close()


# ------------------------------------------------------------------ cache
class ShardCache:
    """Fetched shards kept on local disk under their manifest's sha256 (or name), least recently used evicted.

    Files are written to a temporary name in the cache folder, fsynced and renamed into place, so a reader
    never sees half a shard and ranks on one node that fetch the same shard at once both end with a whole
    file. Eviction removes whole files only; a rank still reading an evicted shard keeps its open file.
    """

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = int(max_bytes)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"loader.cache_dir={self.root}: cannot create it ({exc.strerror})") from None

    def path_for(self, name: str, sha256: Optional[str]) -> Path:
        return self.root / (f"{sha256[:16]}-{name}" if sha256 else name)

    def fetch(self, url: str, name: str, sha256: Optional[str], policy: RetryPolicy, stats: FetchStats) -> Path:
        """The local copy of shard ``url``, downloaded (and its sha256 checked) if it is not cached yet."""
        with self.open(url, name, sha256, policy, stats):
            return self.path_for(name, sha256)

    def open(self, url: str, name: str, sha256: Optional[str], policy: RetryPolicy, stats: FetchStats) -> BinaryIO:
        """The cached shard, open for reading.

        The handle is opened before anything can evict the file (a cached copy is opened, not tested then
        opened; a download keeps its own temp file's handle across the rename), so another rank's eviction
        never costs this one a read: POSIX keeps an unlinked file's data while it is open.
        """
        path = self.path_for(name, sha256)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            pass
        else:
            try:
                os.utime(path)  # recently used
            except FileNotFoundError:
                pass  # evicted just now; our handle still reads it whole
            return fh
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp-{os.getpid()}", dir=self.root)
        out = os.fdopen(fd, "w+b")
        try:
            h = hashlib.sha256()
            with open_url(url, policy, stats) as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            if sha256 and h.hexdigest() != sha256:
                raise OSError(f"{url}: sha256 does not match the manifest's; not cached")
            os.replace(tmp, path)
        except BaseException:
            out.close()
            Path(tmp).unlink(missing_ok=True)
            raise
        out.seek(0)
        self.evict(keep=path)
        return out

    def evict(self, keep: Optional[Path] = None) -> None:
        """Remove least recently used shards until the cache holds at most ``max_bytes`` (``keep`` stays)."""
        files = []
        for p in self.root.iterdir():
            if p.name.startswith(".") or not p.is_file():
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # another rank evicted it
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size

