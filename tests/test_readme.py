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


def test_every_readme_command_parses():
    """The README's examples use the flags the CLI has (argparse exits 2 on an unknown one)."""
    import shlex

    from effdl.cli import build_parser

    commands = readme_cli_commands()
    assert len(commands) >= 15 and any("--bits 2" in c and "--distill" in c for c in commands)
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command, comments=True)[1:])
        assert callable(args.func), command
