#!/usr/bin/env python
"""Train or fine-tune, as mmpretrain's tools/train.py: ``python tools/train.py CONFIG [options]``.

The same command as ``cspnet train`` (``--help`` lists the options); multi-GPU:
``torchrun --nproc-per-node 8 tools/train.py CONFIG --launcher pytorch``.
"""

import sys

from cspnet.cli import script

if __name__ == "__main__":
    sys.exit(script("train"))
