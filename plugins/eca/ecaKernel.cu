/*
 * Host side of the fused ECA kernel (ecaKernel.h): validation, launch planning and dispatch. The
 * device code lives in ecaKernels.cuh, which NVRTC compiles too.
 *
 * ecaForward runs, on the caller's stream, one kernel where its plan fits (ecaKernels.cuh: each block reads its
 * channel tile and the halo channels once, keeps its tile in registers, and scales it): for NCHW the single-launch
 * kernel of the AOT plugin (planSingleLaunch), for channels-last with zero padding ecaSingleLaunchChannelsLast
 * (planChannelsLastSingle), wherever the block's lanes hold their share of x in registers and shared memory fits;
 * otherwise two kernels:
 *   1. sums:  FP32 sum of every (n, c) plane, optionally split into `splits` partial sums so that
 *             few large planes still fill the GPU; written to the workspace, no atomics.
 *   2. gate:  each block turns the sums of the channels its gates read (its channels and their
 *             (k-1)/2 neighbours on each side) into gates in shared memory, then scales its part
 *             of x into y: a contiguous chunk in NCHW, a channel tile x pixel rows in channels-last.
 * The plan (path, splits, segment lengths, block shapes) depends only on the parameters and on whether
 * x and y are 16-byte aligned, never on the device, so results are bitwise reproducible. Every launch
 * fits the 48 KiB of shared memory any device grants without an opt-in (the channels-last gate reads the
 * sums from global memory when its channel window would not fit), so no launch can fail for resources
 * after an earlier one ran.
 */
#include "ecaKernel.h"

#include "ecaKernels.cuh"

#include <climits>

