"""`effdl prune CKPT --method M --sparsity S --out runs/NAME`: prune a checkpoint, optionally fine-tune.

Unstructured (weights set to exact zeros): magnitude (global or per-layer L1; --rounds for
iterative prune-retrain; --sensitivity-drop for per-layer targets from a sensitivity scan), agp
(gradual sparsity during --epochs), lottery (rewind survivors to --rewind-to, then retrain).
Structured (channels physically removed, --sparsity is the channel fraction or --target-macs the
MAC fraction to keep): l1-filter, l2-filter, slimming (--penalty-epochs of BN-scale L1 training
first), thinet (greedy reconstruction on --calibration-batches, then least-squares rescaling of the
next layers' kept inputs). No layer loses more than the ratio (--round-to rounds toward keeping
more), and the pruned model is checked against the original with the removed channels zeroed.
Layers whose channels cannot be removed correctly (around a channel shuffle, into a grouped
convolution, coupled in blocks by a view/reshape) are kept whole and listed ("left whole", and
`channels_left_whole` in summary.json).
Depth: block (--blocks N or --target-macs X) removes whole residual blocks with an identity
shortcut, least output distortion on --calibration-batches of training images first; their
operators go too, which lowers batch-1 CPU latency where thinner layers do not.
The run directory gets best.safetensors and summary.json.
"""

from __future__ import annotations

import argparse

from effdl.cli.common import add_data_args, add_device_arg, add_distill_args, checkpoint_file, dataset_from_args


def register(subparsers) -> None:
    # The methods are named in the description (the module docstring), not imported from the
    # pipeline: that import (torch, torch-pruning) would cost seconds before any argument error.
    p = subparsers.add_parser("prune", help="prune a checkpoint (unstructured or structured) into a new run",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=checkpoint_file, help="a .safetensors checkpoint")
    p.add_argument("--method", required=True, help="one of the methods above (e.g. magnitude, l1-filter)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="fraction in [0, 1): of weights (unstructured) or of channels (structured)")
    p.add_argument("--target-macs", type=float, default=None,
                   help="structured: keep this fraction of the MACs (e.g. 0.5 for 2x fewer), instead of --sparsity")
    p.add_argument("--blocks", type=int, default=None, help="block: how many residual blocks to remove")
    p.add_argument("--scope", default=None, help="global or layer (default: global unstructured, layer structured)")
    p.add_argument("--round-to", type=int, default=None,
                   help="structured (l1-filter, l2-filter, slimming, thinet): keep channel counts multiples of this")
    p.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs after pruning (per round)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate (cosine schedule)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="fine-tuning batch size (default: the source run's, else 128)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the fine-tuning step (faster epochs after a compile of a minute or more)")
    add_distill_args(p, "the unpruned model")
    p.add_argument("--rounds", type=int, default=1, help="magnitude (with --epochs), lottery: iterative prune-retrain rounds")
    p.add_argument("--rewind-to", default=None, help="lottery: early checkpoint of the same run to rewind to")
    p.add_argument("--penalty", type=float, default=1e-4, help="slimming: L1 strength on BN scales")
    p.add_argument("--penalty-epochs", type=int, default=0, help="slimming: sparsity-training epochs before pruning (--penalty needs them)")
    p.add_argument("--calibration-batches", type=int, default=4,
                   help="thinet, block: 64-image training batches to sample")
    p.add_argument("--sensitivity-drop", type=float, default=None,
                   help="magnitude: scan per-layer sensitivity, prune each layer as far as it loses at most this")
    p.add_argument("--scan-images", type=int, default=1000, help="magnitude, with --sensitivity-drop: training images the sensitivity scan scores")
    p.add_argument("--include", nargs="*", default=[], help="layer-name globs to prune (unstructured, block)")
    p.add_argument("--exclude", nargs="*", default=[], help="layer-name globs never to prune")
    p.add_argument("--layer-ratio", nargs="*", default=[], type=layer_ratio, metavar="GLOB=RATIO",
                   help="structured, layer scope: channel ratio for matching layers (later wins), "
                        "e.g. 'layers.0.*=0' 'layers.2.*.conv1=0.75'")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning and of sampled images (default 0)")
    p.add_argument("--out", required=True, help="run directory to create, e.g. runs/resnet20-pruned")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run at --out (default: refuse)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted fine-tune of the run at --out (started with the same checkpoint and options)")
    add_data_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def layer_ratio(text: str) -> tuple[str, float]:
    """'GLOB=RATIO' as (glob, ratio)."""
    pattern, _, value = text.rpartition("=")
    try:
        ratio = float(value)
    except ValueError:
        ratio = None
    if not pattern or ratio is None:
        raise argparse.ArgumentTypeError(f"expected GLOB=RATIO (e.g. 'layers.2.*.conv1=0.75'), got '{text}'")
    return pattern, ratio


