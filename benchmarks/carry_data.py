"""Carry an image folder to another machine as one file, and back into a folder there.

A remote benchmark machine that takes a working tree of limited size (and no folder beside it)
cannot receive CIFAR-10's 60,000 JPEG files: in a tar they take 100 MB of headers and padding
around 57 MB of images. `pack` stores the file bytes as they are (no re-encoding: the same images,
bit for bit) in one uncompressed .npz of about their total size; `unpack` writes the same
`split/class/NNNNN.ext` layout back (each file keeps its extension). Only what effdl's image-folder
reader reads (`is_image_file`) and the splits and classes of the layout are kept, not the names.

    python benchmarks/carry_data.py pack ../shared/data/cifar10 .devdata/cifar10.npz
    python benchmarks/carry_data.py unpack .devdata/cifar10.npz /tmp/data/cifar10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from effdl.data.imagefolder import is_image_file

SPLITS = ("train", "val", "test")


def pack(folder: Path, out: Path) -> int:
    """Write every image file of `folder/<split>/<class>/` to `out` (.npz); returns the image count."""
    blobs, splits, classes, labels, suffixes = [], [], [], [], []
    for split in SPLITS:
        if not (folder / split).is_dir():
            continue
        for class_dir in sorted(p for p in (folder / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
            if class_dir.name not in classes:
                classes.append(class_dir.name)
            for image in sorted(p for p in class_dir.iterdir() if p.is_file() and is_image_file(p.name)):
                blobs.append(np.frombuffer(image.read_bytes(), dtype=np.uint8))
                splits.append(SPLITS.index(split))
                labels.append(classes.index(class_dir.name))
                suffixes.append(image.suffix)
    if not blobs:
        raise SystemExit(f"{folder}: no images in {'/'.join(SPLITS)}/<class>/")
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, data=np.concatenate(blobs), offsets=offsets, split=np.array(splits, np.uint8),
             label=np.array(labels, np.int32), classes=np.array(classes), suffix=np.array(suffixes))
    return len(blobs)


def unpack(packed: Path, folder: Path) -> int:
    """Write the images of `packed` back as `folder/<split>/<class>/NNNNN<suffix>`; returns the count."""
    with np.load(packed) as f:
        data, offsets, split, label = f["data"], f["offsets"], f["split"], f["label"]
        classes, suffix = [str(c) for c in f["classes"]], [str(s) for s in f["suffix"]]
    for s in np.unique(split):
        for c in classes:
            (folder / SPLITS[s] / c).mkdir(parents=True, exist_ok=True)
    for i in range(len(split)):
        path = folder / SPLITS[split[i]] / classes[label[i]] / f"{i:05d}{suffix[i]}"
        path.write_bytes(data[offsets[i]:offsets[i + 1]].tobytes())
    return len(split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    count = (pack if args.action == "pack" else unpack)(args.source, args.dest)
    print(f"{args.action}: {count} images, {args.source} -> {args.dest}")


if __name__ == "__main__":
    main()