namespace eca
{
namespace
{

using kernels::ceilDiv;
using kernels::index_t;
using kernels::maxOf;
using kernels::minOf;
using kernels::nextPow2;

static_assert(static_cast<int>(PadMode::kCONSTANT) == kernels::kPadConstant, "pad mode codes differ");
static_assert(static_cast<int>(PadMode::kWRAP) == kernels::kPadWrap, "pad mode codes differ");

constexpr int kBlockThreads = kernels::kMaxBlockThreads;
//! Threads pass 1 aims for before it splits planes: about a full H100 (132 SMs x 2048 threads).
constexpr index_t kTargetThreads = 1024 * kBlockThreads;
constexpr index_t kMinVecsPerThread = 2; //!< pass 1 never splits a plane below this per thread
constexpr index_t kMinRowsPerThread = 2; //!< same for channels-last pixel rows
constexpr int kGateVecsPerThread = 4;    //!< pass 2, NCHW: 16-byte vectors per thread and chunk
constexpr int kGateRowsPerThread = 4;    //!< pass 2, channels-last: pixel rows per thread and block
//! Pass 2, channels-last, reads every split sum of its channel window once per block: a block covers
//! at least this many pixel rows per split, which keeps those reads a small fraction of its traffic.
constexpr index_t kGateRowsPerSplit = 8;
//! Partial sums pass 1 may write beyond one per (n, c): the workspace holds max(N * C, this) floats,
//! a bound that grows with N and C alone, so a workspace sized for the largest shape fits all smaller ones.
constexpr index_t kMaxPartialSums = 32 * 1024;
constexpr size_t kWorkspaceAlignment = 256;
constexpr index_t kMaxDefaultSharedBytes = 48 * 1024; //!< static + dynamic shared memory without an opt-in
constexpr index_t kMaxGridY = 65535; //!< CUDA's limit of gridDim.y (the single launch's samples)
//! Channels-last single launch: the largest map and the fewest blocks it takes. Simulated (A100 config, batch 1, FP16):
//! at 14 x 14, 8 blocks of 64 channels took 8,277 cycles against 12,179 in two launches; at 28 x 28 a block's lanes
//! loop over 12 or 13 pixels each and sum 64 partial sums a channel: 2 blocks of 32 channels took 15,796 against
//! 12,870 in two launches, 32 blocks of 512 channels 17,442 against the naive sequence's 12,581.
constexpr index_t kMaxChannelsLastSinglePixels = 256;
constexpr index_t kMinChannelsLastBlocks = 4;
//! Single launch: elements of its plane a lane aims to read, in at most kSingleLaneAccesses accesses (fewer lanes per
//! plane hold more, up to kernels::kHeldVectors accesses).
constexpr index_t kSingleLaneElements = 16;
constexpr index_t kSingleLaneAccesses = 4;
//! Single launch: blocks per sample the grid aims for; with more channels a block takes more of them, so that its halo
//! planes (read by its neighbours too) cost less. Per sample, so that the batch only scales the grid (TensorRT's
//! AOT launch shape is fixed while the batch is dynamic).
constexpr index_t kSingleTargetBlocks = 256;

size_t elementSize(DataType type)
{
    return type == DataType::kFLOAT ? sizeof(float) : sizeof(__half);
}

//! Elements per 16-byte vector.
int vectorWidth(DataType type)
{
    return static_cast<int>(kernels::kVectorBytes / elementSize(type));
}

bool isAligned(void const* p)
{
    return reinterpret_cast<std::uintptr_t>(p) % kernels::kVectorBytes == 0;
}

index_t planeSize(EcaParams const& p)
{
    return static_cast<index_t>(p.h) * p.w;
}

int pixelStrideOf(EcaParams const& p)
{
    return p.layout == Layout::kCHANNELS_LAST && p.pixelStride != 0 ? p.pixelStride : p.c;
}

bool isValid(EcaParams const& p)
{
    bool const dims = p.n > 0 && p.c > 0 && p.h > 0 && p.w > 0;
    bool const kernel = p.kernelSize > 0 && p.kernelSize % 2 == 1;
    bool const pad = p.padMode == PadMode::kCONSTANT || p.padMode == PadMode::kWRAP;
    bool const type = p.dataType == DataType::kFLOAT || p.dataType == DataType::kHALF || p.dataType == DataType::kBF16;
    bool const layout = (p.layout == Layout::kNCHW && (p.pixelStride == 0 || p.pixelStride == p.c))
        || (p.layout == Layout::kCHANNELS_LAST && (p.pixelStride == 0 || p.pixelStride >= p.c));
    return dims && kernel && pad && type && layout;
}

//! Channel elements per access in channels-last: a 16-byte vector when every pixel row stays
//! aligned (pixelStride a multiple of it; the caller also checks the pointers), else 1.
int channelsLastVector(EcaParams const& p)
{
    int const vec = vectorWidth(p.dataType);
    return pixelStrideOf(p) % vec == 0 ? vec : 1;
}

//! Threads of a channels-last block: TX accesses of `vec` channels across (a power of two; one
//! 128-byte row segment at most) by TY pixel rows (a power of two); one warp to kBlockThreads.
dim3 tileBlock(index_t vectors, int vec, DataType type, index_t rows)
{
    int const maxTx = static_cast<int>(kernels::kTileRowBytes / (vec * elementSize(type)));
    int const tx = minOf(nextPow2(vectors), maxTx);
    int const ty = minOf(maxOf(nextPow2(minOf<index_t>(rows, kBlockThreads)), kernels::kWarpSize / tx),
        kBlockThreads / tx);
    return dim3(tx, ty);
}

//! How pass 1 splits a plane: `splits` parts of `segment` elements (NCHW) or pixel rows
//! (channels-last), the last one shorter; N * C * splits <= max(N * C, kMaxPartialSums).
struct SplitPlan
{
    int splits;
    index_t segment;
};

SplitPlan planSplits(EcaParams const& p)
{
    index_t const hw = planeSize(p);
    index_t splits = 1;
    index_t unit = 1; // segment granularity
    if (p.layout == Layout::kNCHW)
    {
        int const vec = vectorWidth(p.dataType);
        int const group = kernels::planeGroupSize(hw, vec, kBlockThreads);
        index_t const wanted = ceilDiv(kTargetThreads, static_cast<index_t>(p.n) * p.c * group);
        splits = minOf(wanted, ceilDiv(ceilDiv(hw, vec), group * kMinVecsPerThread));
        unit = vec;
    }
    else
    {
        int const vec = channelsLastVector(p);
        index_t const vectors = ceilDiv(p.c, vec);
        dim3 const block = tileBlock(vectors, vec, p.dataType, hw);
        index_t const wanted
            = ceilDiv(kTargetThreads, static_cast<index_t>(p.n) * ceilDiv(vectors, block.x) * block.x * block.y);
        index_t const byLength = ceilDiv(hw, block.y * kMinRowsPerThread);
        index_t const byGate = block.y * kGateRowsPerThread / kGateRowsPerSplit;
        splits = minOf(minOf(wanted, byLength), byGate);
    }
    index_t const samplesChannels = static_cast<index_t>(p.n) * p.c;
    splits = maxOf<index_t>(minOf(splits, kMaxPartialSums / samplesChannels), 1);
    index_t const segment = ceilDiv(ceilDiv(hw, splits), unit) * unit;
    return SplitPlan{static_cast<int>(ceilDiv(hw, segment)), segment};
}

//! Elements per access of the single-launch kernel: a 16-byte vector where planes are whole vectors, else an 8-byte
//! one, else one (the kernel takes narrower ones where x or y is not aligned to them, a case no plan is made for).
int singleLaunchAccessWidth(EcaParams const& p)
{
    index_t const hw = planeSize(p);
    int const vec = vectorWidth(p.dataType);
    return hw % vec == 0 ? vec : hw % (vec / 2) == 0 ? vec / 2 : 1;
}

index_t singleLaunchAccesses(EcaParams const& p)
{
    return planeSize(p) / singleLaunchAccessWidth(p);
}

//! The single-launch kernel's launch shape for NCHW p; eca_deploy.tensorrt.nvrtc.single_launch_params computes the
//! same. The block has a lane group per plane of its channel window (its tile of channels and the k - 1 halo
//! channels): lanes enough for kSingleLaneElements elements each (at most kSingleLaneAccesses accesses), a tile of at
//! least k - 1 channels (so that it reads
//! fewer halo planes than its own) and larger while a sample would get more than kSingleTargetBlocks. Over kBlockThreads
//! threads it halves the lanes while they still hold their vectors, then the tile down to one channel, then the
//! lanes again (their planes are read twice), then the groups (windows in several passes); it grows the tile to use
//! every group and the lanes to make at least a warp.
SingleLaunchConfig planSingleLaunch(EcaParams const& p)
{
    index_t const halo = p.kernelSize - 1;
    index_t const vectors = singleLaunchAccesses(p);
    index_t const wanted = maxOf(maxOf<index_t>(halo, 1), p.c / kSingleTargetBlocks);
    int const holding = nextPow2(ceilDiv(vectors, kernels::kHeldVectors));
    int const fewest = nextPow2(minOf<index_t>(halo + 1, p.c));
    index_t const perLane
        = minOf(maxOf<index_t>(kSingleLaneElements / singleLaunchAccessWidth(p), 1), kSingleLaneAccesses);
    int lanes = minOf(nextPow2(ceilDiv(vectors, perLane)), kBlockThreads);
    int groups = minOf(nextPow2(minOf<index_t>(wanted + halo, p.c)), kBlockThreads);
    while (lanes * groups > kBlockThreads)
    {
        if (lanes > holding)
        {
            lanes /= 2;
        }
        else if (groups > fewest)
        {
            groups /= 2;
        }
        else if (lanes > 1)
        {
            lanes /= 2;
        }
        else
        {
            groups /= 2;
        }
    }
    lanes = maxOf(lanes, kernels::kWarpSize / groups);
    index_t tile = groups > halo ? groups - halo : maxOf<index_t>(halo, 1);
    if (tile + halo >= p.c)
    {
        tile = p.c;
    }
    SingleLaunchConfig config;
    config.channelsPerBlock = static_cast<int32_t>(tile);
    config.gridX = static_cast<int32_t>(ceilDiv(p.c, tile));
    config.blockX = lanes * groups;
    config.sharedBytes = static_cast<int32_t>(
        (p.kernelSize + minOf<index_t>(tile + halo, p.c)) * static_cast<index_t>(sizeof(float)));
    config.lanesPerPlane = lanes;
    return config;
}

unsigned gridSize(index_t blocks)
{
    return static_cast<unsigned>(minOf<index_t>(maxOf<index_t>(blocks, 1), INT_MAX));
}

template <typename T>
cudaError_t launchSums(EcaParams const& p, SplitPlan const& plan, T const* x, float* sums, cudaStream_t stream)
{
    index_t const hw = planeSize(p);
    if (p.layout == Layout::kNCHW)
    {
        index_t const planes = static_cast<index_t>(p.n) * p.c;
        int const group = kernels::planeGroupSize(plan.segment, kernels::kVec<T>, kBlockThreads);
        index_t const blocks = ceilDiv(planes * plan.splits, kBlockThreads / group);
        kernels::ecaPlaneSumsNchw<T><<<gridSize(blocks), kBlockThreads, 0, stream>>>(
            x, sums, planes, plan.splits, hw, plan.segment, group);
        return cudaGetLastError();
    }
    bool const vectorized = channelsLastVector(p) > 1 && isAligned(x);
    int const vec = vectorized ? kernels::kVec<T> : 1;
    index_t const vectors = ceilDiv(p.c, vec);
    dim3 const block = tileBlock(vectors, vec, p.dataType, plan.segment);
    index_t const blocks = static_cast<index_t>(p.n) * ceilDiv(vectors, block.x) * plan.splits;
    auto const kernel
        = vectorized ? kernels::ecaChannelSumsNhwc<T, kernels::kVec<T>> : kernels::ecaChannelSumsNhwc<T, 1>;
    kernel<<<gridSize(blocks), block, 0, stream>>>(x, sums, p.n, p.c, hw, pixelStrideOf(p), plan.splits, plan.segment);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launchGate(EcaParams const& p, SplitPlan const& plan, T const* x, T const* weight, float const* sums,
    T* y, cudaStream_t stream)
{
    index_t const hw = planeSize(p);
    int const padMode = static_cast<int>(p.padMode);
    if (p.layout == Layout::kNCHW)
    {
        index_t const planes = static_cast<index_t>(p.n) * p.c;
        index_t const chunk = static_cast<index_t>(kBlockThreads) * kernels::kVec<T> * kGateVecsPerThread;
        size_t const shared = minOf((chunk - 1) / hw + 2, planes) * sizeof(float);
        kernels::ecaGateNchw<T><<<gridSize(ceilDiv(planes * hw, chunk)), kBlockThreads, shared, stream>>>(
            x, weight, sums, y, p.c, planes, hw, p.kernelSize, plan.splits, padMode, chunk);
        return cudaGetLastError();
    }
    int const pixelStride = pixelStrideOf(p);
    bool const vectorized = channelsLastVector(p) > 1 && isAligned(x) && isAligned(y);
    int const vec = vectorized ? kernels::kVec<T> : 1;
    index_t const vectors = pixelStride / vec;
    dim3 const block = tileBlock(vectors, vec, p.dataType, hw);
    index_t const rowsPerBlock = maxOf<index_t>(block.y * kGateRowsPerThread, plan.splits * kGateRowsPerSplit);
    index_t const blocks = static_cast<index_t>(p.n) * ceilDiv(vectors, block.x) * ceilDiv(hw, rowsPerBlock);
    index_t const tileChannels = static_cast<index_t>(block.x) * vec;
    index_t const window = minOf<index_t>(tileChannels + p.kernelSize - 1, p.c);
    bool const windowed = (window + tileChannels) * static_cast<index_t>(sizeof(float)) <= kMaxDefaultSharedBytes;
    size_t const shared = ((windowed ? window : 0) + tileChannels) * sizeof(float);
    auto const kernel = vectorized ? kernels::ecaGateNhwc<T, kernels::kVec<T>> : kernels::ecaGateNhwc<T, 1>;
    kernel<<<gridSize(blocks), block, shared, stream>>>(x, weight, sums, y, p.n, p.c, hw, pixelStride, p.kernelSize,
        plan.splits, padMode, rowsPerBlock, windowed ? 1 : 0);
    return cudaGetLastError();
}

constexpr auto singleLaunchKernel(float)
{
    return eca_single_launch_f32;
}

constexpr auto singleLaunchKernel(__half)
{
    return eca_single_launch_f16;
}

constexpr auto singleLaunchKernel(__nv_bfloat16)
{
    return eca_single_launch_bf16;
}

template <typename T>
cudaError_t launchSingle(EcaParams const& p, SingleLaunchConfig const& config, T const* x, T const* weight, T* y,
    cudaStream_t stream)
{
    dim3 const grid(config.gridX, p.n);
    singleLaunchKernel(T{})<<<grid, config.blockX, config.sharedBytes, stream>>>(x, weight, p.c, p.h * p.w,
        p.kernelSize, static_cast<int>(p.padMode), config.channelsPerBlock, config.lanesPerPlane, y);
    return cudaGetLastError();
}

index_t staticSingleLaunchShared()
{
    return kernels::kReduceScratchFloats * static_cast<index_t>(sizeof(float));
}

//! Whether ecaForward runs p in one launch of planSingleLaunch's shape: NCHW, N within CUDA's grid limit, the
//! whole channel window read in one pass, every lane's share of its plane held in registers, and shared memory within
//! 48 KiB.
bool singleLaunchFits(EcaParams const& p, SingleLaunchConfig const& config)
{
    index_t const hw = planeSize(p);
    index_t const groups = config.blockX / config.lanesPerPlane;
    index_t const window = minOf<index_t>(static_cast<index_t>(config.channelsPerBlock) + p.kernelSize - 1, p.c);
    index_t const vectors = singleLaunchAccesses(p);
    return p.layout == Layout::kNCHW && hw <= INT_MAX && p.n <= kMaxGridY && window <= groups && vectors <= static_cast<index_t>(config.lanesPerPlane) * kernels::kHeldVectors
        && config.sharedBytes + staticSingleLaunchShared() <= kMaxDefaultSharedBytes;
}

//! Launch shape of the channels-last single launch (ecaSingleLaunchChannelsLast): tiles of `tile` channel vectors
//! of `vec` channels with `halo` vectors on each side, `lanes` lanes per vector of the window.
struct ChannelsLastPlan
{
    int vec;
    int tile;
    int halo;
    int lanes;
    int threads;
    index_t sharedBytes;
};

//! As planSingleLaunch for planes: lanes enough for kSingleLaneAccesses pixels each, a tile of at least twice the
//! halo (so its halo reads at most double its own) and more while a sample would get more than kSingleTargetBlocks
//! blocks; over kBlockThreads threads it halves the lanes while they still hold their pixels, then the tile.
ChannelsLastPlan planChannelsLastSingle(EcaParams const& p, int vec)
{
    index_t const hw = planeSize(p);
    int const halo = static_cast<int>(ceilDiv((p.kernelSize - 1) / 2, vec));
    index_t const rowPacks = pixelStrideOf(p) / vec;
    int const holding = nextPow2(ceilDiv(hw, kernels::kHeldVectors));
    int lanes = minOf(nextPow2(ceilDiv(hw, kSingleLaneAccesses)), kBlockThreads);
    index_t tile = minOf(maxOf<index_t>(maxOf(2 * halo, 1), rowPacks / kSingleTargetBlocks), rowPacks);
    while ((tile + 2 * halo) * lanes > kBlockThreads && lanes > holding)
    {
        lanes /= 2;
    }
    while ((tile + 2 * halo) * lanes > kBlockThreads && tile > 1)
    {
        tile = ceilDiv(tile, 2);
    }
    index_t const window = tile + 2 * halo;
    index_t const threads = window * lanes;
    index_t const shared = (p.kernelSize + window * vec + threads * vec) * static_cast<index_t>(sizeof(float));
    return ChannelsLastPlan{vec, static_cast<int>(tile), halo, lanes, static_cast<int>(minOf<index_t>(threads, INT_MAX)),
        shared};
}

//! Whether ecaForward runs channels-last p in one launch: zero padding (the window's halo vectors then hold every
//! channel a gate reads), a block within kBlockThreads threads whose lanes hold their pixels in registers, shared
//! memory within 48 KiB, N within the grid's y; and a map of at most kMaxChannelsLastSinglePixels pixels in at least
//! kMinChannelsLastBlocks blocks (a tile of channels takes all of a sample's pixels through one SM: beyond that the
//! two launches, which split the pixels across blocks, were faster).
bool channelsLastSingleFits(EcaParams const& p, ChannelsLastPlan const& plan)
{
    index_t const blocks = ceilDiv(pixelStrideOf(p) / plan.vec, plan.tile) * p.n;
    index_t const held = static_cast<index_t>(plan.lanes) * kernels::kHeldVectors; // pixels the lanes hold
    index_t const pixels = minOf(held, kMaxChannelsLastSinglePixels);
    return p.padMode == PadMode::kCONSTANT && plan.threads <= kBlockThreads && p.n <= kMaxGridY
        && planeSize(p) <= pixels && plan.sharedBytes <= kMaxDefaultSharedBytes && blocks >= kMinChannelsLastBlocks;
}

template <typename T>
cudaError_t launchChannelsLastSingle(EcaParams const& p, ChannelsLastPlan const& plan, T const* x, T const* weight,
    T* y, cudaStream_t stream)
{
    auto const kernel = plan.vec > 1 ? kernels::ecaSingleLaunchChannelsLast<T, kernels::kVec<T>>
                                     : kernels::ecaSingleLaunchChannelsLast<T, 1>;
    dim3 const grid(static_cast<unsigned>(ceilDiv(pixelStrideOf(p) / plan.vec, plan.tile)), p.n);
    kernel<<<grid, plan.threads, plan.sharedBytes, stream>>>(x, weight, y, p.c, p.h * p.w, pixelStrideOf(p),
        p.kernelSize, plan.tile, plan.halo, plan.lanes);
    return cudaGetLastError();
}

template <typename T>
cudaError_t forward(EcaParams const& p, void const* x, void const* weight, void* y, void* workspace,
    cudaStream_t stream)
{
    SingleLaunchConfig const single = planSingleLaunch(p);
    if (singleLaunchFits(p, single))
    {
        return launchSingle(p, single, static_cast<T const*>(x), static_cast<T const*>(weight), static_cast<T*>(y),
            stream);
    }
    if (p.layout == Layout::kCHANNELS_LAST)
    {
        bool const vectorized = channelsLastVector(p) > 1 && isAligned(x) && isAligned(y);
        ChannelsLastPlan const plan = planChannelsLastSingle(p, vectorized ? kernels::kVec<T> : 1);
        if (channelsLastSingleFits(p, plan))
        {
            return launchChannelsLastSingle(p, plan, static_cast<T const*>(x), static_cast<T const*>(weight),
                static_cast<T*>(y), stream);
        }
    }
    SplitPlan const plan = planSplits(p);
    float* sums = static_cast<float*>(workspace);
    cudaError_t const status = launchSums(p, plan, static_cast<T const*>(x), sums, stream);
    if (status != cudaSuccess)
    {
        return status;
    }
    return launchGate(p, plan, static_cast<T const*>(x), static_cast<T const*>(weight), sums, static_cast<T*>(y),
        stream);
}

//! Calls f(T{}) with T the storage type of `type`.
template <typename F>
cudaError_t withStorageType(DataType type, F&& f)
{
    switch (type)
    {
    case DataType::kFLOAT: return f(float{});
    case DataType::kHALF: return f(__half{});
    case DataType::kBF16: return f(__nv_bfloat16{});
    }
    return cudaErrorInvalidValue;
}

bool isPowerOfTwo(int value)
{
    return value > 0 && (value & (value - 1)) == 0;
}

//! Whether `config` is the launch shape ecaKernels.cuh's single-launch kernel documents: the block a power of
//! two from a warp to kBlockThreads, lanes per plane a power of two within it (so its plane groups divide it), dynamic
//! shared memory for the taps and the channel window within 48 KiB beside the kernel's static scratch.
bool isValidSingleLaunch(EcaParams const& p, SingleLaunchConfig const& config)
{
    if (p.layout != Layout::kNCHW || planeSize(p) > INT_MAX || config.channelsPerBlock < 1
        || config.channelsPerBlock > p.c)
    {
        return false;
    }
    index_t const window = minOf<index_t>(static_cast<index_t>(config.channelsPerBlock) + p.kernelSize - 1, p.c);
    index_t const shared = (p.kernelSize + window) * static_cast<index_t>(sizeof(float));
    return p.n <= kMaxGridY && config.gridX == ceilDiv(p.c, config.channelsPerBlock)
        && config.blockX >= kernels::kWarpSize && config.blockX <= kBlockThreads && isPowerOfTwo(config.blockX)
        && isPowerOfTwo(config.lanesPerPlane) && config.lanesPerPlane <= config.blockX && config.sharedBytes >= shared && config.sharedBytes + staticSingleLaunchShared() <= kMaxDefaultSharedBytes;
}

} // namespace

size_t ecaWorkspaceSize(EcaParams const& params) noexcept
{
    if (!isValid(params))
    {
        return 0;
    }
    index_t const sums = maxOf(static_cast<index_t>(params.n) * params.c, kMaxPartialSums);
    size_t const bytes = static_cast<size_t>(sums) * sizeof(float);
    return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

cudaError_t ecaForward(EcaParams const& params, void const* x, void const* weight, void* y, void* workspace,
    cudaStream_t stream) noexcept
{
    if (!isValid(params) || x == nullptr || weight == nullptr || y == nullptr || workspace == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    return withStorageType(params.dataType,
        [&](auto tag) { return forward<decltype(tag)>(params, x, weight, y, workspace, stream); });
}

cudaError_t ecaForwardSingleLaunch(EcaParams const& params, SingleLaunchConfig const& config, void const* x,
    void const* weight, void* y, cudaStream_t stream) noexcept
{
    if (!isValid(params) || !isValidSingleLaunch(params, config) || x == nullptr || weight == nullptr
        || y == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    return withStorageType(params.dataType, [&](auto tag) {
        using T = decltype(tag);
        return launchSingle(params, config, static_cast<T const*>(x), static_cast<T const*>(weight), static_cast<T*>(y),
            stream);
    });
}

} // namespace eca
