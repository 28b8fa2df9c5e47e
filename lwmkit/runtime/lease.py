"""One writer per output: an exclusive lease on an output folder (a shard set, a checkpoint dir).

The lease is ``FOLDER/.lwmkit-lease``, held two ways at once:

* an ``flock`` on the file for the holder's lifetime: the kernel drops it the moment the
  holder dies (even by SIGKILL), so a lease left by a killed run on this host is free at once;
* the holder's identity in the file (host, pid, start time, job) and a **heartbeat** (the
  time, rewritten every ``heartbeat_s``), for filesystems whose locks other hosts do not see:
  a lease whose holder is another host is respected while its heartbeat is fresh
  (``stale_after_s``), and one whose holder is this host is respected while its pid lives.

A second run is refused with :class:`LeaseHeld`, one line naming the holder. Taking over a
stale lease is safe: the taker must win the ``flock``, and it re-checks that the path still
names the file it locked (a holder that just released may have unlinked it).
Local folders are leased this way; ``s3://`` folders by :class:`BucketLease` (conditional
requests; below); other bucket schemes run unleased with a warning.

Usage::

    with OutputLease("shards/s512", job="pack"):
        ...write the set...
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from lwmkit.schemas.errors import ContractError

LEASE_NAME = ".lwmkit-lease"


class LeaseHeld(ContractError):
    """Another run holds the output folder's lease."""


def lease_supported(folder: str) -> bool:
    """Local paths (plain or ``file://``) can be leased; bucket URLs cannot."""
    return "://" not in folder or folder.startswith("file://")


def _local(folder: str) -> str:
    return folder[len("file://") :] if folder.startswith("file://") else folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def describe_holder(info: dict[str, Any]) -> str:
    """``host pid 123 (job, started 2026-11-27T14:00:00Z)`` from a lease file's content."""
    return (
        f"{info.get('job', 'a run')} on host {info.get('host', '?')} pid {info.get('pid', '?')}, "
        f"started {info.get('started', '?')}"
    )


class OutputLease:
    """An exclusive lease on ``folder`` (created if missing); a context manager.

    ``acquire()`` raises :class:`LeaseHeld` naming the holder; ``took_over`` holds the
    description of a stale holder it replaced, if any.
    """

    def __init__(self, folder: str, job: str, *, heartbeat_s: float = 10.0, stale_after_s: float = 120.0):
        if not lease_supported(folder):
            raise ValueError(f"only local folders can be leased, not {folder!r}")
        self.folder = _local(folder)
        self.path = os.path.join(self.folder, LEASE_NAME)
        self.job = job
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.took_over: str | None = None
        self._fd: int | None = None
        self._info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self._acquire()
        except OSError as err:  # a read-only or blocked output folder: named in the job's one line
            err.add_note(f"taking the lease on the output folder {self.folder}")
            raise

    def _acquire(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(20):  # retried only when the file was replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise self._held(holder) from None
            if not _same_file(fd, self.path):  # released and unlinked between open and lock
                os.close(fd)
                continue
            previous = _read(fd)
            if previous and self._respected(previous):
                os.close(fd)
                raise self._held(previous)
            if previous:
                self.took_over = describe_holder(previous)
            self._fd = fd
            self._info = {"host": socket.gethostname(), "pid": os.getpid(), "job": self.job,
                          "started": _now_iso(), "heartbeat": time.time()}  # fmt: skip
            self._write()
            self._beat = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
            self._beat.start()
            return
        raise LeaseHeld("the lease file keeps being replaced; another run is starting", source=self.path)

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            os.unlink(self.path)  # while still locked: a waiter re-checks the path after locking
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def _respected(self, info: dict[str, Any]) -> bool:
        """A previous holder whose lock we nevertheless got: is it still alive somewhere?"""
        if info.get("host") == socket.gethostname():
            pid = info.get("pid")
            return isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)
        beat = info.get("heartbeat")
        return isinstance(beat, (int, float)) and time.time() - beat < self.stale_after_s

    def _held(self, holder: dict[str, Any] | None) -> LeaseHeld:
        who = describe_holder(holder) if holder else "another run (its lease file is being written)"
        return LeaseHeld(f"output folder is in use by {who}; refusing to write into it", source=self.folder)

    def _write(self) -> None:
        blob = (json.dumps(self._info, sort_keys=True) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, blob, 0)
        os.fsync(self._fd)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._info["heartbeat"] = time.time()
            try:
                self._write()
            except OSError:
                pass  # a full disk must not kill the job over a heartbeat; the flock still holds


