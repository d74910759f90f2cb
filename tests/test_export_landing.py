"""Where `llmtune export` may write (issue 20, item 2): never into an input of the run (its model,
the base its adapter was trained on, its data, its recipe), whatever path reaches it; a
re-export replaces only what the export wrote and keeps what the user added; a damaged model
folder (truncated weights, a dangling link) is exit 2 naming the file."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import assert_bad_input, classification_data, invoke, write

pytestmark = pytest.mark.slow


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/: a model folder that is itself an earlier llmtune export (a merged classifier);
    run/: a LoRA run trained on it (model.path: base)."""
    from llmtune.models.scratch import build_scratch_model, build_tokenizer
    from llmtune.recipes.common import ScratchModel

    folder = tmp_path_factory.mktemp("landing")
    spec = ScratchModel(architecture="llama", hidden_size=32, num_layers=2, num_heads=2)
    tokenizer = build_tokenizer(spec, [])
    model = build_scratch_model(spec, tokenizer, head="classification", labels=["neg", "pos"])
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    write(folder / "base" / ".llmtune-export.json", '{"format": "hf"}')
    classification_data(folder)
    recipe = write(
        folder / "lora.yaml",
        """kind: finetune
task: classification
model: {path: base}
method: {type: lora, r: 4}
data: {train: cls_train.jsonl, test: cls_test.jsonl, max_length: 32}
training: {max_steps: 2, batch_size: 8, learning_rate: 1.0e-2}
output: {dir: run}
""",
    )
    result = invoke("finetune", recipe)
    assert result.code == 0, result.stderr[-3000:]
    return folder


def test_export_never_writes_into_an_input_of_the_run(project: Path, tmp_path: Path) -> None:
    before = snapshot(project)
    os.symlink(project / "base", tmp_path / "link-to-base")
    os.symlink(project, tmp_path / "link-to-project")
    for output, expected in [
        (project / "base", "trained on"),  # an earlier export, but an input
        (tmp_path / "link-to-base", "trained on"),
        (tmp_path / "link-to-project" / "base" / "sub", "trained on"),
        (project / "run" / "model", "the model being exported"),
        (project / "cls_train.jsonl", "a data file of the run"),
        (project / "lora.yaml", "the run's recipe"),
        (project, "is, holds or is inside"),  # holds inputs
    ]:
        for fmt in ("hf", "onnx"):
            assert_bad_input(invoke("export", project / "run", "--format", fmt, "--output", output), expected)
    assert snapshot(project) == before


def test_a_re_export_keeps_the_users_files(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    assert invoke("export", project / "run", "--output", out, "--no-verify").code == 0
    write(out / "handler.py", "def handle(): ...\n")
    write(out / "notes" / "serving.md", "how we serve it\n")
    (out / "README.md").write_text("edited card\n")  # the card is the export's: a re-export rewrites it
    again = invoke("export", project / "run", "--output", out)
    assert again.code == 0, again.stderr[-2000:]
    assert (out / "handler.py").read_text() == "def handle(): ...\n"
    assert (out / "notes" / "serving.md").read_text() == "how we serve it\n"
    assert (out / "README.md").read_text().startswith("---") and (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".llmtune-tmp")]


def test_an_earlier_export_with_a_users_readme_is_not_overwritten(project: Path, tmp_path: Path) -> None:
    """An export from before the marker listed its files never wrote README.md: it is the user's."""
    out = tmp_path / "old"
    assert invoke("export", project / "run", "--output", out, "--no-verify").code == 0
    write(out / ".llmtune-export.json", '{"merged": true}')  # as llmtune 0.2 wrote it
    write(out / "README.md", "my own notes\n")
    before = snapshot(out)
    assert_bad_input(invoke("export", project / "run", "--output", out), "README.md", "move it away")
    assert snapshot(out) == before


@pytest.mark.parametrize("damage", ["truncated", "dangling"])
def test_a_damaged_model_folder_is_exit_2_naming_the_file(project: Path, tmp_path: Path, damage: str) -> None:
    model = Path(shutil.copytree(project / "run" / "model", tmp_path / "model"))
    if damage == "truncated":
        weights = model / "adapter_model.safetensors"
        os.truncate(weights, weights.stat().st_size // 2)
        named = "adapter_model.safetensors"
    else:
        os.symlink(tmp_path / "gone.safetensors", model / "extra.safetensors")
        named = "extra.safetensors"
    for fmt in ("hf", "onnx"):
        result = invoke("export", model, "--format", fmt, "--output", tmp_path / "out")
        assert_bad_input(result, named)
    assert not (tmp_path / "out").exists()
