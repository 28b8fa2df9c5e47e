"""One writer per output on S3: the lease is an object written with conditional requests
(If-None-Match / If-Match), here against moto's S3 server as a user's MinIO would be."""

from __future__ import annotations

import time

import pytest

from lwmkit.runtime.lease import LEASE_NAME, BucketLease, LeaseHeld, lease_output


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket per test (moto keeps its state for the whole process)."""
    name = "leases-" + request.node.name.replace("_", "-")[5:40].strip("-")
    s3_server.fs.mkdir(name)
    s3_server.folder = f"s3://{name}/shards/s512"
    s3_server.lease_key = f"{name}/shards/s512/{LEASE_NAME}"
    return s3_server


def test_a_second_run_is_refused_naming_the_first_and_the_lease_goes_with_the_holder(bucket):
    with BucketLease(bucket.folder, "lwmkit pack") as first:
        assert bucket.fs.exists(bucket.lease_key)
        with pytest.raises(LeaseHeld, match=r"in use by lwmkit pack on host .* pid \d+, started 20"):
            BucketLease(bucket.folder, "lwmkit pack").acquire()
        assert first.took_over is None
    assert not bucket.fs.exists(bucket.lease_key)
    with BucketLease(bucket.folder, "again") as again:  # free once released
        assert again.took_over is None


def test_a_stale_lease_is_taken_over_and_its_old_holder_cannot_remove_the_new_one(bucket):
    dead = BucketLease(bucket.folder, "killed run", heartbeat_s=3600)
    dead.acquire()  # holds, then never beats again (as a killed run)
    time.sleep(2.2)  # S3 times have one-second resolution: the age read is >= 1.2 s
    with BucketLease(bucket.folder, "next run", stale_after_s=1.0) as nxt:
        assert nxt.took_over and nxt.took_over.startswith("killed run on host")
        dead._stop.set()
        dead.release()  # its conditional delete must not remove the new holder's lease
        assert bucket.fs.exists(bucket.lease_key)
        with pytest.raises(LeaseHeld, match="in use by next run"):
            BucketLease(bucket.folder, "third").acquire()


def test_a_holder_whose_lease_was_taken_says_so_when_it_ends(bucket):
    slow = BucketLease(bucket.folder, "slow run", heartbeat_s=4.0)
    slow.acquire()
    time.sleep(2.2)  # S3 times have one-second resolution: the age read is >= 1.2 s
    taker = BucketLease(bucket.folder, "taker", stale_after_s=1.0)
    taker.acquire()
    time.sleep(2.5)  # slow's next heartbeat (at 4 s) finds the lease changed hands
    with pytest.raises(LeaseHeld, match="taken over by taker on host"):
        slow.release()
    taker.release()
    assert not bucket.fs.exists(bucket.lease_key)


def test_lease_output_on_s3_holds_and_refuses(bucket):
    notes: list[str] = []
    with lease_output(bucket.folder, "lwmkit books", note=notes.append) as lease:
        assert isinstance(lease, BucketLease) and not notes
        with pytest.raises(LeaseHeld), lease_output(bucket.folder, "lwmkit books", note=notes.append):
            pass
    assert not bucket.fs.exists(bucket.lease_key)


def test_an_unreachable_lease_endpoint_runs_unleased_with_a_warning(monkeypatch):
    import fsspec

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": "http://127.0.0.1:9"})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    notes: list[str] = []
    with lease_output("s3://nowhere/out", "lwmkit pack", note=notes.append) as lease:
        assert lease is None
    assert len(notes) == 1 and "could not take the output lease" in notes[0] and "running unleased" in notes[0]


def test_other_bucket_schemes_run_unleased_with_a_warning():
    notes: list[str] = []
    with lease_output("gs://b/out", "lwmkit pack", note=notes.append) as lease:
        assert lease is None
    assert "only local and s3:// folders can be leased" in notes[0]
