"""The corpus of docs/reliability.md, "Outputs" and "Configs and options": writes that must not replace what is
there, destinations that cannot be written, and option values that must be refused with a message.

Refusals happen before any model work: the ``no_model_work`` fixture makes every loader fail, so a test passes only if
the refusal comes first. Devices are stood in for by harmless ones made here (a FIFO, a socket, a link to /dev/null).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from cspnet import _io
from cspnet.cli import main as cli
from cspnet.errors import ExportError, InvalidOptionError, TrainingError
from cspnet.export import MAX_PIXELS, check_size, export_model
from golden import DEMO

reliability = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "cspnet" / "cspresnet50_8xb32_in1k.py")
IMAGE = str(DEMO / "dog.jpg")


def _failing(*args, **kwargs):
    raise AssertionError("model work started before the options were checked")


@pytest.fixture
def no_model_work(monkeypatch):
    """Every command's first piece of real work fails the test: refusals must come before it."""
    import cspnet.config
    import cspnet.weights
    import cspnet.weights.sources
    from cspnet.cli import cam, export, predict

    for module in (cam, export, predict):
        monkeypatch.setattr(module, "load_model", _failing)
    monkeypatch.setattr(cspnet.weights, "read", _failing)  # convert
    monkeypatch.setattr(cspnet.weights.sources, "resolve", _failing)  # download
    monkeypatch.setattr(cspnet.config, "load_config", _failing)  # test


@pytest.fixture
def tiny_export(tiny_classifier, monkeypatch):
    """``cspnet export`` of a small net (the same code paths as a zoo model, a fraction of the time)."""
    from cspnet.cli import export

    model = tiny_classifier("cspresnet50")
    monkeypatch.setattr(export, "load_model", lambda args, device=None: model)
    return lambda *argv: cli(["export", "cspresnet50", "--format", "torchscript", "--image-size", "64",
                              "--no-verify", *argv])


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nobody may write into (mode 0555)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        # root writes through permission bits: answer for this folder as the kernel answers any other user (or as it
        # answers root on a read-only mount)
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK and os.path.realpath(p) ==
                            os.path.realpath(folder) else access(p, mode, **kw))
    yield folder
    folder.chmod(0o755)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------- links and devices
@reliability("output-symlink")
def test_a_link_is_written_through_and_stays_a_link(tiny_export, tmp_path):
    target = tmp_path / "models" / "real.pt"
    target.parent.mkdir()
    target.write_bytes(b"the previous export")
    target.chmod(0o600)
    link = tmp_path / "latest.pt"
    link.symlink_to(Path("models") / "real.pt")  # relative, as `ln -s` makes them
    assert tiny_export("--output", str(link)) == 0
    assert link.is_symlink() and os.readlink(link) == str(Path("models") / "real.pt")
    assert zipfile.is_zipfile(target)  # the TorchScript archive replaced the file the link points to
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a private file stays private
    assert _listing(target.parent) == ["real.pt"] and _listing(tmp_path) == ["latest.pt", "models"]
    # a chain of links, and a link to a file not there yet (made, in a folder made for it)
    chain = tmp_path / "chain"
    chain.symlink_to(link)
    _io.atomic_write(chain, lambda tmp: tmp.write_text("through two links"))
    assert target.read_text() == "through two links" and chain.is_symlink() and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "new" / "made.txt")
    _io.atomic_write(dangling, lambda tmp: tmp.write_text("made"))
    assert (tmp_path / "new" / "made.txt").read_text() == "made" and dangling.is_symlink()


