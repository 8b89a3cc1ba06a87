from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_command = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if ".venv/bin/pytest" in line]
    assert len(ci_command) == 1
    assert f"    {ci_command[0]}\n" in readme
