"""`effdl factorize CKPT --method M [--rank R | --energy E | --ratio X | --target-macs X] --out runs/NAME`.

Replaces trained layers by chains of smaller real layers, then optionally fine-tunes:
  svd          Linear (and 1x1 conv) -> two thinner ones (truncated SVD)
  tucker       kxk conv -> 1x1, small kxk core, 1x1 (Tucker-2; --vbmf picks ranks by VBMF)
  cp           kxk conv -> 1x1, kx1 depthwise, 1xk depthwise, 1x1 (CP by ALS)
  spatial-svd  kxk conv -> kx1 then 1xk
  depthwise    kxk conv -> depthwise kxk + pointwise 1x1 (least squares on --calibration-images)
  grouped      kxk conv -> grouped kxk (--groups) + 1x1 mixing (least squares on activations)
Rank rules (one): --rank R for every layer; --energy E keeps E of each layer's squared singular
values; --ratio X keeps at most X of each layer's MACs; --target-macs X keeps X of the model's MACs,
ranks chosen greedily from a per-layer sensitivity scan on --scan-images training images (written
as sensitivity.png and in summary.json; --scan writes it for the other rules too). --round-to 8
keeps every chosen rank a multiple of 8 (or the layer's whole rank): the rules choose among those
ranks (--energy and --vbmf round up); on CPUs a chain of odd ranks can run slower than the layer. Layers the
method cannot take (a 1x1 for tucker, a depthwise conv) are left whole and listed.
"""

from __future__ import annotations

import argparse

from effdl.cli.common import add_data_args, add_device_arg, add_distill_args, checkpoint_file


def register(subparsers) -> None:
    p = subparsers.add_parser("factorize", help="factorize a checkpoint's layers (low rank, separable) into a new run",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=checkpoint_file, help="a .safetensors checkpoint")
    p.add_argument("--method", required=True, help="svd, tucker, cp, spatial-svd, depthwise or grouped")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--rank", type=int, default=None, help="the same rank for every layer (tucker: both ranks)")
    rule.add_argument("--energy", type=float, default=None, help="keep this fraction in (0, 1] of the energy")
    rule.add_argument("--ratio", type=float, default=None, help="keep at most this fraction of each layer's MACs")
    rule.add_argument("--target-macs", type=float, default=None,
                      help="keep this fraction of the model's MACs (e.g. 0.5), ranks from a sensitivity scan")
    rule.add_argument("--vbmf", action="store_true", help="tucker: each layer's ranks by VBMF")
    p.add_argument("--round-to", type=int, default=None,
                   help="ranks a rule chooses are multiples of this, or the whole rank (8 suits CPU kernels)")
    p.add_argument("--groups", type=int, default=4, help="grouped: groups of the kxk convolution (default 4)")
    p.add_argument("--layers", nargs="*", default=[], help="layer names or globs to factorize (default: all it takes)")
    p.add_argument("--exclude", nargs="*", default=[], help="layer names or globs to leave whole")
    p.add_argument("--calibration-images", type=int, default=256,
                   help="training images the depthwise/grouped least-squares fits read (default 256)")
    p.add_argument("--scan", action="store_true", help="write the per-layer sensitivity scan (table and plot)")
    p.add_argument("--scan-images", type=int, default=500, help="with --scan or --target-macs: training images scoring the scan (default 500)")
    p.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs after factorizing")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate (cosine schedule)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="fine-tuning batch size (default: the source run's, else 128)")
    p.add_argument("--compile", action="store_true", help="torch.compile the fine-tuning step")
    add_distill_args(p, "the unfactorized model")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning and of sampled images (default 0)")
    p.add_argument("--out", required=True, help="run directory to create, e.g. runs/resnet20-tucker")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run at --out (default: refuse)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted fine-tune of the run at --out (started with the same checkpoint and options)")
    add_data_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.pipelines.factorize import FactorizeOptions
    from effdl.recipes.stages import run_single_stage

    options = FactorizeOptions(
        method=args.method, rank=args.rank, energy=args.energy, ratio=args.ratio, target_macs=args.target_macs,
        vbmf=args.vbmf, round_to=args.round_to, groups=args.groups, layers=args.layers, exclude=args.exclude,
        calibration_images=args.calibration_images, scan=args.scan, scan_images=args.scan_images,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, distill=args.distill,
        distill_temperature=args.distill_temperature, distill_method=getattr(args, "distill_method", "kd"),
        train_limit=args.train_limit, test_limit=args.test_limit, device=args.device, seed=args.seed,
        compile=args.compile,
    )
    options.validate()
    from effdl.checkpoint import read_checkpoint_meta
    from effdl.cli.common import dataset_from_args

    data = dataset_from_args(args, read_checkpoint_meta(args.checkpoint))
    # a one-stage recipe: the factorize stage, with the same input check a recipe's plan makes
    summary = run_single_stage("factorize", options, args.out, source=args.checkpoint, overwrite=args.overwrite,
                               data=data, resume=args.resume)
    s = summary["details"]
    if s.get("sensitivity"):
        from rich.console import Console

        from effdl.measure.sensitivity import SensitivityScan

        Console(stderr=True).print(SensitivityScan.from_json(s["sensitivity"]).table())
    print(f"factorized {len(s['layers'])} layer(s) with {s['method']} -> {args.out}/best.safetensors")
    for name, layer in s["layers"].items():
        print(f"  {name:32} rank {layer['rank']!s:10} MACs {layer['macs_before']:>11,} -> {layer['macs_after']:>11,}"
              f"  error {layer['relative_error']:.3f}")
    for name, why in s["skipped"].items():
        print(f"left whole   {name}: {why}")
    print(f"accuracy     {summary['source_accuracy']:.2%} -> {summary['accuracy']:.2%} "
          f"({summary['correct']}/{summary['total']} test images; {s['accuracy_before_finetune']:.2%} before fine-tuning)")
    print(f"MACs         {s['macs_before']:,} -> {s['macs_after']:,} ({s['macs_after'] / s['macs_before']:.2f}x)")
    print(f"params       {s['params_before']:,} -> {s['params_after']:,}")
    if s["score_imt2024_after"] is not None:
        print(f"imt2024      {s['score_imt2024_before']:.4f} -> {s['score_imt2024_after']:.4f}")
    print(f"note: {s['note']}")
    return 0
