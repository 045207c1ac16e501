// INT8 x INT8 -> INT32 GEMM for Hopper (sm_90a) with the dequantization and the layer's consumer fused into the
// epilogue, built on CUTLASS 3 (TMA loads, warp-specialized wgmma mainloop, TMA-store epilogue visitor tree):
//
//     y[m, n] = bf16( col_scale[n] * acc[m, n] + col_bias[n] ),   acc[m, n] = sum_k A[m, k] * W[n, k]
//
// and, by epilogue kind (the same rounding points as the Triton consumers they replace, kernels/qgemm.py):
//   0 store       D = y                                                              (bf16)
//   1 residual    D = bf16( C + bf16(gate[l, n] * y) ),  C the bf16 residual, may be D itself (in place);
//                 gate row l per batch (batched mode, one batch per frame), none: D = bf16(C + y)
//   2 gelu_quant  D = clamp(rint(bf16(gelu_tanh(y)) * (1 / s)) + z, lo, hi)         (int8 codes of the next layer)
//
// col_scale = activation scale x per-channel weight scale and col_bias = bias + folded zero-point corrections are
// per-column float32 vectors computed once per layer on the host side (kernels/cutlass_gemm.py); the gate and the
// next layer's s and z are read through device pointers, so CUDA-graph replays see their current values. A and W
// are K-major (A [M, K] row-major, W [N, K] row-major), C and D row-major with any row stride. A plain C API (no
// PyTorch ABI) so the shared library built once by nvcc loads through ctypes.
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

// Every operand of one call; the ctypes mirror is kernels/cutlass_gemm.py's GemmArgs (size checked at load).
// m is the rows of one batch: batch l covers rows [l * m, (l + 1) * m) of A, C and D.
struct QarvdGemmArgs {
  const int8_t* a;
  int64_t lda;
  const int8_t* w;
  int64_t ldw;
  void* d;
  int64_t ldd;
  const float* col_scale;
  const float* col_bias;   // nullptr: no bias
  const void* c;           // residual: bf16 source (may equal d)
  int64_t ldc;
  const float* gate;       // residual: gate row of batch l at gate + l * gate_stride; nullptr: no gate
  int64_t gate_stride;
  const float* q_scale;    // gelu_quant: the next layer's step s and stored zero point z (device scalars)
  const float* q_zero;
  float q_lo;              // gelu_quant: clamp range of the stored codes
  float q_hi;
  int m, n, k, batches;
};

namespace {

char g_error[512] = "";

using namespace cutlass::epilogue::fusion;
using bf16 = cutlass::bfloat16_t;
constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

template <class TileShape>
using ColVec = Sm90RowBroadcast<0, TileShape, float, float>;

// y = bf16(col_scale * acc + col_bias): one fused multiply-add per element in float32, rounded once to bf16 (the
// linear's output as the model rounds it, before any consumer reads it).
template <class TileShape>
using Dequant = Sm90EVT<Sm90Compute<cutlass::homogeneous_multiply_add, bf16, float, kRound>, ColVec<TileShape>,
                       Sm90AccFetch, ColVec<TileShape>>;

template <class TileShape>
typename Dequant<TileShape>::Arguments dequant_args(QarvdGemmArgs const& p) {
  return {{p.col_scale, 0.f, {}}, {}, {p.col_bias, 0.f, {}}, {}};
}

struct StoreEpi {
  using ElementC = void;
  using ElementD = bf16;
  template <class TileShape>
  using Evt = Dequant<TileShape>;

  template <class TileShape>
  static typename Evt<TileShape>::Arguments args(QarvdGemmArgs const& p) {
    return dequant_args<TileShape>(p);
  }
};

// D = C + bf16(gate * y): the gate is a row vector per batch (frame); a null gate reads as 1, and 1 * y is y exactly
// (y is already bf16), so the un-gated residual is the same kernel.
struct ResidualEpi {
  using ElementC = bf16;
  using ElementD = bf16;
  template <class TileShape>
  using GateVec = Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;
  template <class TileShape>
  using Gated = Sm90EVT<Sm90Compute<cutlass::multiplies, bf16, float, kRound>, GateVec<TileShape>, Dequant<TileShape>>;
  template <class TileShape>
  using Evt = Sm90EVT<Sm90Compute<cutlass::plus, bf16, float, kRound>, Sm90SrcFetch<bf16>, Gated<TileShape>>;

