"""Accumulator layouts: internal consistency of the documented mappings (no hardware here)."""
import pytest

from dsv4_numba.hw import layouts as L


@pytest.mark.parametrize("n", [8, 16, 64, 256])
def test_wgmma_fragment_is_a_bijection_and_owner_inverts_it(n):
    seen = {}
    for t in range(128):
        for i in range(n // 2):
            rc = L.wgmma_acc_coord(t, i, n)
            assert rc not in seen, f"{rc} held twice"
            seen[rc] = (t, i)
            assert L.wgmma_acc_owner(*rc, n) == (t, i)
            assert rc[0] // 16 == t // 32           # warp w owns rows 16w..16w+15
    assert len(seen) == 64 * n


def test_wgmma_known_cells():
    # thread 0 holds D[0][0], D[0][1], D[8][0], D[8][1] in registers 0..3; thread 5 starts at (1, 2)
    assert [L.wgmma_acc_coord(0, i, 64) for i in range(4)] == [(0, 0), (0, 1), (8, 0), (8, 1)]
    assert L.wgmma_acc_coord(5, 0, 64) == (1, 2)
    assert L.wgmma_acc_coord(127, 31, 64) == (63, 63)
    with pytest.raises(ValueError):
        L.wgmma_acc_coord(128, 0, 64)


@pytest.mark.parametrize("M,align", [(128, 0), (64, 0), (64, 16)])
def test_tmem_rows_distinct_and_reachable_by_their_warp(M, align):
    lanes = [L.tmem_d_coord(m, 0, M, align)[0] for m in range(M)]
    assert len(set(lanes)) == M
    for m, lane in enumerate(lanes):
        warp = lane // 32
        assert L.tmem_warp_may_access(warp, lane) and not L.tmem_warp_may_access(warp + 1, lane)
        if M == 64:                                  # layout F: 16 lanes of each quadrant
            assert (lane % 32) // 16 == align // 16 and m // 16 == warp


def test_tcgen05_ld_32x32b_stays_in_the_warps_quadrant():
    for w in range(4):
        for t in range(32):
            lane, col = L.tcgen05_ld_32x32b(t, 5, w, col0=64)
            assert L.tmem_warp_may_access(w, lane) and col == 69


def test_pictures_render():
    assert "c15" in L.wgmma_picture(16)
    assert "warp 3" in L.tmem_picture(64)
