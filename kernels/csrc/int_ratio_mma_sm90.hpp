// The int_ratio mainloop of Q-ARVD's dual-scale layers on CUTLASS's TMA warp-specialized wgmma mainloop (one int32
// accumulator, integer-exact, the same arithmetic as kernels/qgemm.py's int_ratio):
//
//     acc[m, n] = ratio[n] * sum_{k < kop} A[m, k] * W[n, k] + sum_{k >= kop} A[m, k] * W[n, k]
//
// K holds the outlier column group first, [0, kop) with kop a multiple of the k-tile, so the first
// `outlier_k_tiles` k-tiles are the outlier group. After them the consumer drains its wgmmas, multiplies every
// accumulator element by the ratio of its output column, and accumulates the normal k-tiles on top.
//
// Why a derived collective and not another kernel: the persistent ping-pong kernel (what makes this GEMM 1.7x cuBLAS
// bf16 here) hands the consumer's mma() no tile coordinate. The producer's load() has it, so the producer copies the
// tile's BN ratios (one bulk copy, 4 * BN bytes) into a per-stage shared-memory slot of the stage that carries the
// first normal k-tile, completing on that stage's full barrier; the consumer reads them after waiting on that stage
// and before releasing it. The rest (TMA descriptors, A/B loads, the other k-tiles) is the base collective's.
#pragma once

#include <cstdint>

#include "cute/arch/copy_sm90_tma.hpp"
#include "cute/tensor.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/cutlass.h"
#include "cutlass/pipeline/pipeline.hpp"

namespace qarvd {

using namespace cute;

// Shared memory the int_ratio mainloop adds per pipeline stage (one ratio slot), for the stage-count carveout.
template <class TileShape>
constexpr int kIntRatioSmemPerStage = int(size<1>(TileShape{})) * int(sizeof(int32_t));

// Base: the CollectiveMma<MainloopSm90TmaGmmaWarpSpecialized<...>> the CollectiveBuilder makes (not the FP8 or
// array variants): the A/B loads and the pipeline are its own, the consumer loop is this one.
template <class Base>
struct IntRatioMma : Base {
  using typename Base::MainloopPipeline;
  using typename Base::PipelineState;
  using typename Base::SmemLayoutA;
  using typename Base::SmemLayoutB;
  using typename Base::TileShape;
  using typename Base::TiledMma;

  static constexpr int kBN = size<1>(TileShape{});
  static constexpr int kStages = Base::DispatchPolicy::Stages;
  static constexpr uint32_t kRatioBytes = kIntRatioSmemPerStage<TileShape>;
  static_assert(kRatioBytes % 16 == 0, "bulk copies move multiples of 16 bytes");
  static_assert(size(typename Base::DispatchPolicy::ClusterShape{}) == 1,
                "one CTA per cluster: the ratio copy completes on this CTA's barrier only");
  static_assert(Base::K_PIPE_MMAS == 1, "the consumer loop below keeps one wgmma batch in flight, as the base does");

  struct TensorStorage : Base::TensorStorage {
    alignas(128) cute::array_aligned<int32_t, kBN * kStages> smem_ratio;  // one BN slot per pipeline stage
  };

  struct Arguments : Base::Arguments {
    int32_t const* ratio = nullptr;  // [ceil(N / BN) * BN], 16-byte aligned
    int outlier_k_tiles = 0;         // 0: no outlier group (the plain GEMM)
  };

  struct Params : Base::Params {
    int32_t const* ratio;
    int outlier_k_tiles;
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_shape, Arguments const& args, void* workspace) {
    return {Base::to_underlying_arguments(problem_shape, args, workspace), args.ratio, args.outlier_k_tiles};
  }

  // The normal group must hold at least one k-tile: the scaling happens before the first normal k-tile.
  template <class ProblemShape>
  static bool can_implement(ProblemShape const& problem_shape, Arguments const& args) {
    auto [M, N, K, L] = append<4>(problem_shape, 1);
    int const k_tiles = ceil_div(int(K), int(size<2>(TileShape{})));
    bool const split_ok = args.outlier_k_tiles == 0 ||
                          (args.outlier_k_tiles > 0 && args.outlier_k_tiles < k_tiles && args.ratio != nullptr &&
                           reinterpret_cast<uintptr_t>(args.ratio) % 16 == 0);
    return split_ok && Base::can_implement(problem_shape, args);
  }

  // The k-tile (counted from the work tile's first) before which the accumulators are scaled; none when there is no
  // outlier group. Producer and consumer both decide with this function, so they agree on the stage.
  CUTLASS_DEVICE static int scale_at(Params const& params, int k_tile_count) {
    int const t = params.outlier_k_tiles;
    return t > 0 && t < k_tile_count ? t : k_tile_count;
  }

