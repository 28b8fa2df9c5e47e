"""``python -m lwmkit.pipelines.vision``: the same as ``lwmkit vision``."""

from lwmkit.pipelines.vision.job import main

main()
