"""Print the accumulator layouts: who holds D[row][col] of a wgmma tile, where tcgen05 puts D.

    python tools/layouts.py [--n 16]

See dsv4_numba/hw/layouts.py for the formulas and their sources.
"""
import argparse

from dsv4_numba.hw import layouts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16, help="wgmma N to draw (8..256, step 8)")
    a = p.parse_args()
    print(f"wgmma m64n{a.n} f32 accumulator: thread.register holding D[row][col]\n")
    print(layouts.wgmma_picture(a.n))
    print()
    for M, al in ((128, 0), (64, 0), (64, 16)):
        print(layouts.tmem_picture(M, al))
        print()


if __name__ == "__main__":
    main()
