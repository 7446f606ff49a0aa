"""wgmma / tcgen05 descriptor builders and ``explain``: the worked values of ptx-facts.md and the PTX
ISA, round trips over random valid field sets, rejections, and an independent cross-check against
NVIDIA CUTLASS's own C++ encoders (skipped where its headers or a host C++ compiler are missing)."""
from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from dsv4_numba.hw import descriptors as D
from dsv4_numba.hw.descriptors import (explain, explain_desc_main, umma_idesc, umma_idesc_block_scaled,
                                       umma_smem_desc, wgmma_smem_desc)

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# worked values
# --------------------------------------------------------------------------------------------


def test_idesc_worked_values_ptx_facts_2_3():
    # ptx-facts.md sec. 2.3 (checked there against CUTLASS 4.2 make_instr_desc)
    assert umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) == 0x08100490
    assert umma_idesc("f16", "f16", "f16", "f32", 128, 64) == 0x08100010
    assert umma_idesc("f16", "f16", "f16", "f16", 128, 64) == 0x08100000


def test_idesc_block_scaled_worked_value_ptx_facts_2_4():
    assert umma_idesc_block_scaled("mxf4nvf4", "e2m1", "e2m1", "ue4m3", 128, 128) == 0x08200480
    # the same tile with UE8M0 scales (MXFP4) only adds bit 23
    assert umma_idesc_block_scaled("mxf4", "e2m1", "e2m1", "ue8m0", 128, 128) == 0x08200480 | 1 << 23


@pytest.mark.parametrize("M, code", [(64, 4), (128, 8), (256, 16)])
def test_idesc_m_field(M, code):
    # sec. 2.3: M >> 4 at bits 24-28 (64 -> 4, 128 -> 8, 256 -> 16)
    g = 1 if M <= 128 else 2
    assert umma_idesc("f16", "bf16", "bf16", "f32", M, 128, cta_group=g) >> 24 & 0x1F == code


@pytest.mark.parametrize("M", [128, 256])
def test_block_scaled_m_field_matches_cutlass_reading(M):
    # sec. 2.4: PTX writes M >> 7 at bits 27-28; CUTLASS writes M >> 4 at bits 24-28: the same bits
    v = umma_idesc_block_scaled("mxf8f6f4", "e4m3", "e4m3", "ue8m0", M, 128, cta_group=2)
    assert v & (0x1F << 24) == (M >> 4) << 24 == (M >> 7) << 27


def test_smem_worked_example_ptx_facts_3_2():
    # K-major SW128 bf16 operand, 1024-B aligned: LBO = 16 B (encoded 1), SBO = 1024 B (encoded 64)
    for addr in (0, 0x400, 0x2C00, 0x3FC00):
        lo = addr >> 4 | 1 << 16
        assert umma_smem_desc(addr, 16, 1024, "128B") == 0x40004040 << 32 | lo
        assert wgmma_smem_desc(addr, 16, 1024, "128B") == 0x40000040 << 32 | lo


def test_smem_diagnostic_checklist_ptx_facts_4_2():
    # sec. 4.2 (iii): bit 46 = 1, bits 61-63 = 2, SBO field = 64 for a K-major SW128 operand
    d = umma_smem_desc(0x8000, 16, 1024, "128B")
    assert d >> 46 & 1 == 1 and d >> 61 == 2 and d >> 32 & 0x3FFF == 64
    e = explain(d, "umma-smem").fields
    assert e == dict(start_addr=0x8000, lbo=16, sbo=1024, swizzle="128B", base_offset=0, lbo_mode="relative")


@pytest.mark.parametrize("swizzle", ["none", "32B", "64B", "128B"])
def test_sm90_codes_are_sm100_codes_shifted(swizzle):
    # sec. 3.2 [inferred, checked by arithmetic]: sm_90 codes 1/2/3 at bit 62 == sm_100 codes 2/4/6 at
    # bit 61, so the descriptors differ only in the version bit 46
    f = dict(start_addr=0x1230, lbo=256, sbo=2048, swizzle=swizzle, base_offset=0 if swizzle == "none" else 3)
    assert wgmma_smem_desc(**f) | 1 << 46 == umma_smem_desc(**f)


