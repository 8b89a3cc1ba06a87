from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_command = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if ".venv/bin/pytest" in line]
    assert len(ci_command) == 1
    assert f"    {ci_command[0]}\n" in readme


def readme_cli_commands() -> list[str]:
    """Every `effdl ...` line of the README's shell blocks, continuation lines joined."""
    commands, in_shell, pending = [], False, ""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_shell = line.strip() == "```sh"
            continue
        if not in_shell:
            continue
        line = pending + line.strip()
        pending = line[:-1] + " " if line.endswith("\\") else ""
        if not pending and line.startswith("effdl "):
            commands.append(line)
    return commands


def test_every_readme_command_parses(tmp_path, monkeypatch):
    """The README's examples use the flags the CLI has (argparse exits 2 on an unknown one)."""
    import shlex

    from effdl.cli import build_parser

    commands = readme_cli_commands()
    assert len(commands) >= 15 and any("--bits 2" in c and "--distill" in c for c in commands)
    parser = build_parser()
    monkeypatch.chdir(tmp_path)  # the checkpoints the examples name exist there (they are checked on parsing)
    for command in commands:
        words = shlex.split(command, comments=True)[1:]
        for word in words:
            if word.endswith(".safetensors"):
                (tmp_path / word).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / word).touch()
        args = parser.parse_args(words)
        assert callable(args.func), command
