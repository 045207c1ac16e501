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
//   3 gelu_quant_cols  the same with a step s[n] and zero point z[n] per output column (a dual-scale next layer)
//
// The int_ratio mainloop (config 4) serves Q-ARVD's dual-scale layers with one accumulator: K holds the outlier
// column group first, and after its k-tiles the accumulator is multiplied by an integer ratio[n] per output column
// before the normal group's k-tiles accumulate on top (kernels/qgemm.py's int_ratio, integer-exact):
//
//     acc[m, n] = ratio[n] * sum_{k < kop} A[m, k] * W[n, k] + sum_{k >= kop} A[m, k] * W[n, k]
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
#include "int_ratio_mma_sm90.hpp"

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
  const float* q_scale;    // gelu_quant: the next layer's step s and stored zero point z (device scalars);
  const float* q_zero;     // gelu_quant_cols: one per output column (float32 [n] vectors)
  float q_lo;              // gelu_quant: clamp range of the stored codes
  float q_hi;
  int m, n, k, batches;
  const int32_t* ratio;    // int_ratio mainloop: ratio per output column, padded to a multiple of the tile's N
  int outlier_k_tiles;     // int_ratio mainloop: k-tiles of the outlier group (kop / BK), scaled by the ratio
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

struct CodeRange {
  float lo = -128.f;
  float hi = 127.f;
};

struct QuantArgs {
  const float* scale = nullptr;
  const float* zero = nullptr;
  CodeRange range;
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
// rounds the activation, then quantized with the next layer's step reciprocal r = div.full(1, s) and zero point z.
__device__ __forceinline__ float gelu_code(float x, float r, float z, CodeRange q) {
  constexpr float kMagic = 12582912.f;  // 1.5 * 2**23: x + kMagic - kMagic rounds to an integer, ties to even
  float const x3 = __fmul_rn(__fmul_rn(x, 0.044715f), x);
  float const u = __fmul_rn(__fmaf_rn(x3, x, x), 0.7978845608028654f);
  float const e = ex2_approx(fminf(__fmul_rn(u, -2.8853900817779268f), 126.f));
  float const h = __bfloat162float(__float2bfloat16_rn(div_full(x, __fadd_rn(e, 1.f))));
  float const v = __fadd_rn(__fadd_rn(__fmaf_rn(h, r, kMagic), -kMagic), z);
  return fminf(fmaxf(v, q.lo), q.hi);
}

// One per-tensor step and zero point, read through device pointers (one reciprocal per fragment).
template <class T>
struct GeluQuant {
  using Arguments = QuantArgs;

  template <int N>
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& y, QuantArgs const& q) const {
    float const r = div_full(1.f, __ldg(q.scale));
    float const z = __ldg(q.zero);
    cutlass::Array<float, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = gelu_code(y[i], r, z, q.range);
    return out;
  }
};

// A step and zero point per output column (row-broadcast vectors): the reciprocal is taken per element, as the Triton
// producer takes it per column (a dual-scale next layer has two steps, one per column group).
template <class T>
struct GeluQuantCols {
  using Arguments = CodeRange;

  template <int N>
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& y,
                                                     cutlass::Array<float, N> const& s,
                                                     cutlass::Array<float, N> const& z, CodeRange const& q) const {
    cutlass::Array<float, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = gelu_code(y[i], div_full(1.f, s[i]), z[i], q);
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
    return {dequant_args<TileShape>(p), QuantArgs{p.q_scale, p.q_zero, {p.q_lo, p.q_hi}}};
  }
};

// Columns past n (a partial last tile, never stored) read step 1 and zero point 0.
struct GeluQuantColsEpi {
  using ElementC = void;
  using ElementD = int8_t;
  template <class TileShape>
  using Evt = Sm90EVT<Sm90Compute<GeluQuantCols, int8_t, float, kRound>, Dequant<TileShape>, ColVec<TileShape>,
                     ColVec<TileShape>>;

  template <class TileShape>
  static typename Evt<TileShape>::Arguments args(QarvdGemmArgs const& p) {
    return {dequant_args<TileShape>(p), {p.q_scale, 1.f, {}}, {p.q_zero, 0.f, {}}, CodeRange{p.q_lo, p.q_hi}};
  }
};

// The mainloop kinds a config can have: the builder's collective as it is, or the int_ratio collective around it.
struct PlainMainloop {
  template <class Built>
  using Collective = Built;
  template <class TileShape>
  static constexpr int kSmemPerStage = 0;

  template <class C, class SA, class SB>
  static typename C::Arguments args(QarvdGemmArgs const& p, SA const& sa, SB const& sb) {
    return {p.a, sa, p.w, sb};
  }

  static bool accepts(QarvdGemmArgs const& p) { return p.outlier_k_tiles == 0; }  // no ratio step to apply one
};

struct IntRatioMainloop {
  template <class Built>
  using Collective = qarvd::IntRatioMma<Built>;
  template <class TileShape>
  static constexpr int kSmemPerStage = qarvd::kIntRatioSmemPerStage<TileShape>;

