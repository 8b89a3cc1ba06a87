"""Compression techniques: quantize, prune, factorize, distill. Each is a function over any nn.Module.

Import the technique you use (`effdl.compress.quantize`, `effdl.compress.prune`...): this package
imports none of them, so a checkpoint's replay (effdl.core.edits) loads only the techniques whose
edits it records (pruning alone brings in torch-pruning).
"""