def run(args: argparse.Namespace) -> int:
    from effdl.pipelines.prune import PruneOptions
    from effdl.recipes.stages import run_single_stage

    options = PruneOptions(
        method=args.method, sparsity=args.sparsity, target_macs=args.target_macs, blocks=args.blocks, scope=args.scope,
        round_to=args.round_to, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, rounds=args.rounds,
        rewind_to=args.rewind_to, penalty=args.penalty, penalty_epochs=args.penalty_epochs,
        calibration_batches=args.calibration_batches, sensitivity_drop=args.sensitivity_drop,
        scan_images=args.scan_images, include=args.include, exclude=args.exclude,
        layer_ratios=dict(args.layer_ratio), train_limit=args.train_limit,
        test_limit=args.test_limit, device=args.device, compile=args.compile, seed=args.seed,
        distill=args.distill, distill_temperature=args.distill_temperature, distill_method=args.distill_method,
    )
    options.validate()
    from effdl.checkpoint import read_checkpoint_meta

    # the data flags (limits included, applied while loading), else the checkpoint's recorded data
    data = dataset_from_args(args, read_checkpoint_meta(args.checkpoint))
    # a one-stage recipe: the prune stage, with the same input check a recipe's plan makes
    summary = run_single_stage("prune", options, args.out, source=args.checkpoint, overwrite=args.overwrite, data=data,
                               resume=args.resume)
    s = summary["details"]  # the pruning's own measurements
    scope = f" ({s['scope']} scope)" if s["scope"] else ""
    print(f"pruned with {s['method']}{scope} -> {args.out}/best.safetensors")
    print(f"accuracy     {summary['source_accuracy']:.2%} -> {summary['accuracy']:.2%} "
          f"({summary['correct']}/{summary['total']} test images)")
    if s.get("blocks_removed"):
        print(f"blocks       removed {', '.join(s['blocks_removed'])}")
    else:
        print(f"sparsity     {s['sparsity_before']:.2%} -> {s['sparsity']:.2%} (measured fraction of exact zeros)")
    print(f"MACs         {s['macs_before']:,} -> {s['macs_after']:,} ({s['macs_after'] / s['macs_before']:.2f}x)")
    print(f"params       {s['params_before']:,} -> {s['params_after']:,}")
    print(f"size         {s['size_bytes_before']:,} -> {s['size_bytes_after']:,} bytes")
    left_whole: dict[str, list[str]] = {}
    for layer, why in (s.get("channels_left_whole") or {}).items():
        left_whole.setdefault(why, []).append(layer)
    for why, layers in left_whole.items():  # asked to shrink, but their channels could not be removed correctly
        print(f"left whole   {', '.join(layers)}: {why}")
    if s["score_imt2024_after"] is not None:
        print(f"imt2024      {s['score_imt2024_before']:.4f} -> {s['score_imt2024_after']:.4f}")
    print(f"note: {s['note']}")
    return 0
