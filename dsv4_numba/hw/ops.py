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
