"""The JAX trainer: model, ring attention, mesh and sharding, shard reader, stages.

The trainer imports `lwmkit.schemas` and `lwmkit.tokenizers`; it never imports Beam.
"""
