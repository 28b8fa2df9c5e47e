"""lwmkit / LWM checkpoints as Hugging Face Llama folders that ``transformers`` and vLLM load.

LWM's vision model is a Llama whose input embedding and output head are picked by the vision
mask: ``wte``/``lm_head`` on text, ``vte``/``vision_head`` on vision codes and the
end-of-frame / end-of-vision markers. With ONE vocabulary of text ids followed by vision ids
(vision id ``v`` -> ``text_vocab_size + v``) that is a plain ``LlamaForCausalLM`` whose
``embed_tokens`` is ``[wte; vte]`` and whose ``lm_head`` is ``[lm_head; vision_head]``: the
same function, so every Llama runtime serves it. Its logits are LWM's text logits followed
by its vision logits; restricting sampling to one range gives exactly LWM's distribution for
that modality (text after a video: ids ``< text_vocab_size``).

``config.json`` records the split under :data:`RECORD` so ``lwmkit convert import`` restores
``vte`` / ``vision_head`` exactly, and so :func:`vision_ids` can map a vision record's codes
to ids (``<vision>``, per frame its codes then end-of-frame -- end-of-vision after the last
--, ``</vision>``) exactly as lwmkit packs them.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from lwmkit.schemas import ContractError, ModelConfig
from lwmkit.schemas.vocab import VocabLayout
from lwmkit.trainer import convert, hf_shards
from lwmkit.trainer.model import param_shapes
from lwmkit.trainer.stored_params import StoredParams

RECORD = "lwm_vocab"  # config.json key: how the single vocabulary splits into text and vision ids
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


# ---------------------------------------------------------------- tensors


def hf_tensors(
    model: ModelConfig, read: Callable[[str], Any], dtype: str = "float32", layout: convert.Layout = "hf"
) -> list[hf_shards.Tensor]:
    """The HF Llama tensors of a text or vision model, each made on demand from the params
    ``read(path)`` gives one at a time (vision rows follow the text rows; neither block is
    joined to the other in memory). ``layout="meta"``: Meta's names and q/k row order, text only."""
    text_model = ModelConfig(**{**model.__dict__, "vision_vocab_size": 0})
    if layout != "hf" and model.vision_vocab_size:
        raise ValueError("Meta's LLaMA layout holds text only: pass the text model")
    vision = {EMBED: convert.VISION_KEYS[0], HEAD: convert.VISION_KEYS[1]} if model.vision_vocab_size else {}
    want = convert.flatten(param_shapes(text_model))
    out = []
    for ours, theirs in convert.llama_names(text_model, layout).items():
        shape = tuple(want[ours].shape)
        if len(shape) == 2 and not ours.endswith("embedding"):
            shape = shape[::-1]  # [in, out] -> [out, in]
        keys = [ours]
        if theirs in vision:
            shape = (shape[0] + model.vision_vocab_size, shape[1])
            keys.append(vision[theirs])
        parts = functools.partial(_rows, read, keys, text_model, layout)
        out.append(hf_shards.Tensor(theirs, shape, dtype, parts))
    return out


def _rows(
    read: Callable[[str], Any], keys: list[str], model: ModelConfig, layout: convert.Layout
) -> Iterator[np.ndarray]:
    """The HF rows of our params ``keys`` (one tensor's blocks, in order), a param at a time.
    A param is converted whole: orbax's restore already holds it twice (its read buffer and
    the array), so a whole transposed copy raises no peak."""
    for key in keys:
        if key == convert.VISION_KEYS[0]:
            yield np.asarray(read(key), np.float32)
        elif key == convert.VISION_KEYS[1]:
            yield np.asarray(read(key), np.float32).T  # vision_head is [d, Vv]: its HF rows are its columns
        else:
            yield convert.to_llama_tensor(key, read(key), model, layout)


def to_hf(params: convert.Tree, model: ModelConfig) -> dict[str, np.ndarray]:
    """HF Llama tensors of a text or vision model, all in memory (fp32)."""
    flat = convert.flatten(params)
    return {
        t.name: np.ascontiguousarray(np.concatenate([np.asarray(b, np.float32) for b in t.parts()]))
        for t in hf_tensors(model, flat.__getitem__)
    }