  template <class TileShape>
  static typename Evt<TileShape>::Arguments args(QarvdGemmArgs const& p) {
    return {{}, {{p.gate, 1.f, {_0{}, _1{}, p.gate_stride}}, dequant_args<TileShape>(p), {}}, {}};
  }
};

struct QuantArgs {
  const float* scale = nullptr;
  const float* zero = nullptr;
  float lo = -128.f;
  float hi = 127.f;
};

// The approximate PTX the Triton producer compiles to (act_quant.norm_quant(pre_gelu=True) on sm_90, kernels/
// _common.py): ex2.approx.ftz, div.full, and the rounding add of x * (1/s) contracted into one FMA with the 1.5 * 2**23
// constant. Written out with explicit roundings so nvcc contracts nothing else: codes equal the Triton path's.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float div_full(float x, float y) {
  float q;
  asm("div.full.f32 %0, %1, %2;" : "=f"(q) : "f"(x), "f"(y));
  return q;
}

// GELU(tanh) of the bf16 linear output as x * sigmoid(2u) (kernels/_common.gelu_tanh), rounded to bf16 as the model
// rounds the activation, then quantized with the next layer's per-tensor step and zero point.
template <class T>
struct GeluQuant {
  using Arguments = QuantArgs;

  template <int N>
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& y, QuantArgs const& q) const {
    constexpr float kMagic = 12582912.f;  // 1.5 * 2**23: x + kMagic - kMagic rounds to an integer, ties to even
    float const r = div_full(1.f, __ldg(q.scale));
    float const z = __ldg(q.zero);
    cutlass::Array<float, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) {
      float const x = y[i];
      float const x3 = __fmul_rn(__fmul_rn(x, 0.044715f), x);
      float const u = __fmul_rn(__fmaf_rn(x3, x, x), 0.7978845608028654f);
      float const e = ex2_approx(fminf(__fmul_rn(u, -2.8853900817779268f), 126.f));
      float const h = __bfloat162float(__float2bfloat16_rn(div_full(x, __fadd_rn(e, 1.f))));
      float const v = __fadd_rn(__fadd_rn(__fmaf_rn(h, r, kMagic), -kMagic), z);
      out[i] = fminf(fmaxf(v, q.lo), q.hi);
    }
    return out;
  }
};

struct GeluQuantEpi {
  using ElementC = void;
  using ElementD = int8_t;
  template <class TileShape>
  using Evt = Sm90EVT<Sm90Compute<GeluQuant, int8_t, float, kRound>, Dequant<TileShape>>;

  template <class TileShape>
  static typename Evt<TileShape>::Arguments args(QarvdGemmArgs const& p) {
    return {dequant_args<TileShape>(p), QuantArgs{p.q_scale, p.q_zero, p.q_lo, p.q_hi}};
  }
};

template <class TileShape_, class ClusterShape_, class KernelSchedule_, class EpilogueSchedule_>
struct Config {
  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;
  using KernelSchedule = KernelSchedule_;
  using EpilogueSchedule = EpilogueSchedule_;
};

template <class Cfg, class Epi>
struct Int8Gemm {
  using ElementAcc = int32_t;
  using ElementC = typename Epi::ElementC;
  using ElementD = typename Epi::ElementD;
  using Evt = typename Epi::template Evt<typename Cfg::TileShape>;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;  // 16-byte TMA rows
  static constexpr int kAlignC = is_void_v<ElementC> ? kAlignD : 8;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename Cfg::TileShape, typename Cfg::ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float, ElementC, cutlass::layout::RowMajor,
      kAlignC, ElementD, cutlass::layout::RowMajor, kAlignD, typename Cfg::EpilogueSchedule, Evt>::CollectiveOp;