@pytest.mark.parametrize("what, lbo, sbo, lbo_enc, sbo_enc", [
    ("tf32 K-major no swizzle (PTX Fig. 166)", 64 * 4, 32 * 4, 16, 8),
    ("tf32 K-major 32B swizzle (Fig. 167, LBO assumed 1)", 16, 64 * 4, 1, 16),
    ("bf16 MN-major no swizzle (Fig. 168)", 128 * 2, 64 * 2, 16, 8),
    ("bf16 MN-major 32B swizzle (Fig. 169)", 128 * 2, 256 * 2, 16, 32),
    ("bf16 MN-major 64B swizzle (Fig. 170)", 256 * 2, 512 * 2, 32, 64),
])
def test_ptx_lbo_sbo_encodings(what, lbo, sbo, lbo_enc, sbo_enc):
    # PTX sec. 9.7.15.5.1.2.1 examples (same text for tcgen05 in 9.7.16.3): encoded = bytes >> 4
    for build in (wgmma_smem_desc, umma_smem_desc):
        d = build(0, lbo, sbo, "none")
        assert d >> 16 & 0x3FFF == lbo_enc and d >> 32 & 0x3FFF == sbo_enc, what


def test_k_step_adds_to_start_field():
    # sec. 3.3: a K=16 bf16 step inside a SW128 row adds 32 B, i.e. +2 in the start-address field
    base = umma_smem_desc(0x4000, 16, 1024, "128B")
    assert umma_smem_desc(0x4000 + 32, 16, 1024, "128B") == base + 2


def test_swizzle_base_offset():
    assert D.swizzle_base_offset(0x400, "128B") == 0
    assert D.swizzle_base_offset(0x480, "128B") == 1
    assert D.swizzle_base_offset(0x380, "128B") == 7
    assert D.swizzle_base_offset(0x200, "64B") == 0 and D.swizzle_base_offset(0x280, "64B") == 5
    assert D.swizzle_base_offset(0x100, "32B") == 0 and D.swizzle_base_offset(0x180, "32B") == 3
    assert D.swizzle_base_offset(0x180, "none") == 0


def test_explain_issue_example_and_cli(capsys):
    e = explain(0x08100490, "umma-idesc")
    assert e.fields == dict(kind="f16", a_type="bf16", b_type="bf16", d_type="f32", M=128, N=64,
                            a_major="K", b_major="K", negate_a=False, negate_b=False, sparse=False,
                            sparse_id=0, saturate=False, max_shift=0, cta_group=1, ws=False)
    # the bits do not carry the kind: e5m2 x e5m2 under kind::f8f6f4 has the same codes
    assert any(a["fields"]["kind"] == "f8f6f4" and a["fields"]["a_type"] == "e5m2" for a in e.alternatives)
    assert explain(0x08100490, "umma-idesc", mma_kind="f8f6f4").fields["a_type"] == "e5m2"
    assert explain_desc_main(["0x08100490", "--kind", "umma-idesc"]) == 0
    out = capsys.readouterr().out
    assert "bf16" in out and "M = 128" in out and "N = 64" in out and "f8f6f4" in out
    assert explain_desc_main(["0x08200480", "--kind", "umma-idesc-bs"]) == 0
    out = capsys.readouterr().out
    assert "ue4m3" in out and "mxf4nvf4" in out
    assert explain_desc_main(["135267472", "--kind", "umma-idesc", "--json"]) == 0  # decimal input
    assert '"bf16"' in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["0x06100490", "--kind", "umma-idesc"], "M=96"),
    (["0x4000004000010040", "--kind", "umma-smem"], "version bits"),
    (["0x6000404000010040", "--kind", "umma-smem"], "swizzle"),
    (["0x08900490", "--kind", "umma-idesc"], "reserved bits 23"),
    (["0xZZ", "--kind", "umma-idesc"], "not a hex"),
    (["0x1ffffffff", "--kind", "umma-idesc"], "32-bit"),
])
def test_cli_rejects_with_exit_2(argv, needle, capsys):
    assert explain_desc_main(argv) == 2
    assert needle in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# random valid field sets
