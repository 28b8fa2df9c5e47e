"""Every Beam job's flags live in one parser: importing all jobs together must still parse."""

from __future__ import annotations

import importlib
import pkgutil

from apache_beam.options.pipeline_options import PipelineOptions

import lwmkit.pipelines as pipelines


def test_all_job_options_coexist_in_one_process():
    for info in pkgutil.iter_modules(pipelines.__path__):
        importlib.import_module(f"lwmkit.pipelines.{info.name}")
    jobs = PipelineOptions.__subclasses__()
    names = {cls.__name__ for cls in jobs}
    assert {"PackOptions", "BooksOptions", "VisionOptions"} <= names
    opts = PipelineOptions(["--tokenizer", "t.model", "--output", "out"])
    for cls in jobs:
        view = opts.view_as(cls)  # argparse raises here if two jobs clash on a flag
        assert view is not None


def test_no_job_declares_an_argparse_required_flag():
    # A required flag in one job makes every other job's parse fail in the same process.
    for info in pkgutil.iter_modules(pipelines.__path__):
        importlib.import_module(f"lwmkit.pipelines.{info.name}")
    PipelineOptions(["--runner", "DirectRunner"]).get_all_options()
