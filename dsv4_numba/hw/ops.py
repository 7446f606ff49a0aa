"""Numba intrinsics generated from the PTX snippets: ``ops.<snippet name>(...)`` inside a kernel.

Each binding emits its snippet's body through ``builder.asm`` with the snippet's constraints. A
tuple return type (``UniTuple(uint32, 4)``) becomes an LLVM literal struct of outputs, unpacked into a
Numba tuple. These bindings exist only for compiled kernels: under the CUDA simulator they raise.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.cuda.extending import intrinsic

from .snippets import SNIPPETS, Snippet


def _numba_sig(text: str):
    return eval(text, {k: getattr(types, k) for k in dir(types) if not k.startswith("_")})  # noqa: S307


def bind(sn: Snippet):
    """The intrinsic for one snippet."""
    sig = _numba_sig(sn.signature)
    is_tuple = isinstance(sig.return_type, types.BaseTuple)

    def codegen(ctx, builder, signature, args):
        rt = signature.return_type
        if is_tuple:
            lret = ir.LiteralStructType([ctx.get_value_type(t) for t in rt.types])
        elif rt == types.void:
            lret = ir.VoidType()
        else:
            lret = ctx.get_value_type(rt)
        fnty = ir.FunctionType(lret, [ctx.get_value_type(t) for t in signature.args])
        out = builder.asm(fnty, sn.body, sn.constraints, list(args), sn.side_effect)
        if is_tuple:
            return ctx.make_tuple(builder, rt, [builder.extract_value(out, i)
                                                for i in range(len(rt.types))])
        return out if rt != types.void else ctx.get_dummy_value()

    def build(typingctx, args):
        if len(args) != len(sig.args):
            return None
        return sig, codegen

    # numba's intrinsic needs a typer with named positional parameters
    params = ", ".join(f"a{i}" for i in range(len(sig.args)))
    ns = {"build": build}
    exec(f"def {sn.name}(typingctx{', ' if params else ''}{params}):\n"  # noqa: S102
         f"    return build(typingctx, ({params}{',' if params else ''}))", ns)
    fn = ns[sn.name]
    fn.__doc__ = (f"{sn.instruction}  [{sn.ptx_isa}; min {sn.min_arch}]\n"
                  f"signature {sn.signature}\n{sn.layout}")
    return intrinsic(fn)


for _name, _sn in SNIPPETS.items():
    globals()[_name] = bind(_sn)

__all__ = sorted(SNIPPETS)


@intrinsic
def array_address(typingctx, arr):
    """The generic 64-bit address of an array's first element (for vector loads/stores).

    Not a PTX instruction: an LLVM ``ptrtoint`` of the array's data pointer. Kernels add byte
    offsets to it and hand it to ``ld_global_nc_v4_u32`` / ``st_global_v4_b32``.
    """
    if not isinstance(arr, types.Array):
        return None

    def codegen(ctx, builder, signature, args):
        data = ctx.make_array(signature.args[0])(ctx, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))
    return types.uint64(arr), codegen


__all__.append("array_address")


@intrinsic
def shared_address(typingctx, arr):
    """The 32-bit .shared-window address of a shared array's first element.

    Not a PTX instruction: an LLVM ``addrspacecast`` to address space 3 and ``ptrtoint`` to i32 —
    what ``st.shared`` / ``ld.shared`` / ``mbarrier`` operands need (a generic pointer would be
    accepted by ptxas and be wrong at run time).
    """
    if not isinstance(arr, types.Array):
        return None

    def codegen(ctx, builder, signature, args):
        p = ctx.make_array(signature.args[0])(ctx, builder, args[0]).data
        p3 = builder.addrspacecast(p, ir.PointerType(p.type.pointee, 3))
        return builder.ptrtoint(p3, ir.IntType(32))
    return types.uint32(arr), codegen


__all__.append("shared_address")


# ---------------------------------------------------------------- generated: wgmma.mma_async
WGMMA_N = (8, 64, 128, 256)
WGMMA_DTYPES = {"bf16": 16, "f16": 16, "e4m3": 32, "e5m2": 32}   # input type -> K of one instruction


def wgmma_snippet(n: int, dtype: str = "bf16", a_from: str = "smem", trans_b: bool = False) -> Snippet:
    """The contract of one ``wgmma.mma_async.sync.aligned.m64n{n}k{K}.f32.{dtype}.{dtype}`` (sm_90a).

    Too wide to write by hand (N/2 f32 accumulators per thread), so generated here instead of living
    in ``ptx/``. Binding ``wgmma_m64n{n}k{K}_f32_{dtype}_{ss|rs}``: arguments are the N/2 accumulator
    floats (tied in/out operands), then A (``uint64`` smem descriptor, or 4 ``uint32`` registers),
    the ``uint64`` B descriptor and ``uint32`` accumulate (0: D = A*B; else D += A*B). Returns the N/2
    new accumulators as a tuple. No negate (imm-scale 1); A is K-major (imm-trans-a 0).

    ``trans_b=True`` (f16/bf16 only; binding name suffix ``_tb``) sets imm-trans-b = 1: B is
    **MN-major** in shared memory (N contiguous, e.g. attention's V as the B of P@V), described by an
    MN-major descriptor (128B swizzle: rows of 64 N-elements = 128 B per K index, LBO = byte
    distance between 64-wide N blocks, SBO = distance between groups of 8 K rows; ptx-facts §3.3).
    With ``trans_b=False`` (imm-trans-b 0) B is K-major (the N x K tile, K contiguous).
    """
    k = WGMMA_DTYPES[dtype]
    if n not in range(8, 257, 8) or a_from not in ("smem", "regs"):
        raise ValueError(f"wgmma: N={n} (8..256 step 8) / a_from={a_from!r} (smem|regs)")
    if trans_b and k != 16:
        raise ValueError(f"wgmma: imm-trans-b exists only for f16/bf16 (not {dtype}: 8-bit inputs "
                         "must be K-major)")
    acc = n // 2
    outs = ", ".join(f"${i}" for i in range(acc))
    nxt = 2 * acc                                    # $acc..$2acc-1 are the tied inputs
    if a_from == "smem":
        a_ops, a_sig, a_cons = f"${nxt}", "uint64", "l"
        nxt += 1
    else:
        a_ops = "{" + ", ".join(f"${nxt + i}" for i in range(4)) + "}"
        a_sig, a_cons = "uint32, uint32, uint32, uint32", "r,r,r,r"
        nxt += 4
    b_op, scale_op = f"${nxt}", f"${nxt + 1}"
    tb = int(bool(trans_b))
    imms = "1, 1" + (f", 0, {tb}" if k == 16 and a_from == "smem" else f", {tb}" if k == 16 else "")
    instr = f"wgmma.mma_async.sync.aligned.m64n{n}k{k}.f32.{dtype}.{dtype}"
    name = (f"wgmma_m64n{n}k{k}_f32_{dtype}_{'ss' if a_from == 'smem' else 'rs'}"
            + ("_tb" if trans_b else ""))
    body = "\n\t".join(["{", ".reg .pred p;", f"setp.ne.b32 p, {scale_op}, 0;",
                        f"{instr} {{{outs}}}, {a_ops}, {b_op}, p, {imms};", "}"])
    a_lay = ("A = 64-bit sm_90 smem descriptor of the 64xK tile" if a_from == "smem" else
             "A = 4 b32 registers per thread, the m64xK A fragment (lane l of warp w holds rows "
             "16w + l/4 and 16w + l/4 + 8; each register packs adjacent-K elements)")
    return Snippet(
        name=name, file="<generated: dsv4_numba.hw.ops.wgmma_snippet>", instruction=instr,
        ptx_isa="PTX ISA 9.1 §9.7.15.5 (wgmma.mma_async)", min_arch="sm_90a",
        signature=f"UniTuple(float32, {acc})({', '.join(['float32'] * acc)}, {a_sig}, uint64, uint32)",
        constraints=",".join(["=f"] * acc + [str(i) for i in range(acc)] + [a_cons, "l", "r",
                                                                          "~{memory}"]),
        side_effect=True,
        layout=(f"args: {acc} f32 accumulators (in and out, tied), {a_lay}, B = smem descriptor (Kx{n}, "
                f"{'MN-major, imm-trans-b 1' if trans_b else 'K-major'}),"
                f" accumulate. Accumulator register i of thread t (warp w = t/32, lane l = t%32) is "
                f"D[16w + l/4 + 8*((i/2)%2)][8*(i/4) + 2*(l%4) + i%2]. All 128 threads of the "
                f"warpgroup execute it between wgmma_fence and wgmma_commit_group; read the result "
                f"only after the covering wgmma_wait_group_*."),
        body=body)


WGMMA = {}
for _n in WGMMA_N:
    for _dt in ("bf16", "e4m3"):
        for _src in ("smem", "regs"):
            for _tb in ((False, True) if _dt == "bf16" else (False,)):
                _sn = wgmma_snippet(_n, _dt, _src, _tb)
                WGMMA[_sn.name] = _sn
                globals()[_sn.name] = bind(_sn)
                __all__.append(_sn.name)



def wgmma_binding(n: int, dtype: str = "bf16", a_from: str = "smem", trans_b: bool = False):
    """The ``ops.wgmma_m64n{n}...`` binding for any N (8..256 step 8), created on first use and kept as
    a module attribute (only N in WGMMA_N are bound at import)."""
    sn = wgmma_snippet(n, dtype, a_from, trans_b)
    if sn.name not in WGMMA:
        WGMMA[sn.name] = sn
        globals()[sn.name] = bind(sn)
        __all__.append(sn.name)
    return globals()[sn.name]

# ---------------------------------------------------------------- generated: tcgen05.ld / tcgen05.st
TCGEN05_LDST_SHAPES = {"32x32b": (1, 128), "16x256b": (4, 32)}   # shape -> (registers per .x1, max .num)


def tcgen05_ldst_snippet(shape: str, num: int, op: str) -> Snippet:
    """The contract of ``tcgen05.{ld|st}.sync.aligned.{shape}.x{num}.b32`` (sm_100a), generated because
    the register count grows with ``num`` (32x32b: num registers; 16x256b: 4*num).

    Binding ``tcgen05_{op}_{shape}_x{num}``: ld takes the TMEM address and returns the registers as a
    tuple; st takes the TMEM address, then the registers. Cell mapping (ptx-facts §1.3, CUTLASS
    copy_traits_sm100): 32x32b — lane t of the warp <-> TMEM lane (taddr lane + t), register j <->
    column c0 + j; 16x256b — per 8-column block b = j/4 of register j: registers 4b, 4b+1 = lane t/4,
    columns c0 + 8b + 2*(t%4) + {0,1}; 4b+2, 4b+3 = lane t/4 + 8, same columns. Both asynchronous:
    tcgen05_wait_ld / tcgen05_wait_st before relying on the values / the cells. All 32 lanes execute it
    with the same address; warp w reaches lanes 32*(w%4) .. +31 only.
    """
    per, top = TCGEN05_LDST_SHAPES.get(shape, (0, 0))
    if not per or op not in ("ld", "st") or num not in (1, 2, 4, 8, 16, 32, 64, 128) or num > top:
        raise ValueError(f"tcgen05 {op!r} {shape!r} .x{num}: shapes {sorted(TCGEN05_LDST_SHAPES)}, op "
                         f"ld|st, num a power of 2 up to {top or 128}")
    regs = per * num
    instr = f"tcgen05.{op}.sync.aligned.{shape}.x{num}.b32"
    if op == "ld":
        body = f"{instr} {{{', '.join(f'${i}' for i in range(regs))}}}, [${regs}];"
        sig = f"UniTuple(uint32, {regs})(uint32)" if regs > 1 else "uint32(uint32)"
        cons = ",".join(["=r"] * regs + ["r", "~{memory}"])
    else:
        body = f"{instr} [$0], {{{', '.join(f'${i + 1}' for i in range(regs))}}};"
        sig = f"void({', '.join(['uint32'] * (regs + 1))})"
        cons = ",".join(["r"] * (regs + 1) + ["~{memory}"])
    return Snippet(
        name=f"tcgen05_{op}_{shape}_x{num}", file="<generated: dsv4_numba.hw.ops.tcgen05_ldst_snippet>",
        instruction=instr, ptx_isa=f"PTX ISA 9.1 §9.7.16.8.{3 if op == 'ld' else 4} (tcgen05.{op})",
        min_arch="sm_100a", signature=sig, constraints=cons, side_effect=True,
        layout=(tcgen05_ldst_snippet.__doc__.split("Cell mapping")[1].strip()), body=body)


TCGEN05_LDST = {}
for _shape, (_per, _top) in TCGEN05_LDST_SHAPES.items():
    _num = 2
    while _num <= _top:                     # .x1 of both shapes are hand-written in ptx/tcgen05.ptx
        for _op in ("ld", "st"):
            _sn = tcgen05_ldst_snippet(_shape, _num, _op)
            TCGEN05_LDST[_sn.name] = _sn
            globals()[_sn.name] = bind(_sn)
            __all__.append(_sn.name)
        _num *= 2