# --------------------------------------------------------------------------------------------

_ADDR = [0, 16, 0x400, 0x3FFF0, 0x1230, 0xC000]


def _rand_smem(rng: random.Random, sm100: bool) -> dict:
    while True:
        sw = rng.choice(list(D.UMMA_SWIZZLE if sm100 else D.WGMMA_SWIZZLE))
        f = dict(start_addr=rng.choice(_ADDR + [rng.randrange(0, 1 << 18, 16)]),
                 lbo=rng.choice([0, 16, 128, 256, rng.randrange(0, 1 << 18, 16)]),
                 sbo=rng.choice([0, 1024, 512, rng.randrange(0, 1 << 18, 16)]),
                 swizzle=sw, base_offset=0 if sw == "none" or rng.random() < 0.5 else rng.randrange(8))
        if sm100:
            f["lbo_mode"] = "absolute" if sw == "128B" and not f["base_offset"] and rng.random() < 0.3 else "relative"
        return f


def _rand_idesc(rng: random.Random) -> dict:
    while True:
        kind = rng.choice(D.DENSE_KINDS)
        types = list(D.IDESC_TYPES[kind])
        sparse = rng.random() < 0.25
        ws = rng.random() < 0.2
        f = dict(kind=kind, a_type=rng.choice(types), b_type=rng.choice(types),
                 d_type=rng.choice(["f16", "f32", "s32"] if rng.random() < 0.1 else D._KIND_DTYPES[kind]),
                 M=rng.choice([32, 64, 128, 256]),
                 N=rng.choice([rng.randrange(8, 257, 8), 64, 128, 256]),
                 a_major=rng.choice(["K", "MN"]), b_major=rng.choice(["K", "MN"]),
                 negate_a=rng.random() < 0.3, negate_b=rng.random() < 0.3, sparse=sparse,
                 sparse_id=rng.randrange(4) if sparse else 0, saturate=kind == "i8" and rng.random() < 0.5,
                 max_shift=rng.choice([0, 8, 16, 32]) if ws else 0, cta_group=rng.choice([1, 2]), ws=ws)
        try:
            umma_idesc(**f)
            return f
        except ValueError:
            continue


def _rand_idesc_bs(rng: random.Random) -> dict:
    while True:
        kind = rng.choice(D.BLOCK_SCALED_KINDS)
        types = list(D.IDESC_TYPES[kind])
        scale = rng.choice(["ue8m0", "ue4m3"])
        ids = [0, 1, 2, 3] if kind == "mxf8f6f4" or rng.random() < 0.1 else [0, 2] if scale == "ue8m0" else [0]
        f = dict(kind=kind, a_type=rng.choice(types), b_type=rng.choice(types),
                 scale_type=scale, M=rng.choice([128, 256]),
                 N=rng.choice([rng.randrange(8, 257, 8), 128, 256]), a_sf_id=rng.choice(ids),
                 b_sf_id=rng.choice(ids), a_major=rng.choice(["K", "MN"]), b_major=rng.choice(["K", "MN"]),
                 negate_a=rng.random() < 0.3, negate_b=rng.random() < 0.3, sparse=rng.random() < 0.25,
                 cta_group=rng.choice([1, 2]), k96=rng.random() < 0.3)
        try:
            umma_idesc_block_scaled(**f)
            return f
        except ValueError:
            continue


def _samples(gen, n, seed, *a):
    rng = random.Random(seed)
    return [gen(rng, *a) for _ in range(n)]


@pytest.mark.parametrize("sm100", [False, True])
def test_smem_round_trip(sm100):
    build, kind = (umma_smem_desc, "umma-smem") if sm100 else (wgmma_smem_desc, "wgmma-smem")
    for f in _samples(_rand_smem, 500, 1 + sm100, sm100):
        v = build(**f)
        assert 0 <= v < 1 << 64
        assert explain(v, kind).fields == f, (hex(v), f)
        assert str(explain(v, kind))  # the table renders


