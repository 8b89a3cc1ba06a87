"""Tools of benchmarks/ that carry data to a lent machine: what they write back must be the same data."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "carry_data.py"


def test_an_image_folder_packed_and_unpacked_keeps_every_file_in_its_split_and_class(tmp_path):
    source = tmp_path / "src"
    files = {("train", "cat"): [b"\xff\xd8a", b"\xff\xd8bb"], ("train", "dog"): [b"\xff\xd8ccc"],
             ("test", "cat"): [b"\xff\xd8d"], ("test", "dog"): [b"\xff\xd8eeeee", b""]}
    for (split, label), blobs in files.items():
        (source / split / label).mkdir(parents=True)
        for i, blob in enumerate(blobs):
            (source / split / label / f"{i}.jpg").write_bytes(blob)
    (source / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    (source / "train" / "cat" / ".DS_Store").write_bytes(b"x")  # hidden, and not an image: left out
    (source / "train" / "cat" / "notes.txt").write_bytes(b"y")
    (source / "test" / "dog" / "2.png").write_bytes(b"\x89PNG")  # each file keeps its own extension
    files[("test", "dog")].append(b"\x89PNG")
    packed, out = tmp_path / "d" / "x.npz", tmp_path / "out"
    for action, a, b in (("pack", source, packed), ("unpack", packed, out)):
        subprocess.run([sys.executable, str(SCRIPT), action, str(a), str(b)], check=True, capture_output=True)
    for (split, label), blobs in files.items():
        back = sorted(p.read_bytes() for p in (out / split / label).iterdir())
        assert back == sorted(blobs)
    assert sorted(p.suffix for p in (out / "test" / "dog").iterdir()) == [".jpg", ".jpg", ".png"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["cat", "dog"]
    assert packed.stat().st_size < sum(map(len, sum(files.values(), []))) + 4096  # no per-file padding
