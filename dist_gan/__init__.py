"""dist_gan: distributed DCGAN-family training for face GANs.

Data flows one way: images -> shards (data) -> models + losses -> engine
-> checkpoints -> eval / tools, with ``cli.py`` on top.
"""

__version__ = "0.1.0"
