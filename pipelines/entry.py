"""``python -m lwmkit.pipelines.JOB``: one entry point for every job's ``main()``.

No arguments or ``--help`` print the job's help; a ContractError (bad flag or input) is one line and
exit 2; the job's own failures (``failures``: it ran, too much failed) are one line and exit 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from lwmkit.runtime.progress import error
from lwmkit.schemas.errors import ContractError


def job_main(argv: Sequence[str] | None, run: Callable[[list[str]], Any], help_text: Callable[[str], str],
             job: str, failures: tuple[type[BaseException], ...] = ()) -> None:  # fmt: skip
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or "-h" in args or "--help" in args:
        print(help_text(f"python -m lwmkit.pipelines.{job}"))
        return
    try:
        run(args)
    except ContractError as err:
        error(str(err))
        sys.exit(2)
    except failures as err:
        error(str(err))
        sys.exit(1)
