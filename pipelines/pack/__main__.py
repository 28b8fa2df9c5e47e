"""``python -m lwmkit.pipelines.pack``: the same as ``lwmkit pack``."""

from lwmkit.pipelines.pack.job import main

main()
