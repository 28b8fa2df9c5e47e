"""Beam's Dask runner made to run every lwmkit job: the one place for what it lacks.

Apache Beam 2.77's ``apache_beam.runners.dask.dask_runner.DaskRunner`` translates a pipeline
into dask bags on a dask.distributed cluster, but (line numbers are Beam 2.77's files under
``apache_beam/runners/dask/``, i.e. github.com/apache/beam/tree/v2.77.0/sdks/python/apache_beam/runners/dask):

1. **Tagged outputs leak into every output.** A multi-output ParDo becomes ONE bag
   (``transform_evaluator.py:114`` ``OneReceiver`` collects every tag into one list) and each
   consumer is wired to the producing *transform*, not to the PCollection it reads
   (``dask_runner.py`` ``DaskBagVisitor``: ``input_value.producer``), so a consumer of the
   main output also gets the dead letters, counts, ... (pack: ``'tuple' object has no
   attribute 'source'``).
2. **finish_bundle output is dropped**: ``apply_dofn_to_bundle`` takes its results
   (``transform_evaluator.py:198``) before it calls ``invoke_finish_bundle`` (line 200). Beam's
   own ``WriteToText``/``WriteToParquet`` close their files there and ``BatchElements``
   (``RunInference``) emits its last batch there, so outputs go missing.
3. **Only the last transform runs**: ``run_pipeline`` computes
   ``list(dask_visitor.bags.values())[-1]`` (``dask_runner.py:251``); a branch that does not
   lead into the last-visited transform (a dead-letter writer, a metrics sink) never runs.
4. **No metrics**: counters are dropped on the workers (no state sampler, so
   ``MetricUpdater`` finds no container) and ``DaskRunnerResult.metrics()`` raises
   ``NotImplementedError('collecting metrics will come later!')`` (``dask_runner.py:163``).
5. **Side inputs are computed inside every consuming task**: ``DaskBagWindowedIterator``
   calls ``list(self.bag)`` on the worker (``transform_evaluator.py:95``), re-running the side
   input's whole upstream (model calls, shard writes) once per partition, outside the cluster's
   scheduler.
6. **One partition by default**: ``Create`` puts up to 128 elements in a partition
   (``transform_evaluator.py:174``), so a job of 100 inputs runs on one worker unless
   ``--dask_npartitions`` is given.
7. **Workers never see the job's filesystem flags** (``--s3_endpoint_url``, ...): nothing calls
   ``FileSystems.set_options`` outside the driver.

:class:`PatchedDaskRunner` is built like Beam's DaskRunner (the same base class, its ``DaskOptions``
flags, its transform overrides, dask bags on the same cluster) with our own translation of the
pipeline, which fixes all seven. Jobs call
:func:`adapt` on their options: when ``--runner`` names Beam's Dask runner, the patched one
runs instead; every other runner is left alone. Known limits kept: windows other than the
global one are not carried between steps (none of our jobs window), and ``beam.io.Read``
(bounded sources) is not translated (none of our jobs use it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam import DoFn, pvalue
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import Receiver
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.runner import PipelineResult, PipelineState

BEAM_DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
PATCHED_DASK_RUNNER = "lwmkit.pipelines.runner_compat.PatchedDaskRunner"
_METRICS = "__lwmkit_metrics__"  # tag of the one element per bundle that carries its metric updates


def is_dask_runner(runner: Any) -> bool:
    """Whether a ``--runner`` value names Beam's Dask runner (full path or ``DaskRunner``)."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name in (BEAM_DASK_RUNNER, "DaskRunner", PATCHED_DASK_RUNNER, "PatchedDaskRunner")


def adapt(options: PipelineOptions) -> PipelineOptions:
    """``options`` with Beam's Dask runner swapped for :class:`PatchedDaskRunner` (in place)."""
    std = options.view_as(StandardOptions)
    if is_dask_runner(std.runner):
        # registers Beam's DaskOptions, so parsing the job's options keeps --dask_* (no warning)
        import apache_beam.runners.dask.dask_runner  # noqa: F401

        std.runner = PATCHED_DASK_RUNNER
    return options


# ---- on the workers ------------------------------------------------------------------------



class UnsupportedOnDask(RuntimeError):
    """A transform the patched Dask runner deliberately does not translate (``beam.io.Read``,
    a root transform other than Create): none of lwmkit's jobs use one, so it is refused by name."""

class _Collect(Receiver):
    """A Receiver appending ``(tag, value)``; windows are dropped (all our jobs are global-window)."""

    def __init__(self, tag: str | None, out: list) -> None:
        super().__init__()
        self.tag, self.out = tag, out

    def receive(self, windowed_value: Any) -> None:
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list) -> None:
        super().__init__()
        self.out = out

    def __missing__(self, tag: str | None) -> _Collect:
        self[tag] = receiver = _Collect(tag, self.out)
        return receiver


