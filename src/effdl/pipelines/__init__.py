"""Orchestration: "checkpoint in, compressed run out", composed from techniques, the trainer and
checkpoints (the layer a recipe runner and the CLI call; it never imports effdl.cli).

- `finetune`: the one fine-tuning path of every technique. The fine-tune inherits the SOURCE run's
  training config (data, augmentation, weight decay, label smoothing, batch size...) and overrides
  only what a compression step sets (epochs, learning rate and schedule, limits, device).
- `run_dir`: the one writer of a compressed run's directory (config.yaml, best.safetensors holding
  the final evaluated model, summary.json in the schema every run kind shares).
- `prune`: `prune_checkpoint` (behind `effdl prune`).
- `quantize`: `quantize_run` (behind `effdl quantize`) and `quantize_model` (in memory).

Nothing is imported here, so `import effdl.pipelines` stays light; import the submodules.
"""
