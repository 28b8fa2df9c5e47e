"""Apache Beam jobs, one subpackage per job: ``vision``, ``books``, ``pack``, ``audit``.

Each has a ``job`` module with the same shape: its flags come from its typed config in
:mod:`lwmkit.schemas.jobs`, ``build(pipeline, job, ...)`` lays out its Beam graph and
``run(argv)`` parses the flags, leaves Beam its own and runs it; its steps sit beside it.
``runner_compat`` (what every job needs to run on Dask) is shared.

Pipelines import ``lwmkit.schemas``, ``lwmkit.runtime`` and ``lwmkit.tokenizers``; never the trainer.
"""
