#!/usr/bin/env python
"""Evaluate a checkpoint, as mmpretrain's tools/test.py: ``python tools/test.py CONFIG CHECKPOINT [options]``.

The same command as ``cspnet test`` (``--help`` lists the options); multi-GPU:
``torchrun --nproc-per-node 8 tools/test.py CONFIG CHECKPOINT --launcher pytorch``.
"""

import sys

from cspnet.cli import script

if __name__ == "__main__":
    sys.exit(script("test"))