def test_idesc_round_trip():
    seen = set()
    for f in _samples(_rand_idesc, 600, 3):
        v = umma_idesc(**f)
        assert 0 <= v < 1 << 32
        e = explain(v, "umma-idesc", mma_kind=f["kind"], cta_group=f["cta_group"], ws=f["ws"])
        assert e.fields == f, (hex(v), f, e.fields)
        # unpinned: f is the primary reading or one of the alternatives
        e = explain(v, "umma-idesc")
        assert f in [e.fields] + [a["fields"] for a in e.alternatives]
        seen.add((f["kind"], f["cta_group"], f["ws"], f["sparse"]))
    assert len(seen) >= 20  # the generator covers the variants


def test_idesc_block_scaled_round_trip():
    seen = set()
    for f in _samples(_rand_idesc_bs, 600, 4):
        v = umma_idesc_block_scaled(**f)
        assert 0 <= v < 1 << 32
        e = explain(v, "umma-idesc-bs", mma_kind=f["kind"], cta_group=f["cta_group"])
        assert e.fields == f, (hex(v), f, e.fields)
        e = explain(v, "umma-idesc-bs")
        assert f in [e.fields] + [a["fields"] for a in e.alternatives]
        seen.add((f["kind"], f["cta_group"], f["sparse"], f["k96"]))
    assert len(seen) >= 12


def test_explain_rejects_random_corruptions():
    """Flipping a reserved bit of any valid descriptor is always rejected."""
    rng = random.Random(5)
    for f in _samples(_rand_idesc, 100, 6):
        v = umma_idesc(**f)
        for bit in (6, 23, 29):
            with pytest.raises(ValueError, match="reserved"):
                explain(v | 1 << bit, "umma-idesc")
    for f in _samples(_rand_idesc_bs, 100, 7):
        v = umma_idesc_block_scaled(**f)
        bit = rng.choice([0, 1, 3, 6, 24, 25, 26])
        with pytest.raises(ValueError, match="reserved"):
            explain(v | 1 << bit, "umma-idesc-bs")
    for f in _samples(_rand_smem, 100, 8, True):
        v = umma_smem_desc(**f)
        with pytest.raises(ValueError, match="version"):
            explain(v & ~(1 << 46), "umma-smem")
        with pytest.raises(ValueError, match="reserved"):
            explain(v | 1 << rng.choice([14, 15, 30, 31] + list(range(53, 61))), "umma-smem")
    for f in _samples(_rand_smem, 100, 9, False):
        v = wgmma_smem_desc(**f)
        with pytest.raises(ValueError):
            explain(v | 1 << rng.choice([14, 15, 30, 31, 46, 47, 48] + list(range(52, 62))), "wgmma-smem")


# --------------------------------------------------------------------------------------------
# the shape table, independently (PTX Table 39)
# --------------------------------------------------------------------------------------------

def _ok(fn, *a, **k) -> bool:
    try:
        fn(*a, **k)
        return True
    except ValueError:
        return False


def test_shape_table_dense():
    for kind, a, d in (("f16", "bf16", "f32"), ("tf32", "tf32", "f32"), ("f8f6f4", "e4m3", "f32"),
                       ("i8", "s8", "s32")):
        for N in range(8, 264, 8):
            if kind == "i8":
                ok1, ok2 = (N <= 32 or N % 16 == 0), N % 32 == 0
            else:
                ok1, ok2 = True, N % 16 == 0
            ok1, ok2 = ok1 and N <= 256, ok2 and N <= 256
            for M in (32, 64, 128, 256):
                assert _ok(umma_idesc, kind, a, a, d, M, N) == (ok1 and M in (64, 128)), (kind, M, N)
                assert _ok(umma_idesc, kind, a, a, d, M, N, cta_group=2) == (ok2 and M in (128, 256)), (kind, M, N)
                ws_ok = M in (32, 64, 128) and N in (64, 128, 256)
                assert _ok(umma_idesc, kind, a, a, d, M, N, ws=True) == ws_ok, (kind, M, N)
                assert _ok(umma_idesc, kind, a, a, d, M, N, ws=True, sparse=True) == (ws_ok and N != 256)


