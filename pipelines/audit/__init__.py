"""The audit: recount a packed shard set and judge it against its manifest and mixture.

``job`` (audit(), recount locally or as Beam), ``recount_job`` (the Beam job), ``shards``
(reading a set), ``stats`` (tallies), ``compare`` (findings, verdict), ``report``/``plots``.
"""