def _windowed(item: Any) -> Any:
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.windowed_value import WindowedValue

    return item if isinstance(item, WindowedValue) else WindowedValue(item, 0, (GlobalWindow(),))


@dataclasses.dataclass(frozen=True)
class _BundleSpec:
    """What a worker needs to run one ParDo over one partition (shipped inside a partial)."""

    fn: DoFn
    label: str
    window_fn: Any
    args: tuple
    kwargs: dict
    side_views: tuple  # (view class, view options) per side input, in order
    options: dict  # the job's pipeline options: bucket endpoints/credentials flags for FileSystems


_OPTIONS_SET: list[dict] = []  # the options this worker process last gave FileSystems


def _use_options(options: dict) -> None:
    """Beam's filesystems read --s3_endpoint_url etc. from set_options, which only the driver calls
    (gap 7): do it once per worker process and job."""
    if _OPTIONS_SET and _OPTIONS_SET[0] == options:
        return
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(PipelineOptions.from_dictionary(options))
    _OPTIONS_SET[:] = [options]


def _run_bundle(spec: _BundleSpec, items: Iterable[Any], *side_values: list) -> list[tuple[Any, Any]]:
    """One partition through the DoFn: start_bundle, process each, finish_bundle (kept: gap 2),
    under a metrics container (gap 4). Returns ``(tag, value)`` pairs, main output tagged None,
    and one ``(_METRICS, MetricUpdates)``."""
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler
    from apache_beam.runners.worker import statesampler
    from apache_beam.transforms.sideinputs import SideInputMap
    from apache_beam.utils.counters import CounterFactory

    _use_options(spec.options)
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(
        window_fn=spec.window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
        per_element_output_counter=None, output_batch_converter=None, process_yields_batches=False,
        process_batch_yields_elements=False,
    )  # fmt: skip
    sides = [
        SideInputMap(view, options, [_windowed(v) for v in values])
        for (view, options), values in zip(spec.side_views, side_values, strict=True)
    ]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(spec.fn), handler, context=DoFnContext(spec.label, state=None), side_inputs=sides,
        input_args=list(spec.args), input_kwargs=spec.kwargs, user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam(),
    )  # fmt: skip
    container = MetricsContainer(spec.label)
    sampler = statesampler.StateSampler("", CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(spec.label, "process", metrics_container=container):
            invoker.invoke_setup()
            invoker.invoke_start_bundle()
            for item in items:
                invoker.invoke_process(_windowed(item))
            invoker.invoke_finish_bundle()
            invoker.invoke_teardown()
    finally:
        statesampler.set_current_tracker(previous)
    out.append((_METRICS, container.get_cumulative()))
    return out


def _concat(parts: list[list]) -> list:
    return [x for part in parts for x in part]


def _has_tag(tag: str | None, pair: tuple[Any, Any]) -> bool:
    return pair[0] == tag


def _value(pair: tuple[Any, Any]) -> Any:
    return pair[1]


def _group_key(item: tuple[Any, Any]) -> Any:
    return item[0]


def _group_values(group: tuple[Any, list]) -> tuple[Any, list]:
    from apache_beam.runners.dask.transform_evaluator import defenestrate

    key, items = group
    return key, [defenestrate(item[1]) for item in items]


# ---- in the driver -------------------------------------------------------------------------


class _BagVisitor(PipelineVisitor):
    """Translates each leaf transform into dask bags, one bag per PCollection (gap 1)."""

    def __init__(self, bag_kwargs: dict, default_partitions: int, options: dict) -> None:
        self.bag_kwargs, self.default_partitions, self.options = bag_kwargs, default_partitions, options
        self.bags: dict[int, Any] = {}  # by id() of the PCollection
        self.consumed: set[int] = set()
        self.metrics: list[Any] = []

    def _input(self, pc: Any) -> Any:
        self.consumed.add(id(pc))
        return self.bags[id(pc)]

    def visit_transform(self, node: Any) -> None:
        from apache_beam.runners.dask.overrides import (
            _Create,
            _Flatten,
            _GroupAlsoByWindow,
            _GroupByKeyOnly,
            _Read,
        )

        inputs = [self._input(pc) for pc in node.inputs if not isinstance(pc, pvalue.PBegin)]
        transform = node.transform
        # Grouping already yields plain (key, [values]) in the global window: like Beam's runner,
        # _GroupAlsoByWindow passes elements through.
        if isinstance(transform, beam.ParDo) and not isinstance(transform, _GroupAlsoByWindow):
            return self._pardo(node, inputs[0])
        if isinstance(transform, _Create):
            bag = self._create(list(transform.values))
        elif isinstance(transform, _GroupByKeyOnly):
            bag = inputs[0].groupby(_group_key, shuffle="tasks").map(_group_values)
        elif isinstance(transform, _Flatten):
            import dask.bag as db

            bag = db.concat(inputs)
        elif isinstance(transform, _Read) or not inputs:
            raise UnsupportedOnDask(
                f"{node.full_label}: {type(transform).__name__} has no Dask translation here (lwmkit's "
                "jobs never use it); run this pipeline on the DirectRunner or a portable runner"
            )
        else:  # Beam's stand-ins that pass elements through (_Reshuffle, ...)
            bag = inputs[0]
        for pc in node.outputs.values():
            self.bags[id(pc)] = bag

    def _create(self, values: list) -> Any:
        import dask.bag as db

        if self.bag_kwargs:
            return db.from_sequence(values, **self.bag_kwargs)
        # gap 6: spread over the cluster (two partitions per worker thread) instead of 128 per partition
        return db.from_sequence(values, npartitions=max(1, min(len(values), self.default_partitions)))

    def _pardo(self, node: Any, bag: Any) -> None:
        import dask

        transform = node.transform
        main = next(iter(node.main_inputs.values()))
        window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
        args, kwargs = transform.raw_side_inputs
        views, values = [], []
        for si in node.side_inputs:  # gap 5: a side input is computed once, as a task of its own
            si_bag = self._input(si.pvalue)
            views.append((type(si), si._view_options()))
            # by partition keys: handing dask.delayed the bag itself would optimise (and rename) a
            # private copy of its graph, which then runs once per consumer
            parts = si_bag.to_delayed(optimize_graph=False)
            values.append(dask.delayed(_concat, pure=True)(parts))
        spec = _BundleSpec(
            transform.fn, node.full_label, window_fn, tuple(args), dict(kwargs), tuple(views), self.options
        )
        tagged = bag.map_partitions(functools.partial(_run_bundle, spec), *values)
        for tag, pc in node.outputs.items():
            self.bags[id(pc)] = tagged.filter(functools.partial(_has_tag, tag)).map(_value)
        self.metrics.append(tagged.filter(functools.partial(_has_tag, _METRICS)).map(_value))

    def sinks(self) -> list[Any]:
        """A count of every PCollection nothing reads: computing them runs every branch (gap 3)."""
        return [bag.count() for key, bag in self.bags.items() if key not in self.consumed]


class PatchedDaskRunnerResult(PipelineResult):
    """The futures of one run; metrics are every bundle's, committed once the job succeeded."""

    def __init__(self, client: Any, futures: list, metric_updates: Any) -> None:
        super().__init__(PipelineState.RUNNING)
        from apache_beam.runners.direct.direct_metrics import DirectMetrics

        self.client, self.futures, self.metric_updates = client, futures, metric_updates
        self._metrics = DirectMetrics()

    def wait_until_finish(self, duration: float | None = None) -> str:
        """Block until every branch ran (``duration`` in ms, as Beam's); raises the first task error."""
        import dask.distributed as ddist

        if self._state != PipelineState.RUNNING:
            return self._state
        try:
            timeout = None if duration is None else duration / 1000
            for _ in ddist.as_completed(self.futures, timeout=timeout, with_results=True):
                pass  # gathering (small counts) is what re-raises a worker's exception here
            updates = self.metric_updates.result(timeout=timeout)
        except TimeoutError:
            return self._state  # still running: ask again
        except BaseException:
            self._state = PipelineState.FAILED
            self.client.close()
            raise
        for u in updates:
            self._metrics.commit_logical(None, u)
            self._metrics.commit_physical(None, u)
        self._state = PipelineState.DONE
        self.client.close()  # the runner's own connection; the cluster stays up
        return self._state

    def cancel(self) -> str:
        self.client.cancel([*self.futures, self.metric_updates])
        self.client.close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self) -> Any:
        return self._metrics


class PatchedDaskRunner(BundleBasedDirectRunner):
    """Beam's DaskRunner (its options, its transform overrides) with our translation: the fixes
    listed in this module's docstring. Named by :func:`adapt`; dask is imported only here."""

    @staticmethod
    def is_fnapi_compatible() -> bool:
        return False

    def run_pipeline(self, pipeline: Any, options: PipelineOptions) -> PatchedDaskRunnerResult:
        import dask.bag as db
        import dask.distributed as ddist
        from apache_beam.runners.dask.dask_runner import DaskOptions
        from apache_beam.runners.dask.overrides import dask_overrides

        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        pipeline.replace_all(dask_overrides())
        threads = sum(client.nthreads().values()) or 1
        visitor = _BagVisitor(bag_kwargs, 2 * threads, options.get_all_options(drop_default=True))
        pipeline.visit(visitor)
        metrics = db.concat(visitor.metrics) if visitor.metrics else db.from_sequence([])
        # no graph optimisation: fusing would copy a shared step into each consumer (running it twice)
        futures = client.compute([*visitor.sinks(), metrics], optimize_graph=False)
        return PatchedDaskRunnerResult(client, futures[:-1], futures[-1])
