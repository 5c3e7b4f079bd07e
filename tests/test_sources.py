"""pretrained=True through every real source: a Hub cache, the seed URL on a local server, mirrors, folders."""

import hashlib
import shutil

import pytest
import torch

import cspnet
from cspnet.errors import DownloadError, WeightsNotFoundError
from cspnet.weights import convert
from cspnet.weights.files import save_state_dict
from cspnet.weights.sources import download
from golden import recipe_state_dict
from httpserver import FileServer, unused_port

SEED_URL = cspnet.get_weights_info("cspresnet50").sources[1].url
SEED_FILE = SEED_URL.rsplit("/", 1)[1]  # cspresnet50_3rdparty_8xb32_in1k_20220329-dd6dddfb.pth


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    sd = recipe_state_dict("cspresnet50")
    timm = save_state_dict(sd, d / "model.safetensors", "timm")
    mm = save_state_dict(convert.convert_state_dict(sd, "cspresnet50", "mmpretrain"), d / "mm.pth", "mmpretrain")
    sha = hashlib.sha256(mm.read_bytes()).hexdigest()
    hashed = d / f"cspresnet50_3rdparty_8xb32_in1k_20220329-{sha[:8]}.pth"  # the seed's naming, with a true hash
    shutil.copy(mm, hashed)
    return {"timm": timm, "mm": mm, "hashed": hashed, "sd": sd, "dir": d}


def _same_weights(model, sd):
    got = model.state_dict()
    return all(torch.equal(got["backbone." + k if not k.startswith("head.") else k], v) for k, v in sd.items())


def _cache_files(isolated_caches):
    return sorted(p.name for p in (isolated_caches / "cspnet").glob("*")) if (isolated_caches / "cspnet").exists() else []


def test_hub_cache_offline(ckpts, isolated_caches):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = isolated_caches / "hf" / "hub" / "models--timm--cspresnet50.ra_in1k"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(ckpts["timm"], repo / "snapshots" / commit / "model.safetensors")
    model = cspnet.get_model("cspresnet50_3rdparty_8xb32_in1k", pretrained=True)  # HF_HUB_OFFLINE=1 (conftest)
    assert _same_weights(model, ckpts["sd"])


def test_offline_failure_lists_every_source(isolated_caches):
    with pytest.raises(WeightsNotFoundError) as e:
        cspnet.get_model("cspresnet50", pretrained=True)
    msg = str(e.value)
    for fragment in ("Hugging Face Hub timm/cspresnet50.ra_in1k/model.safetensors", SEED_URL + ": skipped (offline)",
                     "CSPNET_WEIGHTS_DIR", "cspnet download cspresnet50.ra_in1k", "pretrained='PATH' in Python"):
        assert fragment in msg


def test_seed_url_through_local_server(ckpts, isolated_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{unused_port()}")  # the "Hub" is unreachable
    with FileServer(ckpts["dir"]) as server:
        mapping = (r"^https://download\.openmmlab\.com/.*/[^/]+$", server.url(ckpts["hashed"].name))
        model = cspnet.get_model("cspresnet50_3rdparty_8xb32_in1k", pretrained=True, url_mapping=mapping)
        assert _same_weights(model, ckpts["sd"])
        assert _cache_files(isolated_caches) == [ckpts["hashed"].name]
        # Cached now: a second load does not download again.
        cspnet.get_model("cspresnet50", pretrained=True, url_mapping=mapping)
        assert server.hits.count("/" + ckpts["hashed"].name) == 1


def test_mirror_with_wrong_hash_leaves_nothing(ckpts, isolated_caches, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{unused_port()}")
    shutil.copy(ckpts["mm"], tmp_path / SEED_FILE)  # right name, wrong bytes for its hash dd6dddfb
    with FileServer(tmp_path) as server:
        with pytest.raises(WeightsNotFoundError) as e:
            cspnet.get_model("cspresnet50", pretrained=True, mirror=server.base,
                             url_mapping=("^.*$", server.url("gone.pth")))
    assert "promises dd6dddfb" in str(e.value)
    assert _cache_files(isolated_caches) == []


def test_hash_checked_on_download(ckpts, tmp_path):
    with FileServer(ckpts["dir"]) as server:
        ok = download(server.url(ckpts["hashed"].name), tmp_path / "a.pth", ckpts["hashed"].name[-12:-4])
        assert ok.read_bytes() == ckpts["hashed"].read_bytes()
        with pytest.raises(DownloadError, match="promises 00000000"):
            download(server.url(ckpts["hashed"].name), tmp_path / "b.pth", "00000000")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth"]


def test_weights_dir_env_and_argument(ckpts, tmp_path, monkeypatch):
    d = tmp_path / "weights"
    d.mkdir()
    shutil.copy(ckpts["timm"], d / "cspresnet50.ra_in1k.safetensors")
    assert _same_weights(cspnet.get_model("cspresnet50", pretrained=True, weights_dir=d), ckpts["sd"])
    # the seed URL given as pretrained= (tools/test.py's CHECKPOINT) goes through the same sources and arguments
    assert _same_weights(cspnet.get_model("cspresnet50", pretrained=SEED_URL, weights_dir=d), ckpts["sd"])
    monkeypatch.setenv("CSPNET_WEIGHTS_DIR", str(d))
    assert _same_weights(cspnet.get_model("cspresnet50.ra_in1k", pretrained=True), ckpts["sd"])


def test_reuses_mmpretrain_torch_hub_cache(ckpts, isolated_caches):
    # Users of mmpretrain have the seed files in $TORCH_HOME/hub/checkpoints; a file with a wrong hash is ignored.
    hub = isolated_caches / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(ckpts["mm"], hub / SEED_FILE)
    with pytest.raises(WeightsNotFoundError, match="fails its sha256 check"):
        cspnet.get_model("cspresnet50", pretrained=True)


def test_local_file_and_url_pretrained(ckpts):
    assert _same_weights(cspnet.get_model("cspresnet50", pretrained=str(ckpts["mm"])), ckpts["sd"])
    with FileServer(ckpts["dir"]) as server:
        assert _same_weights(cspnet.get_model("cspresnet50", pretrained=server.url("model.safetensors")), ckpts["sd"])


def test_cli_download_to_folder(ckpts, tmp_path, monkeypatch):
    from cspnet.cli import main as cli

    d = tmp_path / "w"
    d.mkdir()
    shutil.copy(ckpts["timm"], d / "cspresnet50.ra_in1k.safetensors")
    monkeypatch.setenv("CSPNET_WEIGHTS_DIR", str(d))
    assert cli(["download", "cspresnet50", "--dest", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "cspresnet50.ra_in1k.safetensors").read_bytes() == ckpts["timm"].read_bytes()
