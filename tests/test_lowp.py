"""bf16 on the CPU: the capability probe (``cspnet.optimize.cpu_features``) and what ``optimize_for_inference`` does
with it: native bf16 runs, emulated bf16 is refused unless asked for, unknown CPUs get a warning. The numerics of bf16
itself are in tests/test_fast.py (golden images) and benchmarks/bench_lowp.py (agreement on trained models)."""

from __future__ import annotations

import warnings

import pytest
import torch

import cspnet
import cspnet.optimize as optimize
from cspnet.errors import InvalidOptionError
from cspnet.optimize import CpuFeatures

# /proc/cpuinfo excerpts (flags trimmed to the ones that matter and a few neighbours)
SAPPHIRE_RAPIDS = "avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni"
ZEN4 = "avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni"
SKYLAKE_SP = "avx2 avx512f avx512dq avx512cd avx512bw avx512vl"
ALDER_LAKE = "avx2 avx_vnni fma"
CPUINFO_X86 = f"""processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 {ZEN4}

processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 {ZEN4}
"""
CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp \
sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 sveaes i8mm bf16 bti
CPU implementer\t: 0x41
"""


def features(flags: str, onednn: bool = True) -> CpuFeatures:
    return CpuFeatures("test CPU", frozenset(flags.split()), "AVX512", onednn)


@pytest.mark.parametrize("flags, bf16, int8", [
    (SAPPHIRE_RAPIDS, "amx", "amx"),
    (ZEN4, "avx512_bf16", "avx512_vnni"),
    (SKYLAKE_SP, None, None),  # AVX-512 without bf16: PyTorch's own check says yes, oneDNN only emulates it
    (ALDER_LAKE, None, "avx_vnni"),
])
def test_what_each_cpu_offers(flags, bf16, int8):
    cpu = features(flags)
    assert (cpu.bf16, cpu.int8) == (bf16, int8)
    assert (bf16 or "emulated") in cpu.describe()


def test_a_build_without_onednn_bf16_has_none_whatever_the_flags():
    assert features(SAPPHIRE_RAPIDS, onednn=False).bf16 is None


def test_cpuinfo_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO_X86)
    model, flags = optimize._cpuinfo(info)
    assert model == "AMD EPYC 9654 96-Core Processor" and flags == frozenset(f"fpu sse2 {ZEN4}".split())
    info.write_text(CPUINFO_ARM)
    model, flags = optimize._cpuinfo(info)
    assert model and {"bf16", "i8mm", "sve2"} <= flags  # Arm's cpuinfo names no model: the machine type stands in
    assert CpuFeatures(model, flags, "DEFAULT", True).bf16 == "arm_bf16"
    assert optimize._cpuinfo(tmp_path / "missing")[1] == frozenset()  # not Linux: flags unknown


def test_this_machine_is_probed_from_its_flags():
    cpu = optimize.cpu_features()
    assert cpu is optimize.cpu_features()  # read once
    assert cpu.torch_capability == torch.backends.cpu.get_cpu_capability()
    if cpu.known and cpu.onednn_bf16:
        assert (cpu.bf16 is not None) == bool({"avx512_bf16", "amx_bf16", "bf16"} & cpu.flags)


@pytest.fixture
def net(tiny_classifier):
    return tiny_classifier("cspdarknet53")


@pytest.mark.reliability("bf16-cpu-without-bf16")
def test_bf16_refused_on_a_cpu_that_would_emulate_it(net, monkeypatch):
    monkeypatch.setattr(optimize, "cpu_features", lambda: features(SKYLAKE_SP))
    with pytest.raises(InvalidOptionError, match=r"without bf16 instructions.*emulated_bf16=True"):
        cspnet.optimize_for_inference(net, dtype="bf16")
    # float32 does not depend on the CPU; asked for explicitly, emulated bf16 runs (and really is bf16)
    assert cspnet.optimize_for_inference(net).dtype is None
    fast = cspnet.optimize_for_inference(net, dtype=torch.bfloat16, emulated_bf16=True)
    assert fast.model.head.fc.weight.dtype == torch.bfloat16
    assert fast(torch.randn(2, 3, 64, 64)).dtype == torch.float32


def test_bf16_warned_where_the_flags_are_unknown_and_silent_where_native(net, monkeypatch):
    monkeypatch.setattr(optimize, "cpu_features", lambda: features(""))
    with pytest.warns(UserWarning, match="unknown"):
        cspnet.optimize_for_inference(net, dtype="bf16")
    monkeypatch.setattr(optimize, "cpu_features", lambda: features(ZEN4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cspnet.optimize_for_inference(net, dtype="bf16").dtype == torch.bfloat16


def test_int8_is_pointed_to_quantize(net):
    with pytest.raises(InvalidOptionError, match=r"dtype='int8'.*cspnet.quantize"):
        cspnet.optimize_for_inference(net, dtype="int8")


def test_predict_dtype_bf16_runs_bf16_where_the_cpu_has_it_and_is_refused_where_not(recipe_checkpoint, monkeypatch,
                                                                                     capsys, tmp_path):
    """``cspnet predict --dtype bf16``: bf16 scores (close to float32, not equal), recorded in the rows' sidecar; on a
    CPU that would emulate bf16, exit 2 with the reason. The CPU is set here, so both branches run everywhere."""
    from pathlib import Path

    from cspnet import rows
    from cspnet.cli import main as cli

    demo = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "demo").iterdir()
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:2]
    ckpt = str(recipe_checkpoint("cspdarknet53"))
    monkeypatch.setattr(optimize, "cpu_features", lambda: features(ZEN4))
    out = {}
    for dtype in ("fp32", "bf16"):
        assert cli(["predict", *demo, "--weights", ckpt, "--dtype", dtype, "--output", str(tmp_path / f"{dtype}.jsonl"),
                    "--num-workers", "0"]) == 0
        out[dtype] = rows.read_rows(tmp_path / f"{dtype}.jsonl")
        assert rows.read_meta(tmp_path / f"{dtype}.jsonl")["dtype"] == dtype
    fp32, bf16 = ([r["topk_scores"][0] for r in out[d]] for d in ("fp32", "bf16"))
    assert fp32 != bf16 and max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05
    monkeypatch.setattr(optimize, "cpu_features", lambda: features(SKYLAKE_SP))
    capsys.readouterr()
    assert cli(["predict", demo[0], "--weights", ckpt, "--dtype", "bf16"]) == 2
    assert "without bf16 instructions" in capsys.readouterr().err
