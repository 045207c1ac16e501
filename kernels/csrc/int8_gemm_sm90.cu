// INT8 x INT8 -> INT32 GEMM for Hopper (sm_90a) with the dequantization fused into the epilogue, built on CUTLASS 3
// (TMA loads, warp-specialized wgmma mainloop, TMA-store epilogue):
//
//     D[m, n] = bf16( col_scale[n] * acc[m, n] + col_bias[n] ),   acc[m, n] = sum_k A[m, k] * W[n, k]
//
// col_scale = activation scale x per-channel weight scale and col_bias = bias + folded zero-point corrections are
// per-column float32 vectors computed once per layer on the host side (kernels/cutlass_gemm.py). A and W are
// K-major (A [M, K] row-major, W [N, K] row-major), D is row-major with any row stride (column slices of a wider
// output). A plain C API (no PyTorch ABI) so the shared library built once by nvcc loads through ctypes.
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

namespace {

char g_error[512] = "";

template <class TileShape, class ClusterShape, class KernelSchedule, class EpilogueSchedule>
struct Int8Gemm {
  using ElementA = int8_t;
  using ElementB = int8_t;
  using ElementD = cutlass::bfloat16_t;
  using ElementAcc = int32_t;
  using ElementCompute = float;
  static constexpr auto Round = cutlass::FloatRoundStyle::round_to_nearest;

  // D = col_scale * acc + col_bias (one fused multiply-add per element, float32, rounded once to bf16)
  using ColVec = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float>;
  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  using Fma = cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, ElementD, ElementCompute, Round>;
  using Evt = cutlass::epilogue::fusion::Sm90EVT<Fma, ColVec, Acc, ColVec>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute,
      void, cutlass::layout::RowMajor, 8, ElementD, cutlass::layout::RowMajor, 8,
      EpilogueSchedule, Evt>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cutlass::layout::RowMajor, 16, ElementB,
      cutlass::layout::ColumnMajor, 16, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments args(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw,
                                       cutlass::bfloat16_t* d, int64_t ldd, const float* scale,
                                       const float* bias, int m, int n, int k) {
    auto sa = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {m, k, 1});
    auto sb = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {n, k, 1});
    auto sd = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {m, n, 1});
    get<0>(sa) = lda;
    get<0>(sb) = ldw;
    get<0>(sd) = ldd;
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {m, n, k, 1},
                                  {a, sa, w, sb},
                                  {{}, nullptr, sd, d, sd}};
    // Evt arguments: {scale vector, accumulator, bias vector, fma}
    args.epilogue.thread = {{scale, 0.f, {}}, {}, {bias, 0.f, {}}, {}};
    return args;
  }

  static size_t workspace(int m, int n, int k) {
    return Gemm::get_workspace_size(args(nullptr, k, nullptr, k, nullptr, n, nullptr, nullptr, m, n, k));
  }

  static int run(const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, cutlass::bfloat16_t* d, int64_t ldd,
                 const float* scale, const float* bias, int m, int n, int k, void* ws, cudaStream_t stream) {
    Gemm gemm;
    auto arguments = args(a, lda, w, ldw, d, ldd, scale, bias, m, n, k);
    cutlass::Status s = gemm.can_implement(arguments);
    if (s != cutlass::Status::kSuccess) {
      snprintf(g_error, sizeof(g_error), "can_implement failed (%s) for M=%d N=%d K=%d lda=%lld ldw=%lld ldd=%lld",
               cutlassGetStatusString(s), m, n, k, (long long)lda, (long long)ldw, (long long)ldd);
      return 1;
    }
    s = gemm.initialize(arguments, ws, stream);
    if (s != cutlass::Status::kSuccess) {
      snprintf(g_error, sizeof(g_error), "initialize failed (%s)", cutlassGetStatusString(s));
      return 2;
    }
    s = gemm.run(stream);
    if (s != cutlass::Status::kSuccess) {
      snprintf(g_error, sizeof(g_error), "run failed (%s): %s", cutlassGetStatusString(s),
               cudaGetErrorString(cudaGetLastError()));
      return 3;
    }
    return 0;
  }
};

using namespace cutlass::gemm;
using namespace cutlass::epilogue;
// The configs kernels/cutlass_gemm.py names (CONFIGS) and picks per shape (CONFIG_BY_SHAPE); the index is the
// C API's `config`, qarvd_int8_gemm_configs() their count (checked when the library loads).
using Cfg0 = Int8Gemm<Shape<_128, _128, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecializedPingpong, TmaWarpSpecialized>;
using Cfg1 = Int8Gemm<Shape<_128, _256, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecializedCooperative,
                      TmaWarpSpecializedCooperative>;
using Cfg2 = Int8Gemm<Shape<_256, _128, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecializedCooperative,
                      TmaWarpSpecializedCooperative>;
using Cfg3 = Int8Gemm<Shape<_128, _128, _128>, Shape<_2, _1, _1>, KernelTmaWarpSpecializedPingpong, TmaWarpSpecialized>;

}  // namespace

extern "C" {

int qarvd_int8_gemm_configs() { return 4; }

const char* qarvd_int8_gemm_error() { return g_error; }

size_t qarvd_int8_gemm_workspace(int config, int m, int n, int k) {
  switch (config) {
    case 0: return Cfg0::workspace(m, n, k);
    case 1: return Cfg1::workspace(m, n, k);
    case 2: return Cfg2::workspace(m, n, k);
    case 3: return Cfg3::workspace(m, n, k);
    default: return 0;
  }
}

int qarvd_int8_gemm(int config, const int8_t* a, int64_t lda, const int8_t* w, int64_t ldw, void* d, int64_t ldd,
                    const float* col_scale, const float* col_bias, int m, int n, int k, void* workspace,
                    cudaStream_t stream) {
  auto* out = reinterpret_cast<cutlass::bfloat16_t*>(d);
  switch (config) {
    case 0: return Cfg0::run(a, lda, w, ldw, out, ldd, col_scale, col_bias, m, n, k, workspace, stream);
    case 1: return Cfg1::run(a, lda, w, ldw, out, ldd, col_scale, col_bias, m, n, k, workspace, stream);
    case 2: return Cfg2::run(a, lda, w, ldw, out, ldd, col_scale, col_bias, m, n, k, workspace, stream);
    case 3: return Cfg3::run(a, lda, w, ldw, out, ldd, col_scale, col_bias, m, n, k, workspace, stream);
    default:
      snprintf(g_error, sizeof(g_error), "unknown config %d", config);
      return 4;
  }
}

}  // extern "C"