def split_vision(
    tensors: MutableMapping[str, np.ndarray], text_vocab: int, vision_vocab: int, source: str = ""
) -> tuple[MutableMapping[str, np.ndarray], dict[str, np.ndarray]]:
    """``(text tensors, {vision param path: array})`` of an exported vision model (``tensors``, a
    dict or a ``ChainMap`` over lazily read safetensors, is not changed)."""
    out = tensors.copy()
    full = {}
    for name in (EMBED, HEAD):
        if name not in out:
            raise ContractError("tensor is missing", field=name, source=source)
        full[name] = out[name]  # read once
        if full[name].shape[0] != text_vocab + vision_vocab:
            raise ContractError(
                f"has {full[name].shape[0]} rows; config.json's {RECORD} says {text_vocab} text + "
                f"{vision_vocab} vision ids",
                field=name,
                source=source,
            )
    vision = {
        convert.VISION_KEYS[0]: np.asarray(full[EMBED][text_vocab:], np.float32),
        convert.VISION_KEYS[1]: np.ascontiguousarray(np.asarray(full[HEAD][text_vocab:], np.float32).T),
    }
    out[EMBED], out[HEAD] = full[EMBED][:text_vocab], full[HEAD][:text_vocab]
    return out, vision


def vocab_split(hf: Mapping[str, Any], source: str = "") -> tuple[int, int] | None:
    """``(text_vocab_size, vision_vocab_size)`` a ``config.json`` records (None: text-only)."""
    rec = hf.get(RECORD)
    if rec is None:
        return None
    try:
        text, vision = int(rec["text_vocab_size"]), int(rec["vision_vocab_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise ContractError(f"{RECORD} is malformed ({err})", field=RECORD, source=source) from None
    if text <= 0 or vision < 0 or text + vision != int(hf.get("vocab_size", -1)):
        raise ContractError(
            f"{RECORD} says {text} text + {vision} vision ids; vocab_size is {hf.get('vocab_size')}",
            field=RECORD,
            source=source,
        )
    return text, vision


# ---------------------------------------------------------------- ids


def layout_record(model: ModelConfig, layout: VocabLayout | None) -> dict[str, Any]:
    """What :data:`RECORD` holds: the split, and (with a tokenizer) the vision block's ids."""
    rec: dict[str, Any] = {
        "text_vocab_size": model.text_vocab_size,
        "vision_vocab_size": model.vision_vocab_size,
        "vision_id_offset": model.text_vocab_size,
    }
    if layout is not None:
        rec.update(
            n_codes=layout.n_codes,
            codes_per_frame=layout.codes_per_frame,
            end_of_frame_id=layout.end_of_frame_id,
            end_of_vision_id=layout.end_of_vision_id,
            vision_start_ids=list(layout.vision_start_ids),
            vision_end_ids=list(layout.vision_end_ids),
            bos_id=layout.bos_id,
            eos_id=layout.eos_id,
        )
    return rec


def load_layout(folder: str) -> VocabLayout:
    """The vision layout an exported folder records (its ``config.json``)."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, ValueError) as err:
        raise ContractError(f"cannot read ({err})", source=path) from None
    rec = hf.get(RECORD) or {}
    if "vision_start_ids" not in rec:
        raise ContractError(
            f"records no vision layout ({RECORD}.vision_start_ids): not a vision export made with a "
            "tokenizer",
            source=path,
        )
    return VocabLayout(
        text_vocab_size=int(rec["text_vocab_size"]),
        bos_id=int(rec["bos_id"]),
        eos_id=int(rec["eos_id"]),
        vision_start_ids=tuple(rec["vision_start_ids"]),
        vision_end_ids=tuple(rec["vision_end_ids"]),
        vision_vocab_size=int(rec["vision_vocab_size"]),
        n_codes=int(rec["n_codes"]),
        end_of_frame_id=int(rec["end_of_frame_id"]),
        end_of_vision_id=int(rec["end_of_vision_id"]),
        codes_per_frame=int(rec["codes_per_frame"]),
    )


def to_hf_ids(ids: np.ndarray, vision_mask: np.ndarray, text_vocab_size: int) -> np.ndarray:
    """lwmkit's (ids, vision mask) -> ids of the single vocabulary (vision id v -> Vt + v)."""
    ids, mask = np.asarray(ids, np.int64), np.asarray(vision_mask, bool)
    if ids.shape != mask.shape:
        raise ContractError("ids and vision mask must have the same shape", field="vision_mask")
    return np.where(mask, ids + text_vocab_size, ids)


def from_hf_ids(ids: np.ndarray, text_vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_hf_ids`: ``(ids, vision_mask)`` as lwmkit's model takes them."""
    ids = np.asarray(ids, np.int64)
    mask = ids >= text_vocab_size
    return np.where(mask, ids - text_vocab_size, ids).astype(np.int32), mask


def vision_ids(codes: np.ndarray | Mapping[str, Any], layout: VocabLayout) -> np.ndarray:
    """Ids (single vocabulary) of one vision block for an exported model: ``<vision>``, each
    frame's codes then end-of-frame (end-of-vision after the last frame), ``</vision>`` --
    lwmkit's own :func:`~lwmkit.tokenizers.vision_layout.encode_block`, shifted.

    Args:
        codes: ``[n_frames, codes_per_frame]`` VQGAN codes, or a vision record (a
            ``VISION_RECORD`` row with ``tokens`` and ``n_frames``).
        layout: :func:`load_layout` of the exported folder.
    """
    from lwmkit.tokenizers.vision_layout import encode_block

    if isinstance(codes, Mapping):
        codes = np.asarray(codes["tokens"], np.int32).reshape(int(codes["n_frames"]), layout.codes_per_frame)
    ids, mask = encode_block(np.asarray(codes), layout)
    return to_hf_ids(ids, mask, layout.text_vocab_size)


# ---------------------------------------------------------------- folders


def config_json(
    model: ModelConfig, seq_len: int, rope_theta: float, layout: VocabLayout | None, bos_id: int, eos_id: int
) -> dict[str, Any]:
    """``config.json`` of the single-vocabulary Llama (text-only models record no split)."""
    record = convert.hf_config_json(model, seq_len, rope_theta, bos_id, eos_id)
    record["vocab_size"] = model.text_vocab_size + model.vision_vocab_size
    if model.vision_vocab_size:
        record[RECORD] = layout_record(model, layout)
    return record


def generation_config(bos_id: int, eos_id: int, pad_id: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    if pad_id is not None:
        out["pad_token_id"] = pad_id
    return out


HF_OUT = (
    hf_shards.SINGLE,
    hf_shards.INDEX,
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _tokenizer(
    ckpt: str, model: ModelConfig, lineage: list[dict[str, Any]], path: str | None, no_tokenizer: bool
):
    """The checkpoint's tokenizer: ``path``, else the file its lineage names (imports record
    one); its sha256 must be the one the checkpoint records."""
    from lwmkit.runtime.progress import step, warn
    from lwmkit.tokenizers.text import TextTokenizer

    if path is not None and no_tokenizer:
        raise ContractError("give --tokenizer or --no-tokenizer, not both", field="--no-tokenizer")
    if no_tokenizer:
        warn(
            "no tokenizer files written: the folder loads as a model, but text needs the model's tokenizer.model"
        )
        return None
    recorded_id = lineage[-1].get("tokenizer_id") if lineage else None
    if path is None:
        named = [
            e["tokenizer"]
            for e in reversed(lineage)
            if e.get("tokenizer")
            and os.path.isfile(e["tokenizer"])
            and e.get("tokenizer_id") in (None, recorded_id)
        ]
        if not named:
            raise ContractError(
                "the checkpoint names no tokenizer file: pass --tokenizer tokenizer.model (the one it "
                "was trained with; it is copied into the folder) or --no-tokenizer",
                field="--tokenizer",
                source=ckpt,
            )
        path = named[0]
        step(f"tokenizer: {path} (named by the checkpoint)")
    tok = TextTokenizer.load(path)
    if recorded_id is not None and tok.id != recorded_id:
        raise ContractError(
            f"is not the tokenizer the checkpoint was trained with (sha256 {tok.id[:12]}..., the "
            f"checkpoint records {recorded_id[:12]}...)",
            field="--tokenizer",
            source=path,
        )
    if tok.vocab_size > model.text_vocab_size:
        raise ContractError(
            f"tokenizer has {tok.vocab_size} ids, the model's embedding only {model.text_vocab_size}",
            field="--tokenizer",
            source=path,
        )
    return tok


def _layout(tok, model: ModelConfig) -> VocabLayout | None:
    """LWM's vision layout with the model's split (None: no tokenizer, or a vision vocabulary
    too small for LWM's 8192 codes + 2 markers, as in toy models)."""
    import dataclasses

    if tok is None or not model.vision_vocab_size:
        return None
    try:
        return dataclasses.replace(
            tok.vocab_layout(),
            text_vocab_size=model.text_vocab_size,
            vision_vocab_size=model.vision_vocab_size,
        )
    except ContractError as err:
        from lwmkit.runtime.progress import warn

        warn(f"no vision layout recorded ({err}): vision_ids() will not work on this folder")
        return None


def export_hf(
    ckpt: str,
    out: str,
    *,
    tokenizer: str | None = None,
    no_tokenizer: bool = False,
    overwrite: bool = False,
    max_shard_size: str = hf_shards.DEFAULT_MAX_SHARD,
    dtype: str = "float32",
) -> list[str]:
    """Write a trainer checkpoint (text or vision) as a Hugging Face Llama folder: safetensors
    (``model.safetensors``, or shards of at most ``max_shard_size`` plus their index), in
    ``dtype`` (float32, bfloat16 or float16), ``config.json`` (the stage's RoPE theta and
    context), ``generation_config.json`` and the tokenizer files. Params are read, converted
    and written one at a time: host memory holds a tensor or two, never the model. Returns
    the files written."""
    from lwmkit.runtime.progress import step
    from lwmkit.trainer.hf_tokenizer import write_tokenizer_files

    max_bytes = hf_shards.parse_size(max_shard_size)
    if dtype not in hf_shards.DTYPES:
        raise ContractError(
            f"unknown dtype {dtype!r}; use one of {', '.join(hf_shards.DTYPES)}", field="--dtype"
        )
    stored = StoredParams(ckpt)
    model, stage = stored.model, stored.stage
    tok = _tokenizer(ckpt, model, stored.lineage, tokenizer, no_tokenizer)
    for name in dict.fromkeys([*HF_OUT, *hf_shards.written(out)]):  # shards of an earlier export too
        convert.clear_path(os.path.join(out, name), overwrite, "an exported model")
    os.makedirs(out, exist_ok=True)
    for name in hf_shards.remove_temporaries(out):
        step(f"removed {name}, left by an export that was stopped")
    tensors = hf_tensors(model, stored, dtype)
    step(f"writing {sum(t.nbytes for t in tensors) / 1e9:.2f} GB of {dtype} weights from {ckpt}")
    files = hf_shards.write_folder(out, tensors, max_bytes, {"format": "pt", "converted_by": "lwmkit"})
    bos, eos = (tok.bos_id, tok.eos_id) if tok else (1, 2)
    record = config_json(model, stage.seq_len, stage.rope_theta, _layout(tok, model), bos, eos)
    record["torch_dtype"] = dtype
    records = {
        "config.json": record,
        "generation_config.json": generation_config(bos, eos, tok.pad_id if tok else None),
    }
    for name, record in records.items():
        files.append(os.path.join(out, name))
        with open(files[-1], "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    if tok is not None:
        import fsspec

        with fsspec.open(tok.path, "rb") as f:
            blob = f.read()
        files += write_tokenizer_files(
            blob, out, bos_id=bos, eos_id=eos, max_length=stage.seq_len, source=tok.path
        )
    vocab = (
        f"{model.text_vocab_size} text + {model.vision_vocab_size} vision ids"
        if model.vision_vocab_size
        else f"{model.text_vocab_size} text ids"
    )
    n_shards = sum(1 for f in files if f.endswith(".safetensors"))
    step(
        f"wrote {out}: LlamaForCausalLM, {vocab}, {n_shards} safetensors file(s) (stage '{stage.name}', "
        f"context {stage.seq_len}, theta {stage.rope_theta:g})"
    )
    return files
