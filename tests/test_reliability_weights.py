"""docs/reliability.md, checkpoints and downloads, round 2: object graphs no trainer writes, suspicious tensors,
the layouts of compiled/DDP/EMA runs, refused pickles, and downloads without limits (deadline, size, content, cache
key, offline). Each test carries ``@reliability(<case ids>)`` (tests/test_reliability_doc.py)."""

import argparse
import json
import logging
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cspnet
from cspnet.cli import main as cli
from cspnet.errors import CheckpointError, DownloadError, InvalidOptionError, WeightsNotFoundError
from cspnet.weights import convert, read
from cspnet.weights.files import save_state_dict
from cspnet.weights.sources import UrlFile, download, resolve
from golden import DEMO, recipe_state_dict
from httpserver import FileServer, unused_port

reliability = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[1]
R50_CONFIG = str(REPO / "configs" / "cspnet" / "cspresnet50_8xb32_in1k.py")


def _same(model_or_found, sd: dict) -> bool:
    """Whether a cspnet classifier, or what :func:`cspnet.weights.read` found, holds the timm-layout weights ``sd``."""
    got = model_or_found.state_dict
    got = got() if callable(got) else got
    return all(torch.equal(got[k if k.startswith("head.") else "backbone." + k], v) for k, v in sd.items())


def _legacy_torch_file(path: Path, body: bytes) -> Path:
    """A legacy (non-zip) torch file whose object is the raw pickle ``body`` (holding no tensors): what torch.save
    would write, but for objects it cannot pickle itself (nesting deeper than Python's recursion limit)."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(o, protocol=2) for o in (0x1950A86A20F9469CFC6C, 1001, info))
    path.write_bytes(head + body + pickle.dumps([], protocol=2))
    return path


# ----------------------------------------------------------------------------------------- object graphs
_GRAPH_SCRIPT = r"""
import contextlib, io, json, sys, time
sys.path.insert(0, sys.argv[1])
import cspnet
from cspnet.cli import main as cli
from cspnet.errors import CSPNetError

cspnet.get_model("cspresnet50")  # imports, untimed: what is timed is reading the file
out = {}
for case, path, entry, extra in json.loads(sys.argv[2]):
    err, start = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(err):
        try:
            if entry == "get_model":
                cspnet.get_model("cspresnet50", pretrained=path)
                msg = "loaded"
            else:
                convert = [entry, path, extra[0], "--to", "timm"]
                msg = f"exit {cli(convert if entry == 'convert' else [entry, extra[0], path, *extra[1:]])}"
        except CSPNetError as e:
            msg = str(e)
    out[f"{case}/{entry}"] = {"seconds": time.monotonic() - start, "message": msg, "stderr": err.getvalue()}
