"""``python -m dist_gan ...``: the ``dist-gan`` command line, for launchers that start modules.

Several evaluation processes: ``torchrun --nproc_per_node K -m dist_gan eval RUN --fid -n N``.
"""

from dist_gan.cli import app

if __name__ == "__main__":
    app(prog_name="dist-gan")