  // Producer: the base's loads of the outlier k-tiles, the ratio copy into the stage of the first normal k-tile, the
  // base's loads of the normal k-tiles. The copy waits for that stage to be free (its empty barrier, as the base's
  // producer_acquire does) and announces its bytes on the full barrier before the base's arrive: the stage then
  // completes only when A, B and the ratios have all landed, and no transaction can count towards another phase.
  template <class TensorA, class TensorB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState smem_pipe_write,
                           cute::tuple<TensorA, TensorB> const& load_inputs, BlockCoord const& blk_coord,
                           KTileIterator k_tile_iter, int k_tile_count, int thread_idx,
                           uint32_t block_rank_in_cluster, TensorStorage& shared_tensors) {
    int const split = scale_at(params, k_tile_count);
    Base::load(params, pipeline, smem_pipe_write, load_inputs, blk_coord, k_tile_iter, split, thread_idx,
               block_rank_in_cluster, shared_tensors);
    if (split == k_tile_count) return;
    smem_pipe_write.advance(split);
    for (int i = 0; i < split; ++i) ++k_tile_iter;
    if (cute::elect_one_sync()) {  // the lane the base elects: the pipeline's leader, whose expect_tx counts
      while (pipeline.producer_try_acquire(smem_pipe_write).get() != cutlass::BarrierStatus::WaitDone) {
      }
      pipeline.producer_expect_transaction(smem_pipe_write, kRatioBytes);
      SM90_BULK_COPY_G2S::copy(params.ratio + int(get<1>(blk_coord)) * kBN,
                               pipeline.producer_get_barrier(smem_pipe_write),
                               shared_tensors.smem_ratio.data() + smem_pipe_write.index() * kBN, kRatioBytes);
    }
    Base::load(params, pipeline, smem_pipe_write, load_inputs, blk_coord, k_tile_iter, k_tile_count - split,
               thread_idx, block_rank_in_cluster, shared_tensors);
  }

  // Consumer: the base's loop (K_PIPE_MMAS = 1: the stage of k-tile t is released after the wgmmas of t + 1 are
  // issued), with the scaling step before the first normal k-tile. Releases as many stages as the base, so the
  // base's mma_tail finishes it.
  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum, int k_tile_count,
                          int thread_idx, TensorStorage& shared_tensors, Params const& params) {
    static_assert(is_rmem<FrgTensorC>::value, "C tensor must be rmem resident.");
    Tensor sA = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), SmemLayoutA{});  // (BLK_M,BLK_K,PIPE)
    Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});  // (BLK_N,BLK_K,PIPE)

    // the warp group's operand descriptors, as the base partitions them
    constexpr int kMmaWarpGroups = size(TiledMma{}) / cutlass::NumThreadsPerWarpGroup;
    Layout warp_group_thread_layout = make_layout(Int<kMmaWarpGroups>{}, Int<cutlass::NumThreadsPerWarpGroup>{});
    int warp_group_idx = __shfl_sync(0xFFFFFFFF, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
    TiledMma tiled_mma;
    auto thread_mma = tiled_mma.get_slice(warp_group_thread_layout(warp_group_idx));
    Tensor tCrA = thread_mma.make_fragment_A(thread_mma.partition_A(sA));  // (MMA,MMA_M,MMA_K,PIPE)
    Tensor tCrB = thread_mma.make_fragment_B(thread_mma.partition_B(sB));  // (MMA,MMA_N,MMA_K,PIPE)

    // the (m, n) tile coordinate of each of this thread's accumulator elements
    Tensor tCcC = tiled_mma.get_thread_slice(thread_idx).partition_C(
        make_identity_tensor(make_shape(size<0>(TileShape{}), size<1>(TileShape{}))));
    CUTE_STATIC_ASSERT_V(size(tCcC) == size(accum));

    auto wait = [&]() {
      auto token = pipeline.consumer_try_wait(smem_pipe_read);
      pipeline.consumer_wait(smem_pipe_read, token);
      return smem_pipe_read.index();
    };
    PipelineState smem_pipe_release = smem_pipe_read;
    // one k-tile on top of the accumulators, then release the previous k-tile's stage
    auto accumulate = [&](int stage) {
      warpgroup_fence_operand(accum);
      warpgroup_arrive();
      cute::gemm(tiled_mma, tCrA(_, _, _, stage), tCrB(_, _, _, stage), accum);
      warpgroup_commit_batch();
      warpgroup_wait<1>();
      warpgroup_fence_operand(accum);
      pipeline.consumer_release(smem_pipe_release);
      ++smem_pipe_read;
      ++smem_pipe_release;
    };

    // first k-tile: overwrite the accumulators
    warpgroup_fence_operand(accum);
    {
      int const stage = wait();
      warpgroup_arrive();
      tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
      CUTLASS_PRAGMA_UNROLL
      for (int k_block = 0; k_block < size<2>(tCrA); ++k_block) {
        cute::gemm(tiled_mma, tCrA(_, _, k_block, stage), tCrB(_, _, k_block, stage), accum);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      ++smem_pipe_read;
    }
    warpgroup_fence_operand(accum);

    int const split = scale_at(params, k_tile_count);
    CUTLASS_PRAGMA_NO_UNROLL
    for (int k_tile = 1; k_tile < split; ++k_tile) accumulate(wait());
    if (split < k_tile_count) {
      int const stage = wait();  // the first normal k-tile's stage, which also carries the ratios
      warpgroup_wait<0>();       // the outlier group's sum is complete in the accumulators
      warpgroup_fence_operand(accum);
      int32_t const* ratio = shared_tensors.smem_ratio.data() + stage * kBN;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(accum); ++i) accum(i) *= ratio[get<1>(tCcC(i))];
      // these generic-proxy reads come before the stage's release, after which the next bulk copy (async proxy)
      // may overwrite the slot
      cutlass::arch::fence_view_async_shared();
      accumulate(stage);
      CUTLASS_PRAGMA_NO_UNROLL
      for (int k_tile = split + 1; k_tile < k_tile_count; ++k_tile) accumulate(wait());
    }
    warpgroup_fence_operand(accum);
  }
};

}  // namespace qarvd