# ---------------------------------------------------------------------------------- S3 leases
# One writer per output on S3: the lease as an object written with conditional requests.
#
# Object stores have no locks, but S3 (AWS since 2024, MinIO, moto) honours ``If-None-Match: *``
# and ``If-Match: <etag>`` on PUT and DELETE, which is enough for a lease:
#
# * **take**: PUT ``FOLDER/.lwmkit-lease`` with ``If-None-Match: *`` — exactly one of two racing
#   runs succeeds; the other reads the holder and is refused (:class:`LeaseHeld`, one line);
# * **heartbeat**: every ``heartbeat_s`` the holder rewrites the object with ``If-Match`` on its
#   own ETag, so a holder whose lease was taken over learns it (and says so when it ends);
# * **stale**: a lease whose object was last written more than ``stale_after_s`` ago, by the
#   server's clock (``Last-Modified`` against the reply's ``Date``: no clock skew between hosts;
#   both have one-second resolution),
#   belongs to a run that died; it is taken over with ``If-Match`` on the stale ETag, so of two
#   runs taking over the same stale lease only one wins;
# * **release**: DELETE with ``If-Match``, never removing a lease another run took.
#
# The endpoint and credentials are the ones fsspec uses for ``s3://`` (``fsspec.config``, which a
# Beam job fills from its ``--s3_*`` flags: pipelines/bucket_options.py; ``FSSPEC_S3_ENDPOINT_URL``;
# then botocore's own chain: ``AWS_ENDPOINT_URL_S3``, profiles ...).


def bucket_lease_supported(folder: str) -> bool:
    return folder.startswith("s3://")


def _client() -> Any:
    import botocore.session
    import fsspec

    conf = fsspec.config.conf.get("s3") or {}
    client = conf.get("client_kwargs") or {}
    endpoint = conf.get("endpoint_url") or os.environ.get("FSSPEC_S3_ENDPOINT_URL")
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint or None, aws_access_key_id=conf.get("key"),
        aws_secret_access_key=conf.get("secret"), aws_session_token=conf.get("token"),
        region_name=client.get("region_name"), verify=client.get("verify"), use_ssl=conf.get("use_ssl", True),
    )  # fmt: skip


def _code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


