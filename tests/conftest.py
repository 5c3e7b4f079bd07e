import os
import sys
from pathlib import Path

# One compute thread per test process, and in the processes tests start: the suite runs in two processes on two
# cores (pytest -n 2), and OpenMP threads spin-waiting for a core held by the other process (or by another job on a
# loaded machine) make a step ten times slower. Set before torch is imported.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # tests/golden.py, tests/httpserver.py

import golden  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def isolated_temp_files(tmp_path_factory):
    """Temporary files go into the session's folder, also those of the processes tests start (torchrun's
    ``torchelastic_*`` folders, ...): no test leaves anything in the system's /tmp."""
    import tempfile

    folder = str(tmp_path_factory.mktemp("tmp"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    yield folder
    tempfile.tempdir = saved[1]
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches, and none reaches the network unless it sets up a local server."""
    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("CSPNET_CACHE", str(root / "cspnet"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CSPNET_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("CSPNET_MIRROR", raising=False)
    monkeypatch.delenv("CSPNET_OFFLINE", raising=False)
    monkeypatch.setenv("CSPNET_DOWNLOAD_TIMEOUT", "5")
    yield root


@pytest.fixture(scope="session")
def recipe_checkpoint(tmp_path_factory):
    """``recipe_checkpoint(arch='cspresnet50', layout='timm', suffix='.pth')``: the golden recipe weights of ``arch``
    as a file in ``layout`` (timm's flat state dict, mmpretrain's wrapped one, or cspnet's), made once per kind."""
    from cspnet.weights.files import save_state_dict
    from cspnet.weights.convert import convert_state_dict

    made: dict[tuple[str, str, str], Path] = {}

    def make(arch: str = "cspresnet50", layout: str = "timm", suffix: str = ".pth") -> Path:
        if (arch, layout, suffix) not in made:
            sd = golden.recipe_state_dict(arch)
            sd = sd if layout == "timm" else convert_state_dict(sd, arch, layout)
            path = tmp_path_factory.mktemp("recipe") / f"{arch}.{layout}{suffix}"
            made[arch, layout, suffix] = save_state_dict(sd, path, layout)
        return made[arch, layout, suffix]

    return make


@pytest.fixture(scope="session")
def tiny_classifier():
    """``tiny_classifier(arch='cspresnet50', seed=0)``: a small net of the real blocks (one narrow block per stage,
    10 classes, the arch's eval preprocessing), with BatchNorm statistics far from identity so that folding is
    exercised. A new model each call."""
    import cspnet
    from cspnet.models import ARCHS, ImageClassifier
    from cspnet.models.cspnet import replace_arch

    def make(arch: str = "cspresnet50", seed: int = 0) -> ImageClassifier:
        a = ARCHS[arch]
        small = replace_arch(a, stem_chs=8, depths=(1,) * a.num_stages,
                             channels=tuple(16 * 2**i for i in range(a.num_stages)), groups=min(a.groups[0], 4))
        torch.manual_seed(seed)
        model = ImageClassifier(small, num_classes=10, zero_init_last=False)
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.normal_(1, 0.2)
                mod.bias.data.normal_(0, 0.2)
        model.transform = cspnet.get_transform(arch)
        return model.eval()

    return make