print(json.dumps(out))
"""


@reliability("checkpoint-cyclic-graph", "checkpoint-deep-graph", "checkpoint-huge-graph")
def test_object_graphs_no_trainer_writes_are_refused_quickly(tmp_path):
    """Every case through get_model, and the cycle (which hung `convert`, `get_model` and `test` for ever) through
    all three, in a subprocess: a regression fails at its timeout instead of hanging the suite."""
    from test_datasets import make_images, write_layout

    d = {}
    d["state_dict"] = d  # extract_state_dict looked for the weights inside it for ever
    torch.save(d, tmp_path / "cyclic.pth")
    loop = []
    loop.append(loop)
    torch.save({"state_dict": {"stem.conv1.conv.weight": loop}}, tmp_path / "cyclic-list.pth")
    n = 50_000  # 50x Python's recursion limit: any recursive walk (repr, deepcopy) would die in it
    key = pickle.dumps("state_dict", protocol=2)[2:-1]
    _legacy_torch_file(tmp_path / "deep.pth", b"\x80\x02}" + key + b"]" * n + b"a" * (n - 1) + b"s.")
    torch.save({"state_dict": {"history": list(range(600_000))}}, tmp_path / "huge.pth")
    shared = [0]
    for _ in range(60):  # 2**60 paths through 60 lists: a walker that does not remember what it saw never ends
        shared = [shared, shared]
    torch.save({"state_dict": {"shared": shared}}, tmp_path / "shared.pth")
    root = write_layout(tmp_path / "data", "folder", make_images(tmp_path / "images", 2), [0, 0])
    test_args = [R50_CONFIG, "--num-workers", "0", "--cfg-options", f"test_dataloader.dataset.data_root={root}"]
    cases = [("cyclic", tmp_path / "cyclic.pth", entry) for entry in ("get_model", "convert", "test")]
    cases += [(c, tmp_path / f"{c}.pth", "get_model") for c in ("cyclic-list", "deep", "huge", "shared")]
    plan = [(c, str(p), entry, [str(tmp_path / "out.pth")] if entry == "convert" else test_args)
            for c, p, entry in cases]
    run = subprocess.run([sys.executable, "-c", _GRAPH_SCRIPT, str(Path(__file__).parent), json.dumps(plan)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {"cyclic": "contains itself", "cyclic-list": "contains itself", "deep": "more than 100 deep",
                "huge": "more than 500,000 objects", "shared": "found no state dict"}
    for (case, path, entry, _), got in zip(plan, results.values()):
        text = got["message"] + got["stderr"]
        assert got["seconds"] < 5, (case, entry, got)
        assert expected[case] in text and path in text, (case, entry, text)
        assert entry == "get_model" or got["message"] == "exit 2"
    assert not (tmp_path / "out.pth").exists()


# --------------------------------------------------------------------------------------- suspicious tensors
@reliability("checkpoint-not-weights")
@pytest.mark.parametrize("content", [b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", b"model weights v2\n",
                                     b"\x00\x01\x02\x03" * 20], ids=["html", "text", "binary"])
def test_a_file_that_is_no_weights_file_is_named_so(tmp_path, content):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=", not a weights file") as e:
        cspnet.get_model("cspresnet50", pretrained=path)
    assert str(path) in str(e.value) and "could run code" not in str(e.value)
    kind = {b"<": "is an HTML page", b"m": "is text", b"\x00": "is data of another format"}[content[:1]]
    assert kind in str(e.value)


@reliability("checkpoint-nan-inf")
def test_nan_or_inf_weights_are_refused_by_name(tmp_path, capsys):
    sd = recipe_state_dict("cspresnet50")
    sd["stem.conv1.conv.weight"] = sd["stem.conv1.conv.weight"].clone()
    sd["stem.conv1.conv.weight"][0, 0, 0, :2] = float("nan")
    sd["stages.3.conv_transition.bn.running_var"] = torch.full_like(sd["stages.3.conv_transition.bn.running_var"],
                                                                   float("inf"))
    path = save_state_dict(sd, tmp_path / "diverged.safetensors", "timm")
    with pytest.raises(CheckpointError) as e:
        cspnet.get_model("cspresnet50", pretrained=path)
    msg = str(e.value)
    assert str(path) in msg and "2 tensors hold NaN or Inf" in msg
    assert "stem.conv1.conv.weight (2 of 9408 values, NaN)" in msg and "stages.3.conv_transition.bn.running_var" in msg
    with pytest.raises(CheckpointError, match="hold NaN or Inf"):  # a state dict given in memory too
        cspnet.get_model("cspresnet50", pretrained=sd)
    assert cli(["predict", str(DEMO / "dog.jpg"), "--weights", str(path), "--device", "cpu"]) == 2
    assert "hold NaN or Inf" in capsys.readouterr().err


@reliability("checkpoint-integer-weights")
@pytest.mark.parametrize("make", ["int8", "int64", "bool", "complex", "float16-ok"])
def test_non_float_weights_are_refused_but_counters_are_not(tmp_path, make):
    sd = recipe_state_dict("cspresnet50")
    w = sd["stages.0.conv_exp.conv.weight"]
    sd["stages.0.conv_exp.bn.num_batches_tracked"] = torch.tensor(1234)  # an integer buffer, as BatchNorm's
    sd["stages.0.conv_exp.conv.weight"] = {
        "int8": lambda: (w * 100).to(torch.int8), "int64": lambda: (w * 100).long(), "bool": lambda: w > 0,
        "complex": lambda: w.to(torch.complex64), "float16-ok": lambda: w.half(),
    }[make]()
    if make == "float16-ok":  # half-precision weights are floats: they load (as float32)
        model = cspnet.get_model("cspresnet50", pretrained=sd)
        assert torch.equal(model.backbone.stages[0].conv_exp.conv.weight, w.half().float())
        return
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 tensors are not floating-point weights: "
                                              r"stages\.0\.conv_exp\.conv\.weight \(torch\.") as e:
        cspnet.get_model("cspresnet50", pretrained=path)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------------------- layouts of runs
@reliability("checkpoint-compiled-ddp-prefix")
@pytest.mark.parametrize("prefix", ["_orig_mod.module.", "module._orig_mod.", "module._orig_mod.module.",
                                    "_orig_mod._orig_mod."])
def test_every_combination_of_ddp_and_compile_prefixes_is_stripped(tmp_path, prefix):
    sd = recipe_state_dict("cspresnet50")
    path = tmp_path / "compiled.pth"
    torch.save({"state_dict": {prefix + k: v for k, v in sd.items()}}, path)
    assert _same(cspnet.get_model("cspresnet50", pretrained=path), sd)
    clash = {**{prefix + k: v for k, v in sd.items()}, "stem.conv1.conv.weight": sd["stem.conv1.conv.weight"]}
    with pytest.raises(CheckpointError, match="two entries are both 'stem.conv1.conv.weight'"):
        read(clash)


def _mmengine_ema_checkpoint(sd: dict, ema: dict) -> dict:
    """What mmengine's EMAHook saves: it swaps the two before saving, so ``state_dict`` holds the EMA weights and
    ``ema_state_dict`` (``steps`` + ``module.<name>``, ExponentialMovingAverage's own state dict) the raw ones."""
    mm_ema = convert.convert_state_dict(ema, "cspresnet50", "mmpretrain")
    mm_raw = convert.convert_state_dict(sd, "cspresnet50", "mmpretrain")
    return {"meta": {"epoch": 3, "dataset_meta": {"classes": None}}, "state_dict": mm_ema,
            "ema_state_dict": {"steps": torch.tensor(1500), **{"module." + k: v for k, v in mm_raw.items()}},
            "message_hub": {"runtime_info": {"epoch": 3}}}


@reliability("checkpoint-mmengine-ema")
def test_mmengine_and_averaged_model_ema_layouts(tmp_path):
    sd = recipe_state_dict("cspresnet50")
    ema = {k: v + 0.5 if v.is_floating_point() else v for k, v in sd.items()}
    path = tmp_path / "epoch_3.pth"
    torch.save(_mmengine_ema_checkpoint(sd, ema), path)
    assert _same(cspnet.get_model("cspresnet50", pretrained=path, use_ema=True), ema)
    assert _same(read(path, use_ema=False), sd)
    found = read(path)  # by default, what mmengine deploys: its state_dict, which holds the EMA weights
    assert found.ema and _same(found, ema)
    assert cli(["convert", str(path), str(tmp_path / "raw.safetensors"), "--to", "timm", "--no-ema"]) == 0
    assert _same(read(tmp_path / "raw.safetensors"), sd)
    # torch.optim.swa_utils.AveragedModel: ``n_averaged`` + ``module.<name>``, beside the raw weights
    averaged = {"model": sd, "ema_state_dict": {"n_averaged": torch.tensor(7), **{f"module.{k}": v
                                                                                 for k, v in ema.items()}}}
    torch.save(averaged, tmp_path / "swa.pth")
    assert _same(read(tmp_path / "swa.pth", use_ema=True), ema) and _same(read(tmp_path / "swa.pth"), sd)


@reliability("checkpoint-ema-missing")
def test_use_ema_without_ema_weights_is_refused_in_every_path(tmp_path, capsys):
    sd = recipe_state_dict("cspresnet50")
    flat = save_state_dict(sd, tmp_path / "flat.safetensors", "timm")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": sd, "ema": None, "epoch": 3}, wrapped)  # a cspnet training checkpoint without EMA
    for pretrained in (flat, wrapped, sd, {"state_dict": sd, "ema": {}}):
        with pytest.raises(CheckpointError, match="holds no EMA weights"):
            cspnet.get_model("cspresnet50", pretrained=pretrained, use_ema=True)
        with pytest.raises(CheckpointError, match="holds no EMA weights"):
            read(pretrained, "cspresnet50", use_ema=True)
    assert cli(["convert", str(wrapped), str(tmp_path / "out.pth"), "--to", "timm", "--ema"]) == 2
    assert cli(["predict", str(DEMO / "dog.jpg"), "--weights", str(flat), "--ema", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("holds no EMA weights") == 2 and str(wrapped) in err and str(flat) in err
    assert not (tmp_path / "out.pth").exists()


@reliability("checkpoint-non-tensor-entry")
def test_non_tensor_entries_of_a_flat_state_dict(tmp_path):
    sd = recipe_state_dict("cspresnet50")
    path = tmp_path / "flat.pth"
    torch.save({**sd, "epoch": 3, "arch": "cspresnet50", "version": 2}, path)  # skipped: not weights
    assert _same(read(path), sd)
    torch.save({**sd, "stem.conv1.conv.bias": [0.0] * 32}, path)
    with pytest.raises(CheckpointError, match=r"'stem\.conv1\.conv\.bias' holds a list, not a tensor") as e:
        cspnet.get_model("cspresnet50", pretrained=path)
    assert str(path) in str(e.value)
    with pytest.raises(CheckpointError, match="key 3 is a int, not a parameter name"):
        read({**sd, 3: torch.zeros(1)})


@reliability("checkpoint-refused-pickle-message")
def test_a_refused_pickle_names_its_global_and_the_way_out(tmp_path, caplog):
    sd = recipe_state_dict("cspresnet50")
    path = tmp_path / "model_best.pth.tar"  # what timm's train.py saves: its args as an argparse.Namespace
    torch.save({"epoch": 9, "arch": "cspresnet50", "state_dict": sd, "version": 2,
                "args": argparse.Namespace(lr=0.1, model="cspresnet50")}, path)
    with pytest.raises(CheckpointError) as e:
        cspnet.get_model("cspresnet50", pretrained=path)
    msg = str(e.value)
    assert "needs the Python global argparse.Namespace" in msg and "could run code" in msg
    assert "\x1b[" not in msg and "WeightsUnpickler" not in msg and msg.endswith("then use OUT.safetensors.")
    assert f"cspnet convert {path} OUT.safetensors --to cspnet --unsafe-load" in msg
    safe = tmp_path / "safe.safetensors"
    assert cli(["convert", str(path), str(safe), "--to", "cspnet"]) == 2 and not safe.exists()
    with caplog.at_level(logging.WARNING, logger="cspnet"):
        assert cli(["convert", str(path), str(safe), "--to", "cspnet", "--unsafe-load"]) == 0
    assert "RUNS NOW" in caplog.text and str(path) in caplog.text
    assert _same(cspnet.get_model("cspresnet50", pretrained=safe), sd)  # the trusted file became a safe one
    with pytest.raises(CheckpointError, match="refused to load"):  # the hatch is on convert only
        cspnet.get_model("cspresnet50", pretrained=path)
    # no global named: the unpickler's own reason, in one clause (a legacy file pickled with protocol 4)
    torch.save({"a": torch.zeros(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.warns(UserWarning, match="pickle protocol 4"), pytest.raises(CheckpointError) as e:
        read(path)
    assert "needs something else (Unsupported operand 149), beyond the tensors" in str(e.value)


# ------------------------------------------------------------------------------------------------ downloads
@pytest.fixture()
def small_files(tmp_path):
    """A served folder: ``tiny.safetensors`` (a valid 2-tensor safetensors file, ~200 bytes) and ``big.pth`` (a
    valid torch zip of ~40 kB); and the cache the downloads go to."""
    from safetensors.torch import save_file

    d = tmp_path / "srv"
    d.mkdir()
    save_file({"a": torch.zeros(4), "b": torch.ones(2)}, str(d / "tiny.safetensors"))
    torch.save({"w": torch.zeros(10_000)}, d / "big.pth")
    return d, tmp_path / "cache"


def _nothing_in(cache: Path):
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))


@reliability("download-trickle", "download-slow-headers")
@pytest.mark.parametrize("mode", ["trickle", "slowheaders"])
def test_download_has_a_total_deadline(small_files, monkeypatch, mode):
    srv, cache = small_files
    monkeypatch.setenv("CSPNET_DOWNLOAD_DEADLINE", "1")  # the stall timeout (5 s here) never fires: bytes keep coming
    with FileServer(srv) as server:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"did not finish within 1 s .*CSPNET_DOWNLOAD_DEADLINE"):
            download(server.url("tiny.safetensors", mode), cache / "tiny.safetensors", progress=False)
        assert time.monotonic() - start < 3
        assert download(server.url("tiny.safetensors"), cache / "tiny.safetensors").is_file()  # a normal one fits
    (cache / "tiny.safetensors").unlink()
    _nothing_in(cache)
    monkeypatch.setenv("CSPNET_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(InvalidOptionError, match=r"\$CSPNET_DOWNLOAD_DEADLINE='soon': expected a positive number"):
        download("http://127.0.0.1:1/x.pth", cache / "x.pth")


@reliability("download-size-limit")
def test_download_size_limit(small_files, monkeypatch):
    srv, cache = small_files
    with FileServer(srv) as server:
        # a stream without Content-Length that never ends: stopped at the limit instead of filling the disk
        monkeypatch.setenv("CSPNET_DOWNLOAD_MAX_BYTES", "100000")
        with pytest.raises(DownloadError, match=r"stopped: more than the 100,000 bytes allowed .*no length"):
            download(server.url("big.pth", "endless"), cache / "big.pth", progress=False)
        # an announced length over the limit: refused before a byte is read
        with pytest.raises(DownloadError, match=r"announces 4\d,\d{3} bytes, more than the 1,000 allowed"):
            download(server.url("big.pth"), cache / "big.pth", max_bytes=1000)
        # a record's bound (the sources pass it): the whole search says why the file was refused
        record = [UrlFile(server.url("big.pth", "unsized"), "timm", max_bytes=1000)]
        with pytest.raises(WeightsNotFoundError, match=r"more than the 1,000 bytes allowed \(this file's size bound"):
            resolve("big", record, offline=False)
        _nothing_in(cache)
        # an unsized file under the limit is fine (complete when the server closes)
        got = download(server.url("big.pth", "unsized"), cache / "big.pth")
        assert got.read_bytes() == (srv / "big.pth").read_bytes()
    for w in cspnet.weights.records.WEIGHTS:
        assert all(4 * w.params < s.max_bytes < 16 * w.params for s in w.sources), w.name


@reliability("download-html-200")
def test_an_html_page_served_with_200_is_never_cached(small_files, capsys):
    srv, cache = small_files
    with FileServer(srv) as server:
        with pytest.raises(DownloadError, match=r"it is an HTML page .* starts with b'<!DOCTYPE html>") as e:
            download(server.url("tiny.safetensors", "html"), cache / "tiny.safetensors")
        assert "Nothing was kept" in str(e.value)
        _nothing_in(cache)
        url = server.url("model.pth", "html")
        assert cli(["predict", str(DEMO / "dog.jpg"), "--model", "cspresnet50", "--weights", url]) == 2
    err = capsys.readouterr().err
    assert "an HTML page" in err and "could run code" not in err
    assert not any(Path(cspnet.weights.sources.default_cache_dir()).rglob("*.pth"))


@reliability("download-same-name-two-hosts")
def test_two_urls_with_the_same_file_name_have_their_own_cache_entries(tmp_path):
    sd = recipe_state_dict("cspresnet50")
    other = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    for name, weights in (("a", sd), ("b", other)):
        (tmp_path / name).mkdir()
        save_state_dict(weights, tmp_path / name / "model.safetensors", "timm")
    with FileServer(tmp_path / "a") as a, FileServer(tmp_path / "b") as b:
        assert _same(cspnet.get_model("cspresnet50", pretrained=a.url("model.safetensors")), sd)
        assert _same(read(b.url("model.safetensors"), "cspresnet50"), other)
        assert _same(read(a.url("model.safetensors"), "cspresnet50"), sd)  # cached
        assert a.hits == ["/model.safetensors"] and b.hits == ["/model.safetensors"]


@reliability("download-offline-url")
def test_offline_mode_never_downloads_a_given_url(small_files, recipe_checkpoint, monkeypatch, capsys):
    srv, _ = small_files
    (srv / "w.safetensors").write_bytes(recipe_checkpoint("cspresnet50", "timm", ".safetensors").read_bytes())
    with FileServer(srv) as server:
        url = server.url("w.safetensors")
        monkeypatch.setenv("CSPNET_OFFLINE", "1")
        assert cli(["predict", str(DEMO / "dog.jpg"), "--model", "cspresnet50", "--weights", url]) == 2
        assert "not downloaded, as offline mode is on" in capsys.readouterr().err
        with pytest.raises(WeightsNotFoundError, match="offline"):
            cspnet.get_model("cspresnet50", pretrained=url)
        assert server.hits == []
        monkeypatch.delenv("CSPNET_OFFLINE")
        read(url, "cspresnet50")  # online: downloaded once ...
        read(url, "cspresnet50", offline=True)  # ... and then offline from the cache
        assert server.hits == ["/w.safetensors"]


@reliability("download-mirror-cached")
def test_a_mirror_file_is_downloaded_once(tmp_path, recipe_checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{unused_port()}")  # the "Hub" is unreachable
    srv = tmp_path / "mirror"
    srv.mkdir()  # serves the Hub's file as <weights name>.safetensors, not the mmpretrain one
    (srv / "cspresnet50.ra_in1k.safetensors").write_bytes(recipe_checkpoint("cspresnet50", "timm", ".safetensors")
                                                          .read_bytes())
    gone = ("^.*$", f"http://127.0.0.1:{unused_port()}/gone.pth")
    with FileServer(srv) as server:
        for _ in range(3):
            read(True, "cspresnet50", mirror=server.base, url_mapping=gone)
        assert server.hits.count("/cspresnet50.ra_in1k.safetensors") == 1
        with FileServer(srv) as other:  # another mirror's copy of that name is its own entry
            read(True, "cspresnet50", mirror=other.base, url_mapping=gone)
            assert other.hits.count("/cspresnet50.ra_in1k.safetensors") == 1
