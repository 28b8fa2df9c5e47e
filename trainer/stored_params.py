"""A trainer checkpoint's parameters read one at a time (what a streaming export needs)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lwmkit.schemas import ContractError
from lwmkit.trainer import convert
from lwmkit.trainer.model import param_shapes


class StoredParams:
    """A trainer checkpoint's params read one at a time, as host numpy arrays (orbax's partial
    restore), so an export never holds more than a tensor or two of the model."""

    def __init__(self, ckpt: str):
        from lwmkit.schemas import TrainConfig
        from lwmkit.schemas.strict import from_dict
        from lwmkit.trainer.checkpoint import open_checkpoint, params_metadata, read_meta

        try:
            manager, step = open_checkpoint(os.path.abspath(ckpt) if "://" not in ckpt else ckpt)
        except FileNotFoundError as err:
            raise ContractError(str(err), source=ckpt) from None
        try:
            meta = read_meta(manager, step)
            self.shapes = convert.flatten(params_metadata(manager, step))
        finally:
            manager.close()
        self.path = manager.directory / str(step) / "params"
        cfg = from_dict(TrainConfig, meta["config"], source=f"{ckpt} (meta.config)")
        self.model = cfg.model
        self.lineage: list[dict[str, Any]] = list(meta.get("lineage") or [])
        self.stage = next((s for s in cfg.stages if s.name == meta["stage"]), None)
        if self.stage is None:
            raise ContractError(f"stage {meta['stage']!r} is not in the checkpoint's config", source=ckpt)
        convert.check_shapes(convert.unflatten(dict(self.shapes)), self.model, ckpt)
        if self.model.vision_vocab_size and convert.missing_vision(
            convert.unflatten(dict(self.shapes)), param_shapes(self.model)
        ):
            raise ContractError("the model has a vision vocabulary but no vision parameters", source=ckpt)

    def __call__(self, key: str) -> np.ndarray:
        import orbax.checkpoint as ocp

        item = convert.unflatten({key: self.shapes[key]})
        args = convert.unflatten({key: ocp.RestoreArgs(restore_type=np.ndarray)})
        got = ocp.PyTreeCheckpointer().restore(
            self.path, args=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
        )
        return convert.flatten(got)[key]
