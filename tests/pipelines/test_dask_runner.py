"""Every Beam job on a real dask.distributed cluster: a ``dask scheduler`` and two ``dask worker``
processes on loopback, each job run through the ``lwmkit`` CLI with Beam's DaskRunner, its
output compared byte for byte with the DirectRunner's, and the cluster's own count of the tasks
it executed checked (so a job that quietly ran in the driver would fail)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import apache_beam as beam
import cloudpickle
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsSingleton
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from lwmkit.cli import main
from lwmkit.pipelines.runner_compat import adapt

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("distributed")
DASK = "apache_beam.runners.dask.dask_runner.DaskRunner"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and its workers as processes of their own, with a client to inspect them."""

    def __init__(self, address: str, procs: list[subprocess.Popen], logs: Path) -> None:
        self.address, self.procs, self.logs = address, procs, logs
        self.client = distributed.Client(address, timeout=60)

    def executed(self) -> dict[str, int]:
        """Tasks each worker process has executed so far (the workers' own counters)."""
        return self.client.run(lambda dask_worker: dask_worker.state.executed_count)

    def ran(self, before: dict[str, int]) -> int:
        """Tasks executed on the cluster since ``before``; asserts the job's DoFns ran there."""
        prefixes = self.client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        assert "run_bundle" in prefixes, prefixes  # the runner's ParDo tasks reached the scheduler
        after = self.executed()
        return sum(after.values()) - sum(before.get(w, 0) for w in after)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` + ``dask worker --nworkers 2 --nthreads 1`` on free loopback ports. The
    scheduler exits after 10 idle minutes and the workers 30 s after losing it, so nothing
    outlives a killed test run for long; teardown stops them at once."""
    logs = tmp_path_factory.mktemp("dask_logs")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    procs = [
        subprocess.Popen(
            [
                *dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
                "--idle-timeout",
                "600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(logs / "scheduler.log", "wb"),
        )  # fmt: skip
    ]
    procs.append(
        subprocess.Popen(
            [
                *dask,
                "worker",
                address,
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--no-dashboard",
                "--death-timeout",
                "30",
                "--local-directory",
                str(logs),
                "--host",
                "127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(logs / "workers.log", "wb"),
        )  # fmt: skip
    )
    c = None
    try:
        c = Cluster(address, procs, logs)
        c.client.wait_for_workers(2, timeout=120)
        yield c
    finally:
        if c is not None:
            c.client.shutdown()  # scheduler and workers close at once (SIGTERM alone takes seconds)
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _dask_args(cluster: Cluster) -> list[str]:
    return ["--runner", DASK, f"--dask_client_address={cluster.address}"]


def _files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


# ---- the runner's fixes, one by one, on a small pipeline --------------------------------------


class _SplitLate(beam.DoFn):
    """Multiples of 3 to a tagged output at once; the rest held and emitted from finish_bundle."""

    def __init__(self) -> None:
        self.seen = Metrics.counter("toy", "seen")

    def start_bundle(self) -> None:
        self.held: list[int] = []

    def process(self, x: int):
        self.seen.inc()
        if x % 3 == 0:
            yield beam.pvalue.TaggedOutput("dead", f"dead {x}")
        else:
            self.held.append(x)

    def finish_bundle(self):
        for x in self.held:
            yield WindowedValue(x, 0, [GlobalWindow()])


def _mark(x: object, folder: str) -> object:
    (Path(folder) / uuid.uuid4().hex).touch()  # one file per execution of this step
    return x


def _toy(args: list[str], out: Path, marks: Path) -> tuple[dict[str, bytes], int, int]:
    """(files written, executions of the side input's step, the 'seen' counter)."""
    marks.mkdir()
    p = beam.Pipeline(options=adapt(PipelineOptions(args)))
    split = (
        p
        | "Numbers" >> beam.Create(list(range(40)))
        | beam.ParDo(_SplitLate()).with_outputs("dead", main="ok")
    )
    once = p | "Once" >> beam.Create([1]) | "Mark" >> beam.Map(_mark, str(marks))
    total = split.ok | beam.CombineGlobally(sum)
    shown = split.ok | "Show" >> beam.Map(
        lambda x, t, o: f"{x}/{t}/{o}", AsSingleton(total), AsSingleton(once)
    )
    _ = shown | "WriteOk" >> beam.io.WriteToText(str(out / "ok"), num_shards=1, shard_name_template="")
    _ = split.dead | "WriteDead" >> beam.io.WriteToText(
        str(out / "dead"), num_shards=1, shard_name_template=""
    )
    result = p.run()
    result.wait_until_finish()
    seen = result.metrics().query(MetricsFilter().with_name("seen"))["counters"]
    return _files(out), len(list(marks.iterdir())), sum(c.committed for c in seen)


def test_runner_fixes_on_a_small_pipeline(cluster, tmp_path):
    """Tagged outputs routed, finish_bundle output kept, both writers run, a side input's step
    computed once for all its consumers' partitions, counters collected."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests
    try:
        direct = _toy([], tmp_path / "direct", tmp_path / "marks-direct")
        before = cluster.executed()
        dask = _toy(
            _dask_args(cluster) + ["--dask_npartitions=4"], tmp_path / "dask", tmp_path / "marks-dask"
        )
        assert cluster.ran(before) > 10
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    files, marks, seen = dask
    assert files["dead"].count(b"dead") == 14 and files["ok"].count(b"\n") == 26
    assert (marks, seen) == (1, 40)
    assert dask == direct


# ---- pack ----------------------------------------------------------------------------------


def test_pack_on_dask_matches_the_direct_runner(cluster, botchan, tmp_path):
    from lwmkit.pack_demo import write_demo_mixture

    mixture = write_demo_mixture(tmp_path / "in", botchan, seed=7)
    common = ["pack", "--mixture", str(mixture), "--seq-len", "1024", "--stage", "s1k"]
    main([*common, "--out", str(tmp_path / "direct")])
    before = cluster.executed()
    main([*common, "--out", str(tmp_path / "dask"), *_dask_args(cluster)])
    assert cluster.ran(before) > 10
    direct, dask = _files(tmp_path / "direct"), _files(tmp_path / "dask")
    assert any(name.endswith(".tar") for name in direct) and "manifest.json" in direct
    assert dask == direct  # every shard, the manifest and the dead letters, byte for byte


# ---- audit ---------------------------------------------------------------------------------


def test_audit_recount_on_dask_matches_the_direct_runner(cluster, audit_set_writer, tmp_path):
    spec = {"web": ("text", 30, 8, 40), "pics": ("image", 12, 12, 24), "clips": ("video", 8, 20, 40)}
    audit_set_writer(str(tmp_path / "set"), spec, per_shard=3)
    reports = {}
    for name, runner in (("direct", ["--runner", "DirectRunner"]), ("dask", _dask_args(cluster))):
        before = cluster.executed()
        main(["audit", str(tmp_path / "set"), "-q", "--json", str(tmp_path / f"{name}.json"), *runner,
              f"--recount-output={tmp_path / name}-recount.json"])  # fmt: skip
        if name == "dask":
            assert cluster.ran(before) > 10
        reports[name] = (tmp_path / f"{name}.json").read_bytes()
    assert (tmp_path / "dask-recount.json").read_bytes() == (tmp_path / "direct-recount.json").read_bytes()
    assert json.loads(reports["dask"])["verdict"] == "pass"
    assert reports["dask"] == reports["direct"]


# ---- books ---------------------------------------------------------------------------------


class _QAServer(ThreadingHTTPServer):
    """An OpenAI-compatible endpoint whose reply is a pure function of the passage."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _QAHandler)
        self.requests = 0
        self.lock = threading.Lock()


class _QAHandler(BaseHTTPRequestHandler):
    server: _QAServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests += 1
        words = [w for w in body["messages"][-1]["content"].split() if w.isalpha()][:3]
        words = words if len(words) == 3 else ["book", "title", "page"]
        # not trivial for the QA gate: the answer is a word the question does not hold
        qa = [{"question": f"Which word follows {a}?", "answer": b} for a, b in zip(words[:-1], words[1:], strict=True)]
        reply = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": json.dumps({"qa": qa})}}]}  # fmt: skip
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def qa_server():
    srv = _QAServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_books_on_dask_matches_the_direct_runner(cluster, qa_server, botchan, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "botchan.txt").write_text(botchan[:6000], encoding="utf-8")
    (tmp_path / "in" / "blob.txt").write_bytes(bytes(range(256)) * 4)  # a dead letter
    endpoint = f"http://127.0.0.1:{qa_server.server_address[1]}/v1"
    common = ["books", f"--input={tmp_path / 'in' / '*'}", "--chunk-tokens=200", f"--qa-endpoint={endpoint}",
              "--qa-model=fixed-qa", "--qa-min-grounding=0", "--qa-min-span=0", "--num-shards=3"]  # fmt: skip (gate: debris/length/trivial only)
    main([*common, f"--output={tmp_path / 'direct'}"])
    direct_requests, before = qa_server.requests, cluster.executed()
    main([*common, f"--output={tmp_path / 'dask'}", *_dask_args(cluster)])
    assert cluster.ran(before) > 10
    assert qa_server.requests == 2 * direct_requests  # each chunk asked once per run, none twice
    direct, dask = (
        _files(tmp_path / "direct", ("summary.json",)),
        _files(tmp_path / "dask", ("summary.json",)),
    )
    assert sum(n.startswith("chunks-") for n in direct) == 3 and b"blob.txt" in direct["dead_letters.jsonl"]
    assert dask == direct  # records, dead letters and the response cache, byte for byte
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("direct", "dask")]
    for s in summaries:
        s.pop("qa_cache")  # the only field naming the output folder
    assert summaries[1] == summaries[0] and summaries[0]["counters"]["chunks_done"] > 2


# ---- vision --------------------------------------------------------------------------------


def test_vision_on_dask_matches_the_direct_runner(cluster, vision_media, vqgan_checkpoint, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for name in ("image.png", "wide.mp4", "random.mp4"):  # two good, one bad: dead letters too
        shutil.copy(vision_media[name], media / name)
    common = ["vision", "--inputs", str(media / "*"), "--vqgan", vqgan_checkpoint, "--fps", "1",
              "--num-shards", "2", "--max-failure-ratio", "0.5"]  # fmt: skip
    main([*common, "--output", str(tmp_path / "direct")])
    before = cluster.executed()
    started = time.monotonic()
    main([*common, "--output", str(tmp_path / "dask"), *_dask_args(cluster)])
    assert cluster.ran(before) > 10, f"after {time.monotonic() - started:.0f} s"
    direct, dask = _files(tmp_path / "direct"), _files(tmp_path / "dask")
    assert (
        any(n.startswith("vision-") for n in direct) and b"random.mp4" in direct["dead_letters/vision.jsonl"]
    )
    assert dask == direct