class BucketLease:
    """An exclusive lease on the S3 folder ``s3://bucket/prefix``; a context manager like
    :class:`~lwmkit.runtime.lease.OutputLease` (``took_over`` names a stale holder it replaced)."""

    def __init__(self, folder: str, job: str, *, heartbeat_s: float = 10.0, stale_after_s: float = 120.0,
                 client: Any = None):  # fmt: skip
        if not bucket_lease_supported(folder):
            raise ValueError(f"only s3:// folders have bucket leases, not {folder!r}")
        bucket, _, prefix = folder[len("s3://") :].partition("/")
        self.folder, self.bucket = folder.rstrip("/"), bucket
        self.key = f"{prefix.strip('/')}/{LEASE_NAME}" if prefix.strip("/") else LEASE_NAME
        self.job, self.heartbeat_s, self.stale_after_s = job, heartbeat_s, stale_after_s
        self.took_over: str | None = None
        self.lost_to: str | None = None  # set when another run took the lease while we held it
        self._client = client
        self._etag: str | None = None
        self._info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> BucketLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client()
        return self._client

    def acquire(self) -> None:
        self._info = {"host": socket.gethostname(), "pid": os.getpid(), "job": self.job, "started": _now_iso()}
        for _ in range(20):  # retried only when the lease changed between our two requests
            if self._put(IfNoneMatch="*"):
                break
            holder, etag, age = self._read()
            if etag is None:
                continue  # released in between: try again
            if age < self.stale_after_s:
                raise LeaseHeld(f"output folder is in use by {describe_holder(holder)}; refusing to write into it",
                                source=self.folder)  # fmt: skip
            if self._put(IfMatch=etag):
                self.took_over = describe_holder(holder)
                break
        else:
            raise LeaseHeld("the lease keeps changing hands; another run is starting", source=self.folder)
        self._beat = threading.Thread(target=self._heartbeat, name="bucket-lease-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        if self._etag is None and self.lost_to is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self._etag is not None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
            except Exception as err:  # noqa: BLE001 - botocore's ClientError, raised per service
                if _code(err) not in ("PreconditionFailed", "NoSuchKey", "412"):
                    raise
            self._etag = None
        if self.lost_to is not None:
            lost, self.lost_to = self.lost_to, None
            raise LeaseHeld(f"the lease was taken over by {lost} while this run was writing (its heartbeat "
                            "was late); check the output before using it", source=self.folder)  # fmt: skip

    def _put(self, **condition: str) -> bool:
        """Write our holder record under ``condition``; False when the condition failed."""
        body = (json.dumps(self._info, sort_keys=True) + "\n").encode()
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)
        except Exception as err:  # noqa: BLE001
            if _code(err) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            if _code(err) == "NoSuchKey" and "IfMatch" in condition:
                return False
            raise
        self._etag = reply["ETag"]
        return True

    def _read(self) -> tuple[dict[str, Any], str | None, float]:
        """The holder record, its ETag (None: no lease now) and its age in seconds by the server's clock."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as err:  # noqa: BLE001
            if _code(err) in ("NoSuchKey", "404"):
                return {}, None, 0.0
            raise
        try:
            holder = json.loads(reply["Body"].read() or b"{}")
        except ValueError:
            holder = {}
        date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date).timestamp() if date else time.time()
        return (holder if isinstance(holder, dict) else {}), reply["ETag"], now - reply["LastModified"].timestamp()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._info["heartbeat"] = _now_iso()
            try:
                if not self._put(IfMatch=self._etag):
                    holder, _, _ = self._read()
                    self.lost_to, self._etag = describe_holder(holder) if holder else "another run", None
                    return
            except Exception:  # noqa: BLE001 - a network blip must not kill the job; the next beat retries
                continue


@contextmanager
def lease_output(
    folder: str, job: str, *, note: Callable[[str], None] = print
) -> Iterator[OutputLease | BucketLease | None]:
    """Hold ``folder``'s lease for the block (raises :class:`LeaseHeld`); a bucket URL other than
    ``s3://`` cannot be leased: ``note`` says so and the block runs unleased (None)."""
    if not lease_supported(folder) and not bucket_lease_supported(folder):
        note(f"{folder}: only local and s3:// folders can be leased; make sure no other run writes there")
        yield None
        return
    if bucket_lease_supported(folder):
        lease = BucketLease(folder, job)
        try:
            lease.acquire()
        except LeaseHeld:
            raise
        except Exception as err:  # noqa: BLE001 - no endpoint/credentials for the lease: as before, unleased
            note(f"{folder}: could not take the output lease ({type(err).__name__}: {err}); running unleased, "
                 "make sure no other run writes there")  # fmt: skip
            yield None
            return
        try:
            if lease.took_over:
                note(f"{folder}: took over the lease left by {lease.took_over} (no longer writing)")
            yield lease
        finally:
            lease.release()
        return
    with OutputLease(folder, job) as lease:
        if lease.took_over:
            note(f"{folder}: took over the lease left by {lease.took_over} (no longer running)")
        yield lease


def _read(fd: int) -> dict[str, Any] | None:
    for _ in range(3):  # a holder rewriting its heartbeat can be caught mid-write
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            time.sleep(0.05)
            continue
        return data if isinstance(data, dict) else None
    return None


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
