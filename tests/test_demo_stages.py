"""The demo derives its per-stage calls from its training config (the one source of seq_len)."""

from __future__ import annotations

from lwmkit.demo import SIZES, stage_commands
from lwmkit.runtime.config import load_config
from lwmkit.schemas import TrainConfig


def test_demo_pack_and_needle_calls_come_from_the_training_config():
    size = SIZES["smallest"]
    stages = load_config(TrainConfig, str(size.train_config)).stages
    commands = stage_commands(size)
    assert len(commands) == len(size.stages) == len(stages)
    for stage, cmds in zip(stages, commands, strict=True):
        pack = cmds["pack"]
        assert "--seq-len" not in pack and "--out" not in pack
        assert pack[pack.index("--train") + 1] == str(size.train_config)
        assert pack[pack.index("--stage") + 1] == stage.name
        needle = cmds["needle-data"]
        assert needle[needle.index("--seq-len") + 1] == str(stage.seq_len)
        assert cmds["audit"][1] == stage.data  # the gate audits the folder the trainer reads
