"""``cspnet list``: the model zoo, as a table or as the README's markdown."""

from __future__ import annotations

import argparse

HELP = "list model names, or print the model table (--markdown) generated from the weights metadata"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default=None, help="filter, e.g. 'resnext' or 'csp*' (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the README model table")
    p.add_argument("--names", action="store_true", help="print only the names, one per line")
    p.add_argument("--json", action="store_true", help="print each name's record as JSON")


def markdown_table() -> str:
    """The README's model table, generated from :data:`cspnet.weights.records.WEIGHTS`."""
    from ..weights.records import WEIGHTS

    lines = [
        "| Model | Also accepted as | Params (M) | MACs 224 (G) | MACs eval (G) | Top-1 (%) | Top-5 (%) | Eval preprocessing | Sources |",
        "| :-- | :-- | --: | --: | --: | --: | --: | :-- | :-- |",
    ]
    for w in WEIGHTS:
        aliases = ", ".join(f"`{a}`" for a in w.aliases)
        sources = ", ".join(
            f"[Hub](https://huggingface.co/{s.repo_id})" if hasattr(s, "repo_id") else f"[mmpretrain .pth]({s.url})"
            for s in w.sources
        )
        lines.append(
            f"| `{w.name}` | {aliases} | {w.params / 1e6:.2f} | {w.macs_224:.2f} | {w.macs_eval:.2f} "
            f"@{w.eval.crop} | {w.top1:.2f} | {w.top5:.2f} | {w.eval.interpolation} {w.eval.resize} -> "
            f"{w.eval.crop} | {sources} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..weights.records import get_weights_info, list_models

    if args.markdown:
        print(markdown_table())
        return 0
    names = list_models(args.pattern)
    if args.json:
        import json

        records = {n: get_weights_info(n) for n in names}
        print(json.dumps({n: {"weights": w.name, "arch": w.arch, "params": w.params, "macs_224": w.macs_224,
                              "macs_eval": w.macs_eval, "top1": w.top1, "top5": w.top5, "eval": vars(w.eval),
                              "sources": [s.describe() for s in w.sources]} for n, w in records.items()}, indent=2))
        return 0
    if args.names:
        print("\n".join(names))
        return 0
    print(f"{'name':36} {'weights':22} {'params':>8} {'MACs@224':>9} {'top-1':>6} {'top-5':>6}  eval")
    for n in names:
        w = get_weights_info(n)
        print(f"{n:36} {w.name:22} {w.params / 1e6:7.2f}M {w.macs_224:8.2f}G {w.top1:6.2f} {w.top5:6.2f}  "
              f"{w.eval.interpolation} {w.eval.resize}->{w.eval.crop}")
    return 0
