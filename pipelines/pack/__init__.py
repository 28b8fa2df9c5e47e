"""The pack job: a mixture + a stage -> packed webdataset shards + manifest.

``job`` (flags, graph, run), ``sources`` (reading records), ``formatting`` (records -> examples),
``sequences`` (fit to length), ``mixture`` (quotas, sampling), ``packing`` (bins), ``write``
(shards, manifest), ``rejects`` (why a source came out empty).
"""
