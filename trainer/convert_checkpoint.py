"""Whole checkpoints in and out: LLaMA / LWM weights <-> lwmkit trainer checkpoints.

:mod:`lwmkit.trainer.convert` maps tensors; this module adds what a user's first and last
steps need around it: where the model's shape comes from (a training config's ``model``, a
Hugging Face ``config.json`` or Meta ``params.json``), the context and RoPE theta the weights
were trained at, the tokenizer id the trainer checks shards against, and the checkpoint
layout the trainer writes (``<out>/<stage>/final/0``, see :mod:`lwmkit.trainer.checkpoint`),
so ``init_from: <out>/<stage>`` and ``lwmkit eval needle --checkpoint`` accept it.

Imported weights carry no optimizer state (``meta["has_opt_state"]`` is false: a stage with
``carry_optimizer`` starts fresh moments). LLaMA weights are text-only: the recorded model
has ``vision_vocab_size`` 0 and a vision stage adds fresh vision parameters (``add_vision``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import ChainMap
from dataclasses import dataclass
from typing import Any

import numpy as np

from lwmkit.schemas import CheckpointConfig, ContractError, ModelConfig, StageConfig, TrainConfig, to_dict
from lwmkit.trainer import convert, convert_hf, hf_shards
from lwmkit.trainer.convert import clear_path, hf_config_json
from lwmkit.trainer.stored_params import StoredParams

FORMATS = ("hf", "llama-hf", "llama-meta", "lwm")
PICKLES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")
HF_FILES = ("model.safetensors", "config.json")
META_FILES = ("consolidated.safetensors", "params.json")


@dataclass(frozen=True)
class Source:
    """Weights to import: what they are and what the user says about them."""

    path: str
    format: str
    model: ModelConfig | None = None  # None = read from config.json / params.json
    tokenizer: str | None = None  # None = <folder>/tokenizer.model when there is one
    no_tokenizer: bool = False  # record no tokenizer id (the trainer then cannot check shards)
    seq_len: int | None = None  # None = from config.json (max_position_embeddings)
    rope_theta: float | None = None  # None = from config.json / params.json

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ContractError(f"unknown format {self.format!r}; use one of {', '.join(FORMATS)}", field="--format")
        if self.tokenizer is not None and self.no_tokenizer:
            raise ContractError("give --tokenizer or --no-tokenizer, not both", field="--no-tokenizer")
        if self.seq_len is not None and self.seq_len <= 0:
            raise ContractError("must be positive", field="--seq-len")
        if self.rope_theta is not None and self.rope_theta <= 0:
            raise ContractError("must be positive", field="--rope-theta")


def refuse_pickles(path: str) -> None:
    """PyTorch ``.pth``/``.bin`` files are pickles: loading one runs arbitrary code."""
    names = os.listdir(path) if os.path.isdir(path) else [path]
    if any(n.endswith(PICKLES) for n in names) and not any(n.endswith((".safetensors", "streaming_params")) for n in names):
        raise ContractError("holds pickled PyTorch weights (.pth/.bin); lwmkit never unpickles untrusted files: convert "
                            "them to safetensors in a trusted environment (transformers: save_pretrained(..., "
                            "safe_serialization=True))", source=path)


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ContractError(f"is not valid JSON ({err})", source=path) from None


def _folder(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def model_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    """Our ``ModelConfig`` (text-only) from a Hugging Face LLaMA ``config.json``."""
    try:
        d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        kv = int(hf.get("num_key_value_heads") or heads)
        fields = dict(text_vocab_size=int(hf["vocab_size"]), vision_vocab_size=0, d_model=d,
                      n_layers=int(hf["num_hidden_layers"]), n_heads=heads, n_kv_heads=None if kv == heads else kv,
                      mlp_dim=int(hf["intermediate_size"]), norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
    except KeyError as err:
        raise ContractError(f"config.json lacks {err.args[0]!r} (pass --config train.yaml instead)",
                            source=source) from None
    if hf.get("head_dim") not in (None, d // heads):
        raise ContractError(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads; not a LLaMA layout",
                            field="head_dim", source=source)
    if hf.get("hidden_act", "silu") != "silu":
        raise ContractError(f"hidden_act {hf['hidden_act']!r}: lwmkit's model is SwiGLU (silu)", field="hidden_act",
                            source=source)
    try:
        return ModelConfig(**fields)
    except ContractError as err:
        raise ContractError(f"maps to an invalid model ({err})", source=source) from None


def model_from_meta(params: dict[str, Any], vocab: int, source: str) -> ModelConfig:
    """Our ``ModelConfig`` from Meta's ``params.json`` (``vocab_size`` -1: from the embedding)."""
    d = int(params["dim"])
    hidden = int(2 * 4 * d / 3)  # Meta's FeedForward sizing
    if params.get("ffn_dim_multiplier"):
        hidden = int(float(params["ffn_dim_multiplier"]) * hidden)
    multiple = int(params.get("multiple_of", 256))
    heads = int(params["n_heads"])
    kv = int(params.get("n_kv_heads") or heads)
    return ModelConfig(text_vocab_size=vocab if int(params.get("vocab_size", -1)) <= 0 else int(params["vocab_size"]),
                       vision_vocab_size=0, d_model=d, n_layers=int(params["n_layers"]), n_heads=heads,
                       n_kv_heads=None if kv == heads else kv, mlp_dim=multiple * -(-hidden // multiple),
                       norm_eps=float(params.get("norm_eps", 1e-5)))


def meta_params_json(model: ModelConfig, rope_theta: float) -> dict[str, Any]:
    """Meta ``params.json`` whose FeedForward sizing gives back ``model.mlp_dim``."""
    base = int(2 * 4 * model.d_model / 3)
    sizing: dict[str, Any] = {"multiple_of": 256}
    if 256 * -(-base // 256) != model.mlp_dim:  # not LLaMA's own rule: pin the width exactly
        sizing = {"multiple_of": model.mlp_dim, "ffn_dim_multiplier": model.mlp_dim / base}
    return {"dim": model.d_model, "n_layers": model.n_layers, "n_heads": model.n_heads, "n_kv_heads": model.kv_heads,
            "vocab_size": model.text_vocab_size, "norm_eps": model.norm_eps, "rope_theta": rope_theta, **sizing}




# ---------------------------------------------------------------- import


@dataclass
class Loaded:
    params: Any
    model: ModelConfig
    seq_len: int | None  # what the source says about its context and RoPE (None: it does not)
    rope_theta: float | None


def _read_llama_hf(src: Source) -> Loaded:
    folder = _folder(src.path)
    hf = _read_json(os.path.join(folder, "config.json")) or {}
    if src.model is None and not hf:
        raise ContractError(f"no config.json in {folder} to read the model's shape from; pass --config train.yaml",
                            source=src.path)
    model = src.model or model_from_hf(hf, os.path.join(folder, "config.json"))
    if hf.get("rope_scaling"):
        from lwmkit.runtime.progress import warn

        warn(f"config.json sets rope_scaling {hf['rope_scaling']}; lwmkit's RoPE is unscaled (theta only)")
    tensors = ChainMap({}, convert.read_safetensors(src.path))  # renames and slices go in front
    split = convert_hf.vocab_split(hf, os.path.join(folder, "config.json"))
    vision: dict[str, np.ndarray] = {}
    if split is not None:  # an lwmkit export: the single vocabulary is text ids then vision ids
        if src.model is not None and (src.model.text_vocab_size, src.model.vision_vocab_size) != split:
            raise ContractError(f"--config's model has {src.model.text_vocab_size} text + {src.model.vision_vocab_size}"
                                f" vision ids; config.json records {split[0]} + {split[1]}", field="--config",
                                source=src.path)
        model = dataclasses.replace(model, text_vocab_size=split[0], vision_vocab_size=split[1])
        tensors, vision = convert_hf.split_vision(tensors, *split, source=src.path)
    if hf.get("tie_word_embeddings") and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # tied head: our head is its own copy
    theta = hf.get("rope_theta")
    seq = hf.get("max_position_embeddings")
    params = convert.from_llama(tensors, model, "hf", source=src.path)
    if vision:
        params = convert.unflatten({**convert.flatten(params), **vision})
    return Loaded(params, model, int(seq) if seq else None, float(theta) if theta else None)


def _read_llama_meta(src: Source) -> Loaded:
    tensors = convert.read_safetensors(src.path)
    params_json = _read_json(os.path.join(_folder(src.path), "params.json")) or {}
    model = src.model
    if model is None:
        if not params_json:
            raise ContractError(f"no params.json in {_folder(src.path)} to read the model's shape from; pass "
                                "--config train.yaml", source=src.path)
        vocab = tensors.shape("tok_embeddings.weight")[0] if "tok_embeddings.weight" in tensors else -1
        model = model_from_meta(params_json, int(vocab), src.path)
    theta = params_json.get("rope_theta")
    return Loaded(convert.from_llama(tensors, model, "meta", source=src.path), model, None,
                  float(theta) if theta else None)


def _read_lwm(src: Source) -> Loaded:
    if src.model is None:
        raise ContractError("an LWM streaming_params file records no model shape (head counts cannot be read from "
                            "tensors); pass --config train.yaml", field="--config", source=src.path)
    import msgpack

    try:
        params = convert.load_lwm(src.path, src.model)
    except (msgpack.UnpackException, ValueError, TypeError) as err:
        raise ContractError(f"is not an LWM/EasyLM streaming_params file ({type(err).__name__}: {err})",
                            source=src.path) from None
    return Loaded(params, src.model, None, None)


_READERS = {"hf": _read_llama_hf, "llama-hf": _read_llama_hf, "llama-meta": _read_llama_meta, "lwm": _read_lwm}


def _tokenizer(src: Source, model: ModelConfig):
    """The tokenizer whose id the checkpoint records, checked against the model's vocabulary."""
    from lwmkit.runtime.progress import step, warn
    from lwmkit.tokenizers.text import TextTokenizer

    path = src.tokenizer
    beside = os.path.join(_folder(src.path), "tokenizer.model")
    if path is None and not src.no_tokenizer and os.path.isfile(beside):
        path = beside
        step(f"tokenizer: {beside} (found beside the weights)")
    if path is None:
        if src.no_tokenizer:
            warn("no tokenizer recorded: `lwmkit train` cannot check that a stage's shards use this model's tokenizer")
            return None
        raise ContractError("no tokenizer given: pass --tokenizer tokenizer.model (its id is recorded so `lwmkit train` "
                            "refuses shards tokenized with another), or --no-tokenizer to record none",
                            field="--tokenizer", source=src.path)
    tok = TextTokenizer.load(path)
    if tok.vocab_size > model.text_vocab_size:
        raise ContractError(f"tokenizer has {tok.vocab_size} ids, the model's embedding only {model.text_vocab_size}",
                            field="--tokenizer", source=path)
    if tok.vocab_size < model.text_vocab_size:
        warn(f"tokenizer has {tok.vocab_size} ids, the model {model.text_vocab_size} (padded rows stay unused)")
    return tok


def _context(src: Source, loaded: Loaded) -> tuple[int, float]:
    seq = src.seq_len or loaded.seq_len
    theta = src.rope_theta or loaded.rope_theta
    for value, flag, hint in ((seq, "--seq-len", "the context length"), (theta, "--rope-theta", "the RoPE theta")):
        if value is None:
            raise ContractError(f"{src.format} weights do not record {hint} they were trained at; pass {flag} "
                                "(LLaMA-2: 4096 and 10000)", field=flag, source=src.path)
    return int(seq), float(theta)


def _stage_dir(out: str, stage: str) -> str:
    return f"{out.rstrip('/')}/{stage}"


def write_checkpoint(out: str, cfg: TrainConfig, params: Any, lineage: list[dict[str, Any]], *,
                     note: str, step: int = 0) -> str:
    """Write ``params`` as the final checkpoint of ``cfg``'s only stage, the way the trainer
    writes one (no optimizer state). Returns the stage folder ``<out>/<stage>``."""
    from lwmkit.trainer.checkpoint import StageCheckpoints, code_version

    stage = cfg.stages[0]
    meta = {"stage": stage.name, "stage_index": 0, "step": step, "global_step": step, "lineage": lineage,
            "init": note, "config": to_dict(cfg), "code_version": code_version(), "has_opt_state": False}
    # orbax writes every array at once by default, buffering ~0.8x the model; two largest arrays (at
    # least 0.5 GB) in flight keep the import near 1.3x at 1B params (benchmarks/RESULTS.md)
    largest = max((a.nbytes for a in convert.flatten(params).values()), default=0)
    ck = StageCheckpoints(out, stage.name, keep=1, async_save=False, final_save_gb=max(2 * largest, 5e8) / 1e9)
    ck.save(step, params, {"count": np.zeros((), np.int32)}, meta, final=True)
    ck.close()
    return ck.dir


def import_checkpoint(src: Source, out: str, *, stage_name: str = "import", overwrite: bool = False) -> str:
    """Read ``src`` and write it as a trainer checkpoint under ``out``; returns the stage folder."""
    from lwmkit.runtime.progress import step

    if "://" not in src.path and not os.path.exists(src.path):
        raise ContractError("does not exist", source=src.path)
    refuse_pickles(src.path)
    try:
        StageConfig(name=stage_name, seq_len=1, rope_theta=1.0, data="-", steps=1, batch_size=1)
    except ContractError as err:
        raise ContractError(err.reason, field="--stage-name") from None
    target = _stage_dir(os.path.abspath(out) if "://" not in out else out, stage_name)
    clear_path(target, overwrite, "a checkpoint", may_hold=("final", "steps"))  # refuse before reading gigabytes
    step(f"reading {src.format} weights from {src.path}")
    loaded = _READERS[src.format](src)
    model, params = loaded.model, loaded.params
    if convert.missing_vision(params, _abstract(model)):
        model = dataclasses.replace(model, vision_vocab_size=0)
        step("text-only weights: recorded as a model with vision_vocab_size 0 (a vision stage needs add_vision: true)")
    seq_len, theta = _context(src, loaded)
    tok = _tokenizer(src, model)
    flat = convert.flatten(params)
    n = sum(int(np.prod(np.shape(v))) for v in flat.values())
    step(f"{n:,} parameters: d_model {model.d_model}, {model.n_layers} layers, {model.n_heads} heads "
         f"({model.kv_heads} kv), vocab {model.text_vocab_size}+{model.vision_vocab_size}; context {seq_len}, "
         f"RoPE theta {theta:g}")
    stage = StageConfig(name=stage_name, seq_len=seq_len, rope_theta=theta, data=src.path, steps=1, batch_size=1)
    cfg = TrainConfig(model=model, stages=(stage,), checkpoint=CheckpointConfig(dir=out),
                      tokenizer_id=tok.id if tok else None)
    entry = {"stage": stage_name, "imported_from": os.path.abspath(src.path) if "://" not in src.path else src.path,
             "format": src.format, "tokenizer_id": tok.id if tok else None, "tokenizer": tok.path if tok else None,
             "seq_len": seq_len, "rope_theta": theta}
    del loaded, params  # the flat dict holds the only references: each host array goes as its copy is made
    path = write_checkpoint(out, cfg, _as_device_arrays(flat), [entry], note=f"imported from {src.path} ({src.format})")
    step(f"wrote {path}/final/0")
    return path


def _as_device_arrays(flat: dict[str, Any]) -> Any:
    """The tree of ``flat``'s leaves as JAX arrays, converted a leaf at a time in place (a host
    array the caller no longer holds is freed as its copy is made): orbax saves JAX arrays with
    ~0.8x the model in buffers, host numpy arrays with ~1.8x (benchmarks/RESULTS.md)."""
    import jax.numpy as jnp

    for key in list(flat):
        flat[key] = jnp.asarray(flat[key])
    return convert.unflatten(flat)


def _abstract(model: ModelConfig) -> Any:
    from lwmkit.trainer.model import param_shapes

    return param_shapes(model)


# ---------------------------------------------------------------- export


def export_checkpoint(ckpt: str, fmt: str, out: str, *, text_only: bool = False, overwrite: bool = False,
                      tokenizer: str | None = None, no_tokenizer: bool = False, max_shard_size: str | None = None,
                      dtype: str | None = None) -> list[str]:
    """Write a trainer checkpoint (as ``load_model`` accepts) as a Hugging Face folder (``hf``:
    text or vision, see :mod:`lwmkit.trainer.convert_hf`), LLaMA safetensors or an LWM
    ``streaming_params`` file. LLaMA formats hold text only: a model with vision parameters
    is refused unless ``text_only`` (then ``vte``/``vision_head`` are dropped). ``hf`` alone takes
    ``max_shard_size`` and ``dtype`` (None: 5GB shards, float32). Every format streams: params
    are read, converted and written one at a time. Returns the files."""
    from lwmkit.runtime.progress import step, warn

    if fmt not in FORMATS:
        raise ContractError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", field="--format")
    if fmt != "hf" and (tokenizer is not None or no_tokenizer):
        raise ContractError("--tokenizer / --no-tokenizer go with --format hf (the only format that writes tokenizer "
                            "files)", field="--tokenizer")
    for value, flag in ((max_shard_size, "--max-shard-size"), (dtype, "--dtype")):
        if fmt != "hf" and value is not None:
            raise ContractError(f"{flag} goes with --format hf", field=flag)
    if fmt == "hf":
        if text_only:
            raise ContractError("--format hf keeps the vision vocabulary; --text-only goes with llama-hf / llama-meta",
                                field="--text-only")
        options = {k: v for k, v in (("max_shard_size", max_shard_size), ("dtype", dtype)) if v is not None}
        return convert_hf.export_hf(ckpt, out, tokenizer=tokenizer, no_tokenizer=no_tokenizer, overwrite=overwrite,
                                    **options)
    # read a tensor at a time (never the whole model on the host or a device), as for hf
    stored = StoredParams(ckpt)
    model, stage = stored.model, stored.stage
    if fmt == "lwm":
        out = os.path.join(out, "streaming_params") if os.path.isdir(out) else out
        clear_path(out, overwrite, "an exported model")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        convert.save_lwm(((key, stored(key)) for key in stored.shapes), out)
        step(f"wrote {out} (load it in LWM as params::{os.path.abspath(out)})")
        return [out]
    vision = [k for k in convert.VISION_KEYS if k in stored.shapes]
    if vision and not text_only:
        raise ContractError(f"the model has vision parameters ({', '.join(vision)}) that LLaMA formats cannot hold; "
                            "pass --text-only to drop them, or export --format lwm", field="--format", source=ckpt)
    if vision:
        warn(f"dropping {', '.join(vision)}: the exported LLaMA model is text-only")
    model = dataclasses.replace(model, vision_vocab_size=0)
    names = HF_FILES if fmt == "llama-hf" else META_FILES
    files = [os.path.join(out, n) for n in names]
    for f in files:
        clear_path(f, overwrite, "an exported model")
    os.makedirs(out, exist_ok=True)
    layout = "hf" if fmt == "llama-hf" else "meta"
    tensors = convert_hf.hf_tensors(model, stored, "float32", layout)
    hf_shards.write_file(files[0], tensors, {"format": "pt", "converted_by": "lwmkit"})
    theta = stage.rope_theta
    if fmt == "llama-hf":
        record = hf_config_json(model, stage.seq_len, theta)
        if not (stored.lineage and stored.lineage[-1].get("tokenizer_id")):
            warn("the checkpoint records no tokenizer; config.json assumes LLaMA's bos 1 / eos 2")
    else:
        record = meta_params_json(model, theta)
    with open(files[1], "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    step(f"wrote {out}: {names[0]} + {names[1]} (stage '{stage.name}', context {stage.seq_len}, theta {theta:g}); "
         "copy the model's tokenizer.model beside them")
    return files
