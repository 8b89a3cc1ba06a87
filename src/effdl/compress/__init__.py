"""Compression techniques: quantize, prune, factorize, distill. Each is a function over any nn.Module.

Importing this package registers every technique's checkpoint replay (see models/transforms.py).
"""

from effdl.compress import quantize  # noqa: F401,E402  registers the quantization replays
from effdl.compress import prune  # noqa: F401,E402  registers the channel-pruning replay
