#!/usr/bin/env python
"""Success and failure cases, as mmpretrain's tools/analysis_tools/analyze_results.py:
``python tools/analysis_tools/analyze_results.py [CONFIG] RESULT --out-dir DIR [--topk 20]``.

The same as ``cspnet report RESULT --output DIR --gallery 20``: the whole report, with the gallery in
DIR/gallery/mistakes (the most confident mistakes) and DIR/gallery/hits (the least confident hits), each picture
showing the true and predicted class names and the score; DIR/index.html shows them all. RESULT is the rows file of
``python tools/test.py CONFIG CHECKPOINT --out rows.jsonl``; a CONFIG before it is accepted and ignored, as the rows
carry each image's path and labels and the sidecar the class names. Thumbnails are at most 256 pixels, so
mmpretrain's ``--rescale-factor`` has no counterpart.
"""

import argparse
import sys

from cspnet.cli import at_least, main
from cspnet.cli.report import tool_parser


def parse(argv: list[str]) -> argparse.Namespace:
    parser = tool_parser("analyze_results.py", __doc__)
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="the report folder")
    parser.add_argument("--topk", type=at_least(1), default=20, metavar="N",
                        help="images of each kind: mistakes and hits (default 20)")
    args = parser.parse_args(argv)
    return args


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(main(["report", args.result, "--output", args.out_dir, "--gallery", str(args.topk)]))
