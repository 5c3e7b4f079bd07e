"""The seed page's Python snippets run unchanged (import line aside); the zoo's names and README table."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cspnet
from cspnet.cli.listing import markdown_table
from cspnet.weights.files import save_state_dict
from golden import DEMO, SHARED, logits_meta, recipe_state_dict

ROOT = Path(__file__).resolve().parents[1]
SEED = SHARED / "seed" / "cspnet-mmpretrain-README.md"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    for arch in ("cspdarknet53", "cspresnet50"):
        save_state_dict(recipe_state_dict(arch), d / f"{arch}.ra_in1k.safetensors", "timm")
    return d


def seed_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", SEED.read_text(), flags=re.S)


@pytest.mark.slow
def test_seed_snippets_run_unchanged(weights_dir):
    snippets = seed_snippets()
    assert len(snippets) == 2
    env = {**os.environ, "CSPNET_WEIGHTS_DIR": str(weights_dir)}
    outputs = []
    for code in snippets:
        assert "from mmpretrain import" in code
        code = code.replace("from mmpretrain import", "from cspnet import")
        outputs.append(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                                      text=True, check=True).stdout.splitlines())
    predict, use = outputs
    names = cspnet.get_model("cspdarknet53").classes
    assert predict[0] == names[logits_meta()["models"]["cspdarknet53"]["top1"][0]]  # bird: golden top-1 557
    assert 0.0 < float(predict[1]) <= 1.0
    assert use == ["<class 'torch.Tensor'>", "<class 'tuple'>"]  # as mmpretrain prints


def test_inference_model_batches_and_inputs(weights_dir):
    model = cspnet.get_model("cspresnet50", pretrained=True, weights_dir=weights_dir)
    images = [DEMO / "bird.JPEG", str(DEMO / "dog.jpg"), np.asarray(cspnet.load_image(DEMO / "demo.JPEG"))]
    many = cspnet.inference_model(model, images, batch_size=2)
    one = cspnet.inference_model(model, DEMO / "dog.jpg")
    assert len(many) == 3 and isinstance(one, dict)
    assert set(one) == {"pred_label", "pred_score", "pred_scores", "pred_class"}
    assert one["pred_scores"].dtype == np.float32 and one["pred_scores"].shape == (1000,)
    assert abs(one["pred_scores"].sum() - 1) < 1e-4 and one["pred_score"] == one["pred_scores"].max()
    assert one["pred_label"] == many[1]["pred_label"] and abs(one["pred_score"] - many[1]["pred_score"]) < 1e-5
    assert [r["pred_label"] for r in many] == [624, 695, 695]  # golden top-1 (bird, dog, demo) of these weights
    assert many[0]["pred_class"] == model.classes[624]


def test_list_models():
    assert cspnet.list_models("csp") == cspnet.list_models()
    assert cspnet.list_models("3rdparty") == [
        "cspdarknet50_3rdparty_8xb32_in1k", "cspresnet50_3rdparty_8xb32_in1k", "cspresnext50_3rdparty_8xb32_in1k"]
    assert cspnet.list_models("*50") == ["cspresnet50", "cspresnext50"]
    for n in cspnet.list_models():
        assert cspnet.get_weights_info(n).arch in cspnet.ARCHS
    assert cspnet.get_weights_info("hf-hub:timm/cspresnext50.ra_in1k").name == "cspresnext50.ra_in1k"


def test_readme_model_table_is_generated():
    text = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- model-table:start[^\n]*-->\n(.*?)\n<!-- model-table:end -->", text, flags=re.S).group(1)
    assert table.strip() == markdown_table().strip()


def test_metadata_records_are_consistent():
    for w in cspnet.WEIGHTS:
        assert w.params == cspnet.models.num_params(cspnet.get_model(w.name))
        assert w.metrics.preset == w.eval  # the headline accuracy was measured with the eval preset we apply
        assert w.sources and w.config.startswith("configs/cspnet/")


def test_get_model_from_config_file(weights_dir):
    m = cspnet.get_model(str(ROOT / "configs/cspnet/cspresnet50_8xb32_in1k.py"), pretrained=True,
                         weights_dir=weights_dir, head=dict(num_classes=3))
    assert m.backbone.arch.name == "cspresnet50" and m.num_classes == 3
    assert (m.transform.preset.resize, m.transform.preset.crop) == (288, 256)
    # num_classes= as with a model name (it used to be dropped for config files)
    assert cspnet.get_model(str(ROOT / "configs/cspnet/cspresnet50_8xb32_in1k.py"), num_classes=7).num_classes == 7
