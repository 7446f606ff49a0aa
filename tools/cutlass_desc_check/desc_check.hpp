// Host-side encoders for the descriptor cross-check: every value printed here comes from NVIDIA
// CUTLASS's own descriptor unions and makers (cute/arch/mma_sm90_desc.hpp, mma_sm100_desc.hpp).
// cutlass_desc_check.py generates a main() that calls these once per field set and compiles it with
// g++ against the nvidia-cutlass headers; no CUDA compiler or GPU is involved.
#pragma once
#include <cstdint>
#include <cstdio>

#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm100_desc.hpp>
#include <cute/numeric/numeric_types.hpp>

namespace dc {
using cute::UMMA::Major;
using cute::UMMA::MaxShift;
using cute::UMMA::Saturate;
using cute::UMMA::ScaleIn;

inline void emit(uint64_t v) { std::printf("%016llx\n", static_cast<unsigned long long>(v)); }

// sm_90: CUTLASS has no field-level maker (make_gmma_desc takes CuTe tensors), so fill its union.
inline uint64_t wgmma(uint32_t start, uint32_t lbo, uint32_t sbo, cute::SM90::GMMA::LayoutType layout,
                      uint32_t base) {
  cute::GmmaDescriptor d;
  d.bitfield.start_address_ = start >> 4;
  d.bitfield.leading_byte_offset_ = lbo >> 4;
  d.bitfield.stride_byte_offset_ = sbo >> 4;
  d.bitfield.base_offset_ = base;
  d.bitfield.layout_type_ = static_cast<uint8_t>(layout);
  return d.desc_;
}

// sm_100: likewise; version_ = 1 is what make_umma_desc writes ("the version for blackwell").
inline uint64_t umma(uint32_t start, uint32_t lbo, uint32_t sbo, cute::UMMA::LayoutType layout,
                     uint32_t base, uint32_t lbo_mode) {
  cute::UMMA::SmemDescriptor d;
  d.start_address_ = start >> 4;
  d.leading_byte_offset_ = lbo >> 4;
  d.stride_byte_offset_ = sbo >> 4;
  d.version_ = 1;
  d.base_offset_ = base;
  d.lbo_mode_ = lbo_mode;
  d.layout_type_ = static_cast<uint8_t>(layout);
  return d.desc_;
}

// kind::f16/tf32/f8f6f4/i8: CUTLASS's make_runtime_instr_desc (idesc in the upper 32 bits).
template <class A, class B, class C, int M, int N, Major AM, Major BM, ScaleIn AN, ScaleIn BN,
          Saturate SAT, bool SPARSE, MaxShift SHIFT>
uint64_t idesc(uint16_t sparse_id) {
  return cute::UMMA::make_runtime_instr_desc<A, B, C, M, N, AM, BM, AN, BN, SAT, SPARSE, SHIFT>(
             sparse_id) >> 32;
}

// block-scaled kinds: make_instr_desc_block_scaled, then the SF ids the way CUTLASS sets them, from
// bits 30-31 of the TMEM scale-factor addresses. No CUTLASS maker sets k_size_ (K=96): set the field.
template <class A, class B, class SF, int M, int N, Major AM, Major BM, ScaleIn AN, ScaleIn BN,
          bool SPARSE>
uint64_t idesc_bs(uint32_t a_sf_id, uint32_t b_sf_id, uint32_t k96) {
  auto d = cute::UMMA::make_instr_desc_block_scaled<A, B, float, SF, M, N, AM, BM, AN, BN, SPARSE>();
  d.k_size_ = k96;
  return cute::UMMA::make_runtime_instr_desc_block_scaled<SPARSE>(d, a_sf_id << 30, b_sf_id << 30) >> 32;
}
}  // namespace dc
