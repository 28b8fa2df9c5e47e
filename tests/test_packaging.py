"""The wheel ships only `lwmkit` (no top-level tokenizers/trainer/pipelines/schemas), and
Hugging Face's `tokenizers` still imports beside it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("lwmkit-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_has_only_the_lwmkit_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"lwmkit"}
    for sub in ("schemas", "tokenizers", "pipelines", "trainer"):
        assert f"lwmkit/{sub}/__init__.py" in names
    assert "lwmkit/tokenizers/data/lwmkit-botchan-bpe8k.model" in names
    # the demo and the proof run from a wheel: their configs ship inside lwmkit/
    for cfg in ("demo/train-smallest.yaml", "demo/mixture.yaml", "longctx-proof/train.yaml"):
        assert f"lwmkit/configs/{cfg}" in names
    assert not any(n.startswith("lwmkit/tests") or "/tests/" in n for n in names)


@pytest.mark.slow
def test_wheel_installs_beside_hugging_face_tokenizers(wheel, tmp_path):
    pytest.importorskip("tokenizers")  # Hugging Face's, from the dev extra
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # the test's own environment (a venv: system_site_packages would reach the base interpreter's
    # instead) supplies the dependencies; a plain path line, so its editable lwmkit finder stays out
    deps = sysconfig.get_paths()["purelib"]
    (Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  text=True).strip()) / "deps.pth").write_text(deps + "\n")
    target = env_dir / "wheel-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True)
    site = str(target)
    code = (
        f"import sys; sys.path.insert(0, {site!r})\n"
        "import tokenizers, lwmkit, lwmkit.tokenizers.text as t, lwmkit.schemas\n"
        "assert hasattr(tokenizers, 'Tokenizer'), tokenizers.__file__\n"
        f"assert lwmkit.__file__.startswith({site!r}), lwmkit.__file__\n"
        "tok = t.TextTokenizer.load(); assert tok.decode(tok.encode('hello world')) == 'hello world'\n"
        "import lwmkit.demo as d; assert (d.CONFIG_DIR / 'train-smallest.yaml').is_file(), d.CONFIG_DIR\n"
        f"assert str(d.CONFIG_DIR).startswith({site!r}), d.CONFIG_DIR\n"
        "print('ok')\n"
    )
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_source_checkout_imports_from_the_repository_root():
    # `python -m lwmkit.pipelines.X` from a checkout resolves lwmkit.* to the top-level folders.
    code = "import lwmkit.tokenizers.text as t, lwmkit.schemas as s; print(t.__file__, s.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text_file, schemas_file = proc.stdout.split()
    assert text_file == str(ROOT / "tokenizers" / "text.py") and schemas_file == str(ROOT / "schemas" / "__init__.py")
