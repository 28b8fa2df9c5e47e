"""The VQGANs lwmkit has shipped as its default, so an error about records tokenized with an
earlier one can say where to get it back (records carry only the VQGAN's id).

Light on purpose (no JAX): the vision job and the needle tools import it on their error paths.
"""

from __future__ import annotations

FILE = "tokenizers/data/vqgan-lwmkit-small.msgpack"

# id -> (the last lwmkit commit that shipped it as the default, until when); newest last
EARLIER_DEFAULTS: dict[str, tuple[str, str]] = {
    "c6afbaf091a657c30dc4b9e1d3625e2b5c892c545d3d4035f4146355430f702e": ("72b982d", "2026-11-27"),
    "02663e3af3fd069b449b4ebff7e43982bb61d4514706cfa6651411aee10d7127": ("a7fe42a", "2026-11-28"),
}


def earlier_default_hint(vqgan_id: str | None) -> str:
    """`` (lwmkit's default VQGAN until DATE: ...how to get it...)`` for an id (or a prefix of at least
    8 hex digits) that was once the shipped default; ``""`` otherwise."""
    if not vqgan_id or len(vqgan_id) < 8:
        return ""
    for full, (rev, until) in EARLIER_DEFAULTS.items():
        if full.startswith(vqgan_id.lower()):
            return (f" ({vqgan_id[:12]} was lwmkit's default VQGAN until {until}; from a checkout, "
                    f"`git show {rev}:{FILE} > vqgan-{full[:8]}.msgpack` gets it back)")  # fmt: skip
    return ""