def test_shape_table_block_scaled():
    for kind, t, s in (("mxf8f6f4", "e4m3", "ue8m0"), ("mxf4", "e2m1", "ue8m0"), ("mxf4nvf4", "e2m1", "ue4m3")):
        for N in range(8, 264, 8):
            for M in (64, 128, 256):
                assert _ok(umma_idesc_block_scaled, kind, t, t, s, M, N) == (M == 128 and N <= 256)
                ok2 = M in (128, 256) and N % 16 == 0 and N <= 256
                assert _ok(umma_idesc_block_scaled, kind, t, t, s, M, N, cta_group=2) == ok2
                assert _ok(umma_idesc_block_scaled, kind, t, t, s, M, N, cta_group=2, sparse=True) == (ok2 and M == 256)
                assert _ok(umma_idesc_block_scaled, kind, t, t, s, M, N, cta_group=2, k96=True) == (
                    ok2 and M == 256 and kind != "mxf8f6f4")


# --------------------------------------------------------------------------------------------
# rejections: each names the offending field
# --------------------------------------------------------------------------------------------

_I = dict(kind="f16", a_type="bf16", b_type="bf16", d_type="f32", M=128, N=64)
_B = dict(kind="mxf4nvf4", a_type="e2m1", b_type="e2m1", scale_type="ue4m3", M=128, N=128)
_S = dict(start_addr=0x400, lbo=16, sbo=1024, swizzle="128B")


@pytest.mark.parametrize("build, base, change, needle", [
    (wgmma_smem_desc, _S, dict(start_addr=0x408), "start_addr"),
    (wgmma_smem_desc, _S, dict(start_addr=1 << 18), "start_addr"),
    (wgmma_smem_desc, _S, dict(lbo=-16), "lbo"),
    (wgmma_smem_desc, _S, dict(sbo=1000), "sbo"),
    (wgmma_smem_desc, _S, dict(swizzle="128B_base32B"), "swizzle"),
    (wgmma_smem_desc, _S, dict(swizzle="96B"), "swizzle"),
    (wgmma_smem_desc, _S, dict(base_offset=8), "base_offset"),
    (wgmma_smem_desc, _S, dict(swizzle="none", base_offset=1), "base_offset"),
    (umma_smem_desc, _S, dict(start_addr=3.0), "start_addr"),
    (umma_smem_desc, _S, dict(swizzle=2), "swizzle"),
    (umma_smem_desc, _S, dict(lbo_mode="absolute", swizzle="64B"), "lbo_mode"),
    (umma_smem_desc, _S, dict(lbo_mode="absolute", base_offset=1), "lbo_mode"),
    (umma_smem_desc, _S, dict(lbo_mode="abs"), "lbo_mode"),
    (umma_idesc, _I, dict(kind="mxf4"), "kind"),
    (umma_idesc, _I, dict(M=96), "M=96"),
    (umma_idesc, _I, dict(M=256), "M=256"),
    (umma_idesc, _I, dict(N=12), "N=12"),
    (umma_idesc, _I, dict(N=264), "N=264"),
    (umma_idesc, _I, dict(N=8, cta_group=2), "N=8"),
    (umma_idesc, _I, dict(cta_group=3), "cta_group"),
    (umma_idesc, _I, dict(a_type="e4m3"), "a_type"),
    (umma_idesc, _I, dict(b_type="f16"), "b_type"),
    (umma_idesc, _I, dict(d_type="f16"), "d_type"),
    (umma_idesc, _I, dict(d_type="s32"), "d_type"),
    (umma_idesc, _I, dict(a_major="M"), "a_major"),
    (umma_idesc, _I, dict(saturate=True), "saturate"),
    (umma_idesc, _I, dict(sparse_id=1), "sparse_id"),
    (umma_idesc, _I, dict(sparse=True, sparse_id=4), "sparse_id"),
    (umma_idesc, _I, dict(max_shift=8), "max_shift"),
    (umma_idesc, _I, dict(max_shift=4, ws=True), "max_shift"),
    (umma_idesc, _I, dict(ws=True, cta_group=2, M=128, N=128), "ws"),
    (umma_idesc, _I, dict(kind="i8", a_type="s8", b_type="s8", d_type="s32", negate_a=True), "negate"),
    (umma_idesc, _I, dict(kind="i8", a_type="s8", b_type="u8", d_type="s32", N=40), "N=40"),
    (umma_idesc, _I, dict(kind="i8", a_type="s8", b_type="u8", d_type="s32", b_major="MN", N=24), "N=24"),
    (umma_idesc, _I, dict(kind="f8f6f4", a_type="e2m1", b_type="e4m3", a_major="MN"), "a_major"),
    (umma_idesc, _I, dict(kind="f8f6f4", a_type="e4m3", b_type="e4m3", b_major="MN", N=72), "N=72"),
    (umma_idesc, _I, dict(kind="tf32", a_type="tf32", b_type="tf32", d_type="f16"), "d_type"),
    (umma_idesc_block_scaled, _B, dict(M=64), "M=64"),
    (umma_idesc_block_scaled, _B, dict(M=256), "M=256"),
    (umma_idesc_block_scaled, _B, dict(N=200, cta_group=2, M=256), "N=200"),
    (umma_idesc_block_scaled, _B, dict(M=128, cta_group=2, sparse=True), "M=128"),
    (umma_idesc_block_scaled, _B, dict(a_major="MN"), "a_major"),
    (umma_idesc_block_scaled, _B, dict(b_major="MN"), "b_major"),
    (umma_idesc_block_scaled, _B, dict(kind="mxf4"), "scale_type"),
    (umma_idesc_block_scaled, _B, dict(kind="mxf8f6f4"), "scale_type"),
    (umma_idesc_block_scaled, _B, dict(a_type="e4m3"), "a_type"),
    (umma_idesc_block_scaled, _B, dict(a_sf_id=2), "a_sf_id"),
    (umma_idesc_block_scaled, _B, dict(scale_type="ue8m0", b_sf_id=1), "b_sf_id"),
    (umma_idesc_block_scaled, _B, dict(kind="mxf8f6f4", a_type="e4m3", b_type="e4m3", scale_type="ue8m0",
                                       a_sf_id=4), "a_sf_id"),
    (umma_idesc_block_scaled, _B, dict(k96=True), "k96"),
    (umma_idesc_block_scaled, _B, dict(kind="mxf8f6f4", a_type="e4m3", b_type="e4m3", scale_type="ue8m0",
                                       k96=True, cta_group=2, M=256), "k96"),
    (umma_idesc_block_scaled, _B, dict(kind="f16"), "kind"),
])
def test_builders_reject(build, base, change, needle):
    with pytest.raises(ValueError) as ei:
        build(**{**base, **change})
    assert needle in str(ei.value)


