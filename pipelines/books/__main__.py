"""``python -m lwmkit.pipelines.books``: the same as ``lwmkit books``."""

from lwmkit.pipelines.books.job import main

main()