@reliability("output-device", "output-fifo", "output-socket")
@pytest.mark.parametrize("kind", ["device", "fifo", "socket"])
def test_devices_fifos_and_sockets_are_refused(tmp_path, kind, no_model_work, capsys):
    dst = tmp_path / f"out-{kind}"
    if kind == "device":
        dst.symlink_to("/dev/null")  # a character device, through a link: the rename would replace /dev/null
    elif kind == "fifo":
        os.mkfifo(dst)  # opening it to write would block until a reader comes
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(dst))
    try:
        commands = [["export", "--output", str(dst)], ["convert", str(DEMO / "x.pth"), str(dst), "--to", "timm"],
                    ["cam", IMAGE, "--output", str(dst)], ["test", CONFIG, "c.pth", "--output", str(dst)]]
        words = {"device": "character device", "fifo": "FIFO", "socket": "socket"}[kind]
        for argv in commands:
            assert cli(argv) == 2, argv
            err = capsys.readouterr().err
            assert str(dst) in err and f"is a {words}" in err and "give a file path" in err, err
        with pytest.raises(InvalidOptionError, match=words):
            _io.atomic_write(dst, lambda tmp: tmp.write_text("x"))
    finally:
        if kind == "socket":
            server.close()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert _listing(tmp_path) == [dst.name]  # no temporary file left; the special file is what it was
    mode = os.lstat(dst).st_mode
    assert {"device": stat.S_ISLNK, "fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK}[kind](mode)


@reliability("output-stdout")
def test_links_to_standard_streams_are_refused(tmp_path, no_model_work, capsys):
    link = tmp_path / "to-stdout.json"
    link.symlink_to("/dev/stdout")  # mmpretrain habit: --out a link to stdout printed nothing (it was replaced)
    for out in (str(link), "/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/dev/fd/1"):
        assert cli(["test", CONFIG, "c.pth", "--out", out]) == 2
        captured = capsys.readouterr()
        assert "standard stream" in captured.err and repr(out) in captured.err and captured.out == ""
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"


@reliability("output-directory", "output-parent-is-file")
def test_a_folder_or_a_file_in_the_way_is_refused(tmp_path, no_model_work, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("keep")
    assert cli(["export", "--output", str(tmp_path / "folder")]) == 2
    assert "is a folder; give a file path" in capsys.readouterr().err
    assert cli(["convert", "src.pth", str(tmp_path / "folder"), "--to", "timm", "--force"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert cli(["export", "--output", str(tmp_path / "notes.txt" / "m.onnx")]) == 2
    assert f"{str(tmp_path / 'notes.txt')!r} is a file, not a folder" in capsys.readouterr().err
    assert cli(["test", CONFIG, "c.pth", "--work-dir", str(tmp_path / "notes.txt")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep" and _listing(tmp_path) == ["folder", "notes.txt"]


# --------------------------------------------------------------------------------------------------- inputs
@reliability("output-is-input")
def test_an_output_that_is_an_input_is_refused(tmp_path, no_model_work, capsys):
    src = tmp_path / "w.pth"
    src.write_bytes(b"the only copy of the weights")
    (tmp_path / "alias.pth").symlink_to(src)
    os.link(src, tmp_path / "hard.pth")
    for dst in ("w.pth", "alias.pth", "hard.pth"):  # the same file, by name, by link and by hard link
        assert cli(["convert", str(src), str(tmp_path / dst), "--to", "timm", "--force"]) == 2
        assert "is the input" in capsys.readouterr().err
    assert cli(["export", "--weights", str(src), "--output", str(src)]) == 2
    assert cli(["test", CONFIG, str(src), "--output", str(tmp_path / "alias.pth")]) == 2
    # pictures: cam over its own image; predict --save-vis into the images' folder, whose a.png is an input
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "a.png").write_bytes(Path(DEMO / "cat-dog.png").read_bytes())
    assert cli(["cam", str(pics / "a.png"), "--output", str(pics / "a.png")]) == 2
    assert cli(["predict", str(pics / "a.png"), "--save-vis", str(pics)]) == 2
    err = capsys.readouterr().err
    assert err.count("is the input") == 4 and "--save-vis" in err
    assert src.read_bytes() == b"the only copy of the weights"
    assert (pics / "a.png").read_bytes() == Path(DEMO / "cat-dog.png").read_bytes()


# ------------------------------------------------------------------------------------- unwritable, disk full
@reliability("output-read-only")
@pytest.mark.parametrize("command", ["export", "convert", "predict", "cam", "download", "test-output", "test-work-dir"])
def test_a_read_only_destination_is_refused_before_any_work(read_only, no_model_work, command, capsys):
    dst = read_only / "sub" / "out.png"  # a folder to make inside the read-only one
    argv = {"export": ["export", "--output", str(dst)],
            "convert": ["convert", "src.pth", str(read_only / "out.pth"), "--to", "timm"],
            "predict": ["predict", IMAGE, "--save-vis", str(read_only)],
            "cam": ["cam", IMAGE, "--output", str(dst)],
            "download": ["download", "cspresnet50", "--dest", str(read_only)],
            "test-output": ["test", CONFIG, "c.pth", "--output", str(read_only / "r.json")],
            "test-work-dir": ["test", CONFIG, "c.pth", "--work-dir", str(read_only / "wd")]}[command]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"{str(read_only)!r}" in err and "choose a folder you can write to" in err, err
    assert ("cannot write into the folder" if command in ("predict", "download", "convert", "test-output") else
            "is not writable") in err, err
    assert _listing(read_only) == []


def test_export_to_a_read_only_folder_fails_before_the_model_loads(read_only, tiny_classifier):
    with pytest.raises(InvalidOptionError, match="cannot write into"):
        export_model(tiny_classifier(), read_only / "m.onnx", image_size=64)


@reliability("output-disk-full")
def test_a_full_disk_is_an_error_and_the_old_file_stays(tiny_export, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.pt"
    out.write_bytes(b"the previous export")

    def full(self, data):
        with open(self, "wb") as f:
            f.write(data[:1000])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    assert tiny_export("--output", str(out)) == 2
    err = capsys.readouterr().err
    assert f"cannot write the exported model {str(out)!r}: the disk is full" in err
    assert "is unchanged; free some space or write elsewhere" in err
    assert out.read_bytes() == b"the previous export" and _listing(tmp_path) == ["m.pt"]
    # any writer that leaves the disk full (torch.save says "unexpected pos", safetensors its own error type)
    monkeypatch.setattr(_io, "_free_bytes", lambda folder: 0)

    def writer(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(InvalidOptionError, match="disk is full"):
        _io.atomic_write(tmp_path / "w.pth", writer)
    with pytest.raises(ExportError, match="disk is full"):
        _io.atomic_write(tmp_path / "w.pth", writer, error=ExportError)
    assert _listing(tmp_path) == ["m.pt"]


@reliability("checkpoint-disk-full")
@pytest.mark.parametrize("failure", ["ENOSPC", "torch-writer"])
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    from cspnet.engine import checkpoint

    state = {"model": {"w": torch.arange(4.0)}, "optimizer": None, "epoch": 1, "step": 10, "meta": {}}
    first = checkpoint.save_checkpoint(state, tmp_path / "epoch_1.pth")
    before = first.read_bytes()

    def torch_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(before[: len(before) // 2])  # half written, then the disk is full
        if failure == "ENOSPC":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", torch_save)
    if failure == "torch-writer":
        monkeypatch.setattr(_io, "_free_bytes", lambda folder: 4096)
    with pytest.raises(TrainingError) as e:
        checkpoint.save_checkpoint({**state, "epoch": 2}, tmp_path / "epoch_2.pth")
    msg = str(e.value)
    assert f"cannot write checkpoint {str(tmp_path / 'epoch_2.pth')!r}: the disk is full" in msg
    assert f"The previous checkpoint {str(first)!r} is intact" in msg and f"--resume {first}" in msg
    assert first.read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "epoch_1.pth\n"
    assert _listing(tmp_path) == ["epoch_1.pth", "last_checkpoint"]  # no partial left


# -------------------------------------------------------------------------------------- killed mid-write
_WRITER = textwrap.dedent("""
    import sys, time
    from cspnet._io import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half of a checkpoint")
        print("writing", flush=True)
        time.sleep(60)
""")


@reliability("output-stale-partial")
def test_partials_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dst = tmp_path / "epoch_3.pth"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(dst)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        (live,) = tmp_path.glob(".epoch_3.pth.*.partial")
        assert f"-{writer.pid}." in live.name
        _io.atomic_write(dst, lambda tmp: tmp.write_text("first"))
        assert live.exists()  # its writer is alive: never touched
    finally:
        writer.kill()  # SIGKILL: no cleanup runs
        writer.wait()
    assert live.exists()  # the orphan a kill -9 leaves
    other_host = tmp_path / f".epoch_3.pth.{'0' * 8}-{writer.pid}.abcdefgh.partial"
    other_host.write_text("another machine's live write on a shared disk")
    legacy_old, legacy_new = tmp_path / ".epoch_3.pth.k2j4h5g6.partial", tmp_path / ".epoch_3.pth.z9y8x7w6.partial"
    legacy_old.write_text("before pids were in the name, untouched for 2 days")
    legacy_new.write_text("before pids were in the name, just written")
    os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
    neighbour = tmp_path / f".epoch_3.pth.old.{_io._HOST}-{writer.pid}.abcdefgh.partial"  # epoch_3.pth.old's
    neighbour.write_text("x")
    _io.atomic_write(dst, lambda tmp: tmp.write_text("second"))
    assert dst.read_text() == "second"
    assert not live.exists() and not legacy_old.exists()
    assert other_host.exists() and legacy_new.exists() and neighbour.exists()


# ---------------------------------------------------------------------------------------- export options
@reliability("export-image-size-too-large")
def test_export_sizes_are_bounded_before_any_work(no_model_work, tiny_classifier, tmp_path, capsys):
    for argv in (["--image-size", "1000000"], ["--image-size", "4097", "224"], ["--image-size", "0"]):
        assert cli(["export", *argv]) == 2
        assert "--image-size" in capsys.readouterr().err
    for argv in (["--image-size", "4096", "--batch-size", "2"], ["--image-size", "4096", "--dynamic-batch"],
                 ["--image-size", "256", "--batch-size", "1000000"]):
        assert cli(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert "--image-size" in err and "--batch-size" in err and f"{MAX_PIXELS:,}" in err
    check_size((4096, 4096), 1, False)  # the bound itself is allowed
    check_size((256, 256), 256, False)
    tiny = tiny_classifier()
    with pytest.raises(InvalidOptionError, match="image_size"):
        export_model(tiny, tmp_path / "m.onnx", image_size=1_000_000)
    with pytest.raises(InvalidOptionError, match="batch_size"):  # its eval crop, 256, times 300
        export_model(tiny, tmp_path / "m.onnx", batch_size=300)
    assert _listing(tmp_path) == []


@reliability("export-opset-out-of-range", "export-atol-negative")
def test_export_opset_and_atol_are_checked_before_any_work(no_model_work, tiny_classifier, tmp_path, capsys):
    for argv, words in ((["--opset", "0"], "--opset 0: the installed exporter writes opsets 11 to"),
                        (["--opset", "99"], "--opset 99"), (["--opset", "10"], "--opset 10"),
                        (["--atol", "-1"], "--atol=-1.0"), (["--atol", "nan"], "--atol=nan"),
                        (["--atol", "inf"], "--atol=inf")):
        assert cli(["export", *argv]) == 2
        assert words in capsys.readouterr().err
    with pytest.raises(InvalidOptionError, match="atol"):
        export_model(tiny_classifier(), tmp_path / "m.onnx", atol=-1)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------------------------- devices
@reliability("device-unknown", "device-unavailable")
def test_devices_that_do_not_exist_are_named_with_the_valid_ones(monkeypatch, capsys):
    from cspnet.engine.distributed import default_device

    monkeypatch.setattr("cspnet.inference.get_model", _failing)  # the device is checked before the model is built
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without CUDA
    for device, words in (("banana", "is not a device"), ("cuda", "CUDA is not available"),
                          ("cuda:1", "CUDA is not available"), ("meta", "is not available on this machine")):
        assert cli(["predict", IMAGE, "--device", device]) == 2
        err = capsys.readouterr().err
        assert f"--device {device!r}" in err and words in err and "valid here: cpu" in err, err
    assert cli(["test", CONFIG, "c.pth", "--device", "banana"]) == 2  # through init_distributed
    assert "--device 'banana' is not a device" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert default_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(InvalidOptionError, match=r"'cuda:7' is not available on this machine; valid here: cpu, "
                                                 r"cuda, cuda:0"):
        default_device("cuda:7")


# ------------------------------------------------------------------------------------------------ configs
def _train(capsys, *options: str) -> str:
    assert cli(["train", CONFIG, "--cfg-options", *options]) == 2
    return capsys.readouterr().err


@reliability("config-wrong-type")
@pytest.mark.parametrize("option, words", [
    ("train_dataloader.batch_size=abc", "train_dataloader.batch_size='abc': expected an integer >= 1"),
    ("model.head.num_classes=ten", "model.head.num_classes='ten': expected an integer >= 0"),
    ("train_dataloader.dataset.pipeline.1=None", "pipeline.1=None: each step must be a dict"),
    ("train_dataloader.batch_size=1e100", "train_dataloader.batch_size=1e+100: expected an integer >= 1"),
    ("optim_wrapper.optimizer.lr=abc", "optim_wrapper.optimizer.lr='abc': expected a learning rate >= 0"),
    ("train_cfg.max_epochs=2.5", "train_cfg.max_epochs=2.5: expected an integer >= 1"),
    ("model.head=abc", "model.head must be a dict"),
    ("a=" + "[" * 5000 + "]" * 5000, "nests brackets too deeply"),
])
def test_a_wrong_type_is_a_message_naming_the_key(tmp_path, monkeypatch, capsys, option, words):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, it would be here
    err = _train(capsys, option)
    assert err.startswith("cspnet train: error: ") and words in err and "Traceback" not in err, err
    assert _listing(tmp_path) == []


@reliability("config-std-zero", "config-non-finite-number")
@pytest.mark.parametrize("option, words", [
    ("data_preprocessor.std=[0,0,0]", "must be positive"),
    ("model.data_preprocessor.std=[1,-1,1]", "must be positive"),
    ("data_preprocessor.std=[inf,1,1]", "expected 3 finite numbers"),
    ("data_preprocessor.mean=[nan,0,0]", "expected 3 finite numbers"),
    ("optim_wrapper.optimizer.lr=inf", "optim_wrapper.optimizer.lr=inf: expected a learning rate >= 0"),
    ("optim_wrapper.optimizer.lr=nan", "optim_wrapper.optimizer.lr=nan"),
    ("model.head.loss.loss_weight=inf", "loss_weight=inf: expected a finite number"),
])
def test_values_that_would_only_fail_later_are_refused(tmp_path, monkeypatch, capsys, option, words):
    monkeypatch.chdir(tmp_path)
    assert words in _train(capsys, option)
    if "preprocessor" in option:  # evaluation reads the same normalisation
        assert cli(["test", CONFIG, "c.pth", "--cfg-options", option]) == 2
        assert words in capsys.readouterr().err


@reliability("config-seed-out-of-range")
@pytest.mark.parametrize("option", ["randomness.seed=-1", f"randomness.seed={2**64}",
                                    "train_dataloader.sampler.seed=-5"])
def test_seeds_outside_what_the_generators_take_are_refused(tmp_path, monkeypatch, capsys, option):
    monkeypatch.chdir(tmp_path)
    assert "expected an integer from 0 to 2**32 - 1" in _train(capsys, option)
    assert cli(["train", CONFIG, "--seed", "-1"]) == 2  # the switch is the same key
    assert "randomness.seed=-1" in capsys.readouterr().err
