"""What every layer shares, below tokenizers, pipelines and the trainer.

Imports only :mod:`lwmkit.schemas` and third-party packages, so any layer may use it:
``progress`` (the one way to report progress), ``config`` (YAML + ``--set`` -> a typed
config), ``files`` (the one atomic write and its temporary names, over fsspec or Beam's
FileSystems), ``dead_letters`` (the one dead-letter sink), ``sample_data`` (locating the
embedded sample inputs and the GGUF QA model), ``lease`` (one writer per output folder). Nothing is imported here, so
``import lwmkit.runtime.progress`` does not load Beam or JAX.
"""
