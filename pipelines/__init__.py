"""Apache Beam jobs, one module per job (vision, books, pack, audit).

Pipelines import `lwmkit.schemas` and `lwmkit.tokenizers`; they never import the trainer.
"""