  // W is K-major and shared by every batch: a static zero batch stride, which the TMA descriptor leaves out (a
  // dynamic zero stride would be a descriptor dimension of stride 0)
  using StrideW = Stride<int64_t, _1, _0>;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, 16, int8_t, StrideW, 16,
      ElementAcc, typename Cfg::TileShape, typename Cfg::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Cfg::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // Batched mode (batches > 1): batch l starts m rows further down A, C and D; W and the column vectors are shared.
  static typename Gemm::Arguments args(QarvdGemmArgs const& p) {
    int const m = p.m, n = p.n, k = p.k, l = p.batches;
    auto sa = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {m, k, l});
    auto sb = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {n, k, 1});
    auto sc = cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, {m, n, l});
    auto sd = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {m, n, l});
    get<0>(sa) = p.lda;
    get<2>(sa) = p.lda * m;
    get<0>(sb) = p.ldw;
    get<0>(sc) = p.ldc;
    get<2>(sc) = p.ldc * m;
    get<0>(sd) = p.ldd;
    get<2>(sd) = p.ldd * m;
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {m, n, k, l},
                                  {p.a, sa, p.w, sb},
                                  {{}, static_cast<ElementC const*>(p.c), sc, static_cast<ElementD*>(p.d), sd}};
    args.epilogue.thread = Epi::template args<typename Cfg::TileShape>(p);
    return args;
  }

  static size_t workspace(QarvdGemmArgs const& p) { return Gemm::get_workspace_size(args(p)); }

  static int run(QarvdGemmArgs const& p, void* ws, cudaStream_t stream) {
    Gemm gemm;
    auto arguments = args(p);
    cutlass::Status s = gemm.can_implement(arguments);
    if (s != cutlass::Status::kSuccess) {
      snprintf(g_error, sizeof(g_error),
               "can_implement failed (%s) for M=%d N=%d K=%d L=%d lda=%lld ldw=%lld ldc=%lld ldd=%lld",
               cutlassGetStatusString(s), p.m, p.n, p.k, p.batches, (long long)p.lda, (long long)p.ldw,
               (long long)p.ldc, (long long)p.ldd);
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
// The configs kernels/cutlass_gemm.py names (CONFIGS) and picks per epilogue and shape (CONFIG_BY_SHAPE); the index
// is the C API's `config`, qarvd_int8_gemm_configs() their count (checked when the library loads).
using Cfg0 = Config<Shape<_128, _128, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecializedPingpong, TmaWarpSpecialized>;
using Cfg1 = Config<Shape<_128, _256, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecializedCooperative,
                    TmaWarpSpecializedCooperative>;
using Cfg2 = Config<Shape<_256, _128, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecializedCooperative,
                    TmaWarpSpecializedCooperative>;
using Cfg3 = Config<Shape<_128, _128, _128>, Shape<_2, _1, _1>, KernelTmaWarpSpecializedPingpong, TmaWarpSpecialized>;

struct Entry {
  int (*run)(QarvdGemmArgs const&, void*, cudaStream_t);
  size_t (*workspace)(QarvdGemmArgs const&);
};

template <class Cfg, class Epi>
constexpr Entry entry() {
  return {&Int8Gemm<Cfg, Epi>::run, &Int8Gemm<Cfg, Epi>::workspace};
}

constexpr int kConfigs = 4, kEpilogues = 3;
// [config][epilogue kind]; the fused kinds only in configs 0 and 3 (kernels/cutlass_gemm.py INSTANCES says which
// each serves; each instance is ~20 s of nvcc): an empty entry is a combination this library does not have
// (qarvd_int8_gemm_has).
constexpr Entry kTable[kConfigs][kEpilogues] = {
    {entry<Cfg0, StoreEpi>(), entry<Cfg0, ResidualEpi>(), entry<Cfg0, GeluQuantEpi>()},
    {entry<Cfg1, StoreEpi>(), {}, {}},
    {entry<Cfg2, StoreEpi>(), {}, {}},
    {entry<Cfg3, StoreEpi>(), entry<Cfg3, ResidualEpi>(), entry<Cfg3, GeluQuantEpi>()},
};

Entry const* lookup(int config, int epilogue) {
  if (config < 0 || config >= kConfigs || epilogue < 0 || epilogue >= kEpilogues) return nullptr;
  return kTable[config][epilogue].run ? &kTable[config][epilogue] : nullptr;
}

}  // namespace

extern "C" {

int qarvd_int8_gemm_configs() { return kConfigs; }

int qarvd_int8_gemm_has(int config, int epilogue) { return lookup(config, epilogue) != nullptr; }

size_t qarvd_int8_gemm_args_size() { return sizeof(QarvdGemmArgs); }

const char* qarvd_int8_gemm_error() { return g_error; }

size_t qarvd_int8_gemm_workspace(int config, int epilogue, const QarvdGemmArgs* args) {
  Entry const* e = lookup(config, epilogue);
  return e ? e->workspace(*args) : 0;
}

int qarvd_int8_gemm(int config, int epilogue, const QarvdGemmArgs* args, void* workspace, cudaStream_t stream) {
  Entry const* e = lookup(config, epilogue);
  if (e == nullptr) {
    snprintf(g_error, sizeof(g_error), "config %d with epilogue kind %d is not in this library", config, epilogue);
    return 4;
  }
  return e->run(*args, workspace, stream);
}

}  // extern "C"