@pytest.mark.parametrize("value, kind, kw, needle", [
    (umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) & ~(0x1F << 24) | 6 << 24, "umma-idesc", {}, "M=96"),
    (umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) & ~(0x3F << 17), "umma-idesc", {}, "N=0"),
    (umma_idesc("f16", "bf16", "bf16", "f32", 256, 64, cta_group=2), "umma-idesc", dict(cta_group=1), "M=256"),
    (umma_idesc("i8", "s8", "s8", "s32", 128, 48), "umma-idesc", dict(cta_group=2), "N=48"),
    (umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) | 3 << 4, "umma-idesc", {}, "d_type code 3"),
    (umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) | 7 << 7, "umma-idesc", {}, "a_type code 7"),
    (umma_idesc("f16", "bf16", "bf16", "f32", 128, 64) | 1 << 30, "umma-idesc", dict(ws=False), "max_shift"),
    (umma_idesc("f16", "bf16", "bf16", "f32", 128, 64), "umma-idesc", dict(mma_kind="i8"), "kind::i8"),
    (0x08200480 & ~(3 << 27), "umma-idesc-bs", {}, "M=0"),
    (0x08200480 | 3 << 27, "umma-idesc-bs", {}, "M=384"),
    (0x08200480 | 1 << 29, "umma-idesc-bs", {}, "a_sf_id"),
    (0x08200480 | 1 << 1, "umma-idesc-bs", {}, "reserved bits 0-1"),
    (0x08200480 | 1 << 12, "umma-idesc-bs", dict(mma_kind="mxf4nvf4"), "b_type"),
    (umma_smem_desc(0, 16, 1024, "128B") & ~(1 << 46), "umma-smem", {}, "version bits 46-48"),
    (umma_smem_desc(0, 16, 1024, "128B") | 1 << 47, "umma-smem", {}, "version bits 46-48"),
    (umma_smem_desc(0, 16, 1024, "none") | 3 << 61, "umma-smem", {}, "code 3"),
    (umma_smem_desc(0, 16, 1024, "none") | 5 << 61, "umma-smem", {}, "code 5"),
    (umma_smem_desc(0, 16, 1024, "none") | 7 << 61, "umma-smem", {}, "code 7"),
    (umma_smem_desc(0, 16, 1024, "none") | 2 << 49, "umma-smem", {}, "base_offset"),
    (umma_smem_desc(0, 16, 1024, "64B") | 1 << 52, "umma-smem", {}, "lbo_mode"),
    (umma_smem_desc(0, 16, 1024, "128B"), "wgmma-smem", {}, "sm_100"),
    (wgmma_smem_desc(0, 16, 1024, "128B") | 1 << 61, "wgmma-smem", {}, "reserved"),
    (1 << 64, "umma-smem", {}, "64-bit"),
    (-1, "wgmma-smem", {}, "64-bit"),
])
def test_explain_rejects(value, kind, kw, needle):
    with pytest.raises(ValueError) as ei:
        explain(value, kind, **kw)
    assert needle in str(ei.value), str(ei.value)


