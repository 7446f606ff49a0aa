"""Probe the cost of cluster synchronisation on the GPU (sm_90+): the numbers behind the cluster
top-k's design (stages/topk.py, ``cluster_push_bucket``).

    python tools/probe_cluster_sync.py          # one cluster of 16 CTAs x 256 threads

Each probe is a kernel looping R times over one operation; its cost is (t(R) - t(0)) / R from CUDA
events around 20 launches (the launch itself cancels out):

* a cluster barrier round with a released arrive (``barrier.cluster.arrive.release``: ptxas puts a
  ``MEMBAR.ALL.GPU`` before it) and with a relaxed one (no memory ordering, no MEMBAR);
* a dependent DSMEM load from the next CTA (``ld.shared::cluster``, each address from the last
  value);
* one and sixteen DSMEM stores a thread followed by a released barrier round.

H100 80GB HBM3 (device tool, 2026-11-26; three runs, the first two of an earlier form of this
script): released round 443-449 ns, relaxed 24-30 ns, dependent DSMEM load 73-176 ns, 1 store +
released round 474-517 ns, 16 stores (to all 16 CTAs) + released round 1278-1532 ns.
"""
from __future__ import annotations

import sys

import numpy as np


def make(mode: int):
    from numba import cuda, uint32

    from dsv4_numba.hw import ops
    from dsv4_numba.runtime import kernel

    def probe(out, R):
        sm = cuda.shared.array(256, uint32)
        t = cuda.threadIdx.x
        sm[t] = uint32(t + 1) & uint32(255)
        ops.cluster_arrive_release()
        ops.cluster_wait_acquire()
        v = uint32(t)
        a0 = ops.shared_address(sm)
        peer = uint32((cuda.blockIdx.x + 1) % 16)
        for i in range(R):
            if mode == 0:
                ops.cluster_arrive_release()
                ops.cluster_wait_acquire()
            elif mode == 1:
                ops.cluster_arrive_relaxed()
                ops.cluster_wait_acquire()
            elif mode == 2:
                v = ops.ld_shared_cluster_u32(
                    ops.mapa_shared_cluster(a0 + uint32(4) * (v & uint32(255)), peer))
            else:
                for r in range(1 if mode == 3 else 16):
                    ops.st_shared_cluster_u32(ops.mapa_shared_cluster(
                        a0 + uint32(4 * t), (peer + uint32(r)) & uint32(15)), uint32(i))
                ops.cluster_arrive_release()
                ops.cluster_wait_acquire()
        ops.cluster_arrive_release()
        ops.cluster_wait_acquire()
        out[cuda.blockIdx.x * 256 + t] = v

    probe.__name__ = probe.__qualname__ = f"probe_cluster_sync_{mode}"
    return kernel(probe, cluster=16, launch_bounds=(256, 1))


PROBES = ((0, "cluster barrier round, released arrive"),
          (1, "cluster barrier round, relaxed arrive"),
          (2, "dependent DSMEM load (next CTA)"),
          (3, "1 DSMEM store a thread + released round"),
          (4, "16 DSMEM stores a thread (all CTAs) + released round"))


def main() -> int:
    from numba import cuda

    from dsv4_numba.runtime import detect_gpu
    gpu = detect_gpu()
    if gpu is None or gpu.cc < (9, 0):
        print("probe_cluster_sync: needs an sm_90+ GPU (thread-block clusters)", file=sys.stderr)
        return 2
    out = cuda.device_array(16 * 256, np.uint32)

    def timed(kern, R, reps=20):
        kern.launch(16, 256, out, R)
        cuda.synchronize()
        s, e = cuda.event(), cuda.event()
        s.record()
        for _ in range(reps):
            kern.launch(16, 256, out, R)
        e.record()
        e.synchronize()
        return cuda.event_elapsed_time(s, e) * 1e3 / reps        # us a launch

    R = 2000
    for mode, name in PROBES:
        kern = make(mode)
        kern.reserve_dynamic_shared((out, 0), 1024)               # 16 CTAs: non-portable size
        t0 = timed(kern, 0)
        t1 = timed(kern, R)
        print(f"{name}: {1e3 * (t1 - t0) / R:.1f} ns each", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
