"""Shared by the convert tests: the ``lwmkit convert`` CLI in this process, a trainer checkpoint
written from params, and params compared exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lwmkit.tokenizers.text import default_model_path

TOKENIZER = str(default_model_path())


class ConvertKit:
    @staticmethod
    def run(*args: str) -> int:
        """``lwmkit convert ARGS``'s exit status (0 when main returns)."""
        from lwmkit.cli import main

        try:
            main(["convert", *args])
        except SystemExit as ex:
            return int(ex.code or 0)
        return 0

    @classmethod
    def refused(cls, capsys, *args: str) -> str:
        """The one ``error:`` line of a command that must exit 2."""
        capsys.readouterr()
        assert cls.run(*args) == 2, args
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, lines
        return lines[0]

    @staticmethod
    def checkpoint(root: Path, model, params, *, seq_len: int, rope_theta: float,
                   tokenizer: str | None = TOKENIZER) -> str:  # fmt: skip
        """A one-stage ('vis') trainer checkpoint of ``params`` under ``root``; its folder."""
        from lwmkit.schemas import CheckpointConfig, StageConfig, TrainConfig
        from lwmkit.tokenizers.text import TextTokenizer
        from lwmkit.trainer.convert_checkpoint import write_checkpoint

        stage = StageConfig(name="vis", seq_len=seq_len, rope_theta=rope_theta, data="-", steps=1, batch_size=1)
        tok_id = TextTokenizer.load(TOKENIZER).id
        cfg = TrainConfig(model=model, stages=(stage,), checkpoint=CheckpointConfig(dir=str(root)),
                          tokenizer_id=tok_id)  # fmt: skip
        entry = {"stage": "vis", "tokenizer_id": tok_id, "tokenizer": tokenizer, "seq_len": seq_len,
                 "rope_theta": rope_theta}  # fmt: skip
        return write_checkpoint(str(root), cfg, params, [entry], note="test")

    @staticmethod
    def same(a, b) -> bool:
        """Two param trees with the same paths and bit-equal arrays."""
        from lwmkit.trainer import convert

        fa, fb = convert.flatten(a), convert.flatten(b)
        return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


@pytest.fixture(scope="session")
def convert_kit() -> ConvertKit:
    return ConvertKit()