def test_explain_hints_sm90_descriptor():
    with pytest.raises(ValueError, match="wgmma"):
        explain(wgmma_smem_desc(0x400, 16, 1024, "128B"), "umma-smem")


def test_explain_bad_kind():
    with pytest.raises(ValueError, match="descriptor kind"):
        explain(0, "idesc")
    with pytest.raises(ValueError, match="instruction descriptors"):
        explain(0, "umma-smem", cta_group=1)


# --------------------------------------------------------------------------------------------
# independent cross-check against NVIDIA CUTLASS's C++ encoders
# --------------------------------------------------------------------------------------------

def _load_checker():
    path = ROOT / "tools" / "cutlass_desc_check" / "cutlass_desc_check.py"
    spec = importlib.util.spec_from_file_location("cutlass_desc_check", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cutlass_desc_check", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cutlass():
    mod = _load_checker()
    why = mod.unavailable_reason()
    if why:
        pytest.skip(f"CUTLASS cross-check unavailable: {why}")
    return mod


def test_against_cutlass(cutlass, tmp_path):
    """Every field set below is encoded by CUTLASS (make_runtime_instr_desc, make_instr_desc_block_scaled,
    GmmaDescriptor, UMMA::SmemDescriptor) in one compiled host program and compared bit for bit."""
    cases = [("idesc", dict(kind="f16", a_type="bf16", b_type="bf16", d_type="f32", M=128, N=64)),
             ("idesc", dict(kind="f16", a_type="f16", b_type="f16", d_type="f32", M=128, N=64)),
             ("idesc", dict(kind="f16", a_type="f16", b_type="f16", d_type="f16", M=128, N=64)),
             ("idesc_bs", dict(_B))]
    cases += [("idesc", f) for f in _samples(_rand_idesc, 150, 11)]
    cases += [("idesc_bs", f) for f in _samples(_rand_idesc_bs, 120, 12)]
    cases += [("wgmma", f) for f in _samples(_rand_smem, 60, 13, False)]
    cases += [("umma", f) for f in _samples(_rand_smem, 60, 14, True)]
    builders = {"idesc": umma_idesc, "idesc_bs": umma_idesc_block_scaled, "wgmma": wgmma_smem_desc,
                "umma": umma_smem_desc}
    ours = [builders[w](**f) for w, f in cases]
    theirs = cutlass.cutlass_encode(cases, workdir=tmp_path)
    bad = [(w, f, hex(a), hex(b)) for (w, f), a, b in zip(cases, ours, theirs) if a != b]
    assert not bad, f"{len(bad)} disagreements with CUTLASS {cutlass.cutlass_version(cutlass.find_cutlass_include())}: {bad[:5]}"
    assert ours[0] == 0x08100490 and ours[3] == 0x08200480