  template <class C, class SA, class SB>
  static typename C::Arguments args(QarvdGemmArgs const& p, SA const& sa, SB const& sb) {
    typename C::Arguments a{};
    a.ptr_A = p.a;
    a.dA = sa;
    a.ptr_B = p.w;
    a.dB = sb;
    a.ratio = p.ratio;
    a.outlier_k_tiles = p.outlier_k_tiles;
    return a;
  }

  static bool accepts(QarvdGemmArgs const&) { return true; }  // the collective's can_implement checks the split
};

template <class TileShape_, class ClusterShape_, class KernelSchedule_, class EpilogueSchedule_,
          class Mainloop_ = PlainMainloop>
struct Config {
  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;
  using KernelSchedule = KernelSchedule_;
  using EpilogueSchedule = EpilogueSchedule_;
  using Mainloop = Mainloop_;
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

  // The stage count leaves room for the epilogue and for the mainloop's per-stage extra (the int_ratio slots) at the
  // most stages the A/B tiles alone would allow.
  static constexpr int kMaxStages = cutlass::gemm::collective::detail::sm90_smem_capacity_bytes /
                                    ((size<0>(typename Cfg::TileShape{}) + size<1>(typename Cfg::TileShape{})) *
                                     size<2>(typename Cfg::TileShape{}));
  static constexpr int kCarveout = static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage)) +
                                   kMaxStages * Cfg::Mainloop::template kSmemPerStage<typename Cfg::TileShape>;

  // W is K-major and shared by every batch: a static zero batch stride, which the TMA descriptor leaves out (a
  // dynamic zero stride would be a descriptor dimension of stride 0)
  using StrideW = Stride<int64_t, _1, _0>;
  using BuiltMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, 16, int8_t, StrideW, 16,
      ElementAcc, typename Cfg::TileShape, typename Cfg::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<kCarveout>, typename Cfg::KernelSchedule>::CollectiveOp;
  using CollectiveMainloop = typename Cfg::Mainloop::template Collective<BuiltMainloop>;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  static_assert(Kernel::SharedStorageSize <= cutlass::gemm::collective::detail::sm90_smem_capacity_bytes,
                "shared memory over the sm_90 capacity");

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
                                  Cfg::Mainloop::template args<CollectiveMainloop>(p, sa, sb),
                                  {{}, static_cast<ElementC const*>(p.c), sc, static_cast<ElementD*>(p.d), sd}};
    args.epilogue.thread = Epi::template args<typename Cfg::TileShape>(p);
    return args;
  }

  static size_t workspace(QarvdGemmArgs const& p) { return Gemm::get_workspace_size(args(p)); }

  static int run(QarvdGemmArgs const& p, void* ws, cudaStream_t stream) {
    Gemm gemm;
    auto arguments = args(p);
    cutlass::Status s =
        Cfg::Mainloop::accepts(p) ? gemm.can_implement(arguments) : cutlass::Status::kErrorInvalidProblem;
    if (s != cutlass::Status::kSuccess) {
      snprintf(g_error, sizeof(g_error),
               "can_implement failed (%s) for M=%d N=%d K=%d L=%d lda=%lld ldw=%lld ldc=%lld ldd=%lld "
               "outlier_k_tiles=%d",
               cutlassGetStatusString(s), p.m, p.n, p.k, p.batches, (long long)p.lda, (long long)p.ldw,
               (long long)p.ldc, (long long)p.ldd, p.outlier_k_tiles);
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
using Cfg4 = Config<Shape<_128, _128, _128>, Shape<_1, _1, _1>, KernelTmaWarpSpecializedPingpong, TmaWarpSpecialized,
                    IntRatioMainloop>;

struct Entry {
  int (*run)(QarvdGemmArgs const&, void*, cudaStream_t);
  size_t (*workspace)(QarvdGemmArgs const&);
};

template <class Cfg, class Epi>
constexpr Entry entry() {
  return {&Int8Gemm<Cfg, Epi>::run, &Int8Gemm<Cfg, Epi>::workspace};
}

constexpr int kConfigs = 5, kEpilogues = 4;
// [config][epilogue kind]; the fused kinds only in configs 0, 3 and 4 (kernels/cutlass_gemm.py INSTANCES says which
// each serves; each instance is ~20 s of nvcc): an empty entry is a combination this library does not have
// (qarvd_int8_gemm_has).
constexpr Entry kTable[kConfigs][kEpilogues] = {
    {entry<Cfg0, StoreEpi>(), entry<Cfg0, ResidualEpi>(), entry<Cfg0, GeluQuantEpi>(), {}},
    {entry<Cfg1, StoreEpi>(), {}, {}, {}},
    {entry<Cfg2, StoreEpi>(), {}, {}, {}},
    {entry<Cfg3, StoreEpi>(), entry<Cfg3, ResidualEpi>(), entry<Cfg3, GeluQuantEpi>(), entry<Cfg3, GeluQuantColsEpi>()},
    {entry<Cfg4, StoreEpi>(), entry<Cfg4, ResidualEpi>(), {}, entry<Cfg4, GeluQuantColsEpi>()},
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
