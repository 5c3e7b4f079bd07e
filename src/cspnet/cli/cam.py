"""``cspnet cam``: a Grad-CAM heatmap over the eval crop of an image (mmpretrain's vis_cam.py, no grad-cam package)."""

from __future__ import annotations

import argparse

from . import add_model_arguments, load_model

HELP = "draw the Grad-CAM heatmap of a class over an image (PNG)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="image file (any format Pillow reads)")
    add_model_arguments(p)
    p.add_argument("--target-layer", default=None, metavar="MODULE",
                   help="module whose output is explained (default: the last stage, e.g. backbone.stages.4)")
    p.add_argument("--target-class", type=int, default=None, metavar="N",
                   help="class index to explain (default: the predicted class)")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="output image (default: <image stem>.cam.png in the current folder)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity, 0 to 1 (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print what was drawn as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .._io import output_path
    from ..visualize import default_target_layer, grad_cam, overlay_cam, save_image

    output = Path(args.output or f"{Path(args.image).stem}.cam.png")
    output_path(output, "--output", [args.image, args.model, args.weights])  # before the model loads
    model = load_model(args)
    device = next(model.parameters()).device
    crop = model.transform.to_uint8(args.image)  # (3, crop, crop): the CAM explains exactly what the model sees
    x = model.transform.normalize(crop[None].to(device))
    layer = args.target_layer or default_target_layer(model)
    cam, classes, logits = grad_cam(model, x, layer, args.target_class)
    save_image(overlay_cam(crop, cam[0], args.alpha), output)
    prob = logits.softmax(dim=1)[0]
    label = int(classes[0])
    name = model.classes[label] if model.classes is not None else f"class {label}"
    if args.json:
        import json

        print(json.dumps({"output": str(output), "model": model.name, "layer": layer, "class": label, "name": name,
                          "score": float(prob[label]), "top_class": int(prob.argmax())}, indent=2))
        return 0
    print(f"wrote {output} ({crop.shape[2]}x{crop.shape[1]}, {model.name}, layer {layer}): "
          f"Grad-CAM of [{label}] {name} (score {100 * float(prob[label]):.2f}%, top class {int(prob.argmax())})")
    return 0
