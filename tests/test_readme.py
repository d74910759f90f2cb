"""The commands in README.md and docs/first-hour.md cannot rot: every `llmtune ...` line of their
```bash blocks names a verb and options the CLI has, every recipes/ and data/ path exists, every
runs/NAME is a run some recipe (or a recipe the docs write with `llmtune init`) makes, every
shipped recipe named validates, and every relative link in the README points at a file. The
five steps' `init --from` commands run on the shipped data/tickets files. In-process: no model
loads, no subprocess."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from llmtune.cli import app

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/first-hour.md")  # commands, paths and links checked
REFERENCE = tuple(  # the reference moved out of the README: commands and links checked
    f"docs/{name}.md"
    for name in (
        "recipes",
        "finetune",
        "bulk-infer",
        "distill",
        "rlhf",
        "distributed",
        "architecture",
        "prompt-eval",
    )
)

# Verbs and options the README already documents whose code is on other branches being merged
# now. THE LEAD EMPTIES THESE AT MERGE (then every one of them must exist).
ARRIVING_FROM_OTHER_BRANCHES: dict[str, str] = {}
ARRIVING_FILES: set[str] = set()  # linked from the docs, written on branches not merged yet

SHELL_SPLIT = re.compile(r"\s*(?:\|\||&&|\||;)\s*")


def bash_lines(doc: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside the doc's ```bash blocks."""
    found, inside = [], False
    for number, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside and line.strip() == "```bash"
        elif inside and found and found[-1][1].endswith("\\"):  # a continued line
            found[-1] = (found[-1][0], found[-1][1][:-1] + " " + line.strip())
        elif inside:
            found.append((number, line))
    return found


def llmtune_commands(doc: str) -> list[tuple[str, list[str]]]:
    """('doc:line', the arguments after `llmtune`) for every llmtune command in the doc's blocks."""
    commands = []
    for number, line in bash_lines(doc):
        for part in SHELL_SPLIT.split(line.strip().removeprefix("$ ")):
            words = shlex.split(part, comments=True)
            starts = [i for i, w in enumerate(words) if w == "llmtune" or w.endswith("/llmtune")]
            if starts and len(words) > starts[0] + 1:
                commands.append((f"{doc}:{number}", words[starts[0] + 1 :]))
    return commands


ALL = [c for doc in DOCS + REFERENCE for c in llmtune_commands(doc)]
CLI = get_command(app)


def test_the_docs_have_commands_to_check() -> None:
    assert len(llmtune_commands("README.md")) >= 25
    assert len(llmtune_commands("docs/first-hour.md")) >= 8


@pytest.mark.parametrize(("where", "words"), ALL, ids=[w for w, _ in ALL])
def test_each_command_names_a_verb_and_options_the_cli_has(where: str, words: list[str]) -> None:
    verb = words[0]
    if verb.startswith("-"):
        assert verb in {"--help", "--version"}, f"{where}: llmtune {verb}"
        return
    command = CLI.commands.get(verb)
    if command is None:
        assert verb in ARRIVING_FROM_OTHER_BRANCHES, f"{where}: no verb {verb!r}"
        return
    rest = words[1:]
    if isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    options = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for word in rest:
        name = word.split("=")[0]
        if word.startswith("-") and name not in options:
            assert f"{verb} {name}" in ARRIVING_FROM_OTHER_BRANCHES, f"{where}: llmtune {verb} has no {name}"


def run_names() -> set[str]:
    """Names of the runs the shipped recipes make (`name:`, else the file's stem), and of the
    recipes the docs write with `llmtune init KIND FILE`."""
    names = set()
    for recipe in (REPO / "recipes").glob("*.yaml"):
        body = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
        names |= {recipe.stem, str(body.get("name") or recipe.stem)}
    for _, words in ALL:
        if words[:1] == ["init"] and len(words) > 2 and not words[2].startswith("-"):
            names.add(Path(words[2]).stem)
    return names


def written_recipes(doc: str) -> set[str]:
    return {w[2] for _, w in llmtune_commands(doc) if w[:1] == ["init"] and len(w) > 2}


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_command_names_exists(doc: str) -> None:
    runs, written = run_names(), written_recipes(doc)
    for where, words in llmtune_commands(doc):
        for word in words:
            if word.startswith(("recipes/", "data/")):
                assert (REPO / word).exists(), f"{where}: {word} is not in the repository"
            elif word.startswith("runs/"):
                assert word.split("/")[1] in runs, f"{where}: no recipe makes {word}"
            elif word.endswith((".yaml", ".yml")):
                assert word in written, f"{where}: {word} is neither shipped nor written by llmtune init"


def test_every_shipped_recipe_named_validates() -> None:
    named = sorted({w for _, words in ALL for w in words if re.fullmatch(r"recipes/[\w.-]+\.ya?ml", w)})
    assert len(named) >= 10
    result = CliRunner().invoke(app, ["validate", *(str(REPO / r) for r in named)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("doc", DOCS + REFERENCE)
def test_every_relative_link_points_at_a_file(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    targets = [(REPO / doc).parent / link for link in links if "://" not in link]
    missing = [
        str(target.resolve().relative_to(REPO))
        for target in targets
        if not target.exists() and str(target.resolve().relative_to(REPO)) not in ARRIVING_FILES
    ]
    assert not missing, f"{doc}: {missing}"
    if doc == "README.md":
        assert len(targets) >= 15


def test_the_five_steps_starters_come_from_the_shipped_tickets(tmp_path: Path) -> None:
    """Step 1 and step 5's `init --from` on data/tickets: the columns are found, and the starters
    validate. An unlabelled file's only text column is its text, never its label."""
    runner = CliRunner()
    train, new = REPO / "data/tickets/train.csv", REPO / "data/tickets/new.csv"
    result = runner.invoke(app, ["init", "finetune", str(tmp_path / "tickets.yaml"), "--from", str(train)])
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load((tmp_path / "tickets.yaml").read_text(encoding="utf-8"))
    assert recipe["data"]["columns"] == {"id": "ticket_id", "text": "body", "label": "category"}
    assert recipe["labels"] == ["billing", "bug", "feature-request"]
    assert "name" not in recipe

    result = runner.invoke(app, ["init", "bulk-infer", str(tmp_path / "label.yaml"), "--from", str(new)])
    assert result.exit_code == 0, result.output
    assert "no column looks like a label" not in result.output
    label = yaml.safe_load((tmp_path / "label.yaml").read_text(encoding="utf-8"))
    assert label["input"]["columns"] == {"text": "body"}
    assert label["input"]["id_column"] == "ticket_id"

    result = runner.invoke(app, ["validate", str(tmp_path / "tickets.yaml"), str(tmp_path / "label.yaml")])
    assert result.exit_code == 0, result.output
