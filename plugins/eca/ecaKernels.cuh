/*
 * Device code of the fused ECA operator: one source for nvcc (ecaKernel.cu includes it) and NVRTC
 * (eca_deploy/nvrtc.py compiles it to PTX for TensorRT's Quickly Deployable Plugin AOT path).
 *
 *   y[n, c, :, :] = x[n, c, :, :] * sigmoid( sum_j w[j] * mean_hw(x)[n, c + j - (k-1)/2] )
 *
 * Padding across channels: kPadConstant reads zeros outside [0, C); kPadWrap reads channel
 * (c mod C), i.e. numpy.pad(mode="wrap"), which wraps as often as needed when k > C.
 * All arithmetic is FP32 whatever the storage type (float, __half, __nv_bfloat16).
 *
 * Determinism: every sum is computed by one thread group in a fixed order (sequential per thread,
 * xor-butterfly within a warp, warp sums in index order), never with atomics, so results are
 * bitwise reproducible for a given shape and pointer alignment (alignment picks 16-byte or scalar
 * accesses, which changes the per-thread order).
 *
 * For NVRTC it includes nothing but cuda_fp16.h and cuda_bf16.h (found on the include path NVRTC is
 * given) and uses no standard library. It defines extern "C" kernels: include it in exactly one
 * translation unit.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace eca
{
namespace kernels
{

using index_t = long long;

inline constexpr int kPadConstant = 0; //!< matches eca::PadMode::kCONSTANT
inline constexpr int kPadWrap = 1;     //!< matches eca::PadMode::kWRAP
inline constexpr int kWarpSize = 32;
inline constexpr int kVectorBytes = 16;      //!< width of vector loads and stores
inline constexpr int kMaxBlockThreads = 256; //!< every kernel here runs with at most this many threads
inline constexpr int kTileRowBytes = 128;    //!< bytes of a pixel row one channels-last block covers
inline constexpr int kVecsPerThread = 4;     //!< 16-byte vectors a thread of a plane group aims to load
//! Floats of groupReduce's scratch: the static shared memory of the kernels that reduce planes.
inline constexpr int kReduceScratchFloats = kMaxBlockThreads / kWarpSize;

template <typename T>
__host__ __device__ constexpr T minOf(T a, T b)
{
    return a < b ? a : b;
}

template <typename T>
__host__ __device__ constexpr T maxOf(T a, T b)
{
    return a < b ? b : a;
}

__host__ __device__ constexpr index_t ceilDiv(index_t a, index_t b)
{
    return (a + b - 1) / b;
}

//! Smallest power of two >= v (v >= 1, result capped at 2^30).
__host__ __device__ constexpr int nextPow2(index_t v)
{
    int p = 1;
    while (p < v && p < (1 << 30))
    {
        p <<= 1;
    }
    return p;
}

//! Threads (a power of two in [32, blockThreads]) that reduce a span of `span` elements together:
//! about kVecsPerThread vectors of `vec` elements each.
__host__ __device__ constexpr int planeGroupSize(index_t span, int vec, int blockThreads)
{
    return minOf(maxOf(nextPow2(ceilDiv(ceilDiv(span, vec), kVecsPerThread)), kWarpSize), blockThreads);
}

//! c mod C in [0, C) for any integer c: numpy.pad(mode="wrap") indexing.
__host__ __device__ constexpr int wrapIndex(int c, int channels)
{
    int const r = c % channels;
    return r < 0 ? r + channels : r;
}

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}

__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}

__device__ __forceinline__ float toFloat(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);

template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}

template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

//! V consecutive elements moved as one aligned access (16 bytes when V == kVec<T>).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack
{
    T v[V];
};

template <typename T>
inline constexpr int kVec = kVectorBytes / static_cast<int>(sizeof(T));

//! Elements before `p` reaches a 16-byte boundary (0 when aligned).
template <typename T>
__device__ __forceinline__ index_t elementsToAlignment(T const* p)
{
    unsigned const offset = static_cast<unsigned>(reinterpret_cast<unsigned long long>(p) % kVectorBytes);
    return offset == 0 ? 0 : static_cast<index_t>((kVectorBytes - offset) / sizeof(T));
}

//! This thread's share of sum(p[0:len]) for `lanes` cooperating threads: scalar head up to the
//! first 16-byte boundary, 16-byte body, scalar tail.
template <typename T>
__device__ __forceinline__ float sumSpan(T const* __restrict__ p, index_t len, int lane, int lanes)
{
    constexpr int V = kVec<T>;
    index_t const head = minOf(len, elementsToAlignment(p));
    index_t const vecs = (len - head) / V;
    index_t const tail = head + vecs * V;
    float acc = 0.f;
    if (lane < head)
    {
        acc += toFloat(p[lane]);
    }
    Pack<T, V> const* body = reinterpret_cast<Pack<T, V> const*>(p + head);
    for (index_t i = lane; i < vecs; i += lanes)
    {
        Pack<T, V> const pack = body[i];
#pragma unroll
        for (int e = 0; e < V; ++e)
        {
            acc += toFloat(pack.v[e]);
        }
    }
    if (tail + lane < len)
    {
        acc += toFloat(p[tail + lane]);
    }
    return acc;
}

//! Sum of `v` over aligned groups of `groupSize` threads (a power of two, 32 <= groupSize <= blockDim.x);
//! every thread of a group gets the same bits. All threads of the block must call it together.
//! `scratch` holds one float per warp.
__device__ __forceinline__ float groupReduce(float v, int groupSize, float* scratch)
{
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1)
    {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    if (groupSize == kWarpSize)
    {
        return v;
    }
    int const warp = threadIdx.x / kWarpSize;
    __syncthreads(); // the previous call's readers are done with scratch
    if (threadIdx.x % kWarpSize == 0)
    {
        scratch[warp] = v;
    }
    __syncthreads();
    int const warpsPerGroup = groupSize / kWarpSize;
    int const first = warp / warpsPerGroup * warpsPerGroup;
    float total = 0.f;
    for (int i = 0; i < warpsPerGroup; ++i)
    {
        total += scratch[first + i];
    }
    return total;
}

//! sigmoid(sum_j w[j] * meanAt(channel of tap j)) for channel c; meanAt receives a channel in [0, C).
template <typename T, typename MeanAt>
__device__ __forceinline__ float channelGate(T const* __restrict__ weight, int kernelSize, int c, int channels,
    int padMode, MeanAt meanAt)
{
    int const halo = (kernelSize - 1) / 2;
    float z = 0.f;
    for (int j = 0; j < kernelSize; ++j)
    {
        int ch = c - halo + j;
        if (padMode == kPadConstant)
        {
            if (ch < 0 || ch >= channels)
            {
                continue;
            }
        }
        else
        {
            ch = wrapIndex(ch, channels);
        }
        z += toFloat(weight[j]) * meanAt(ch);
    }
    return 1.f / (1.f + expf(-z));
}

//! The channels whose means the gates of a tile [c0, c0 + tileChannels) read: window position i
//! holds channel first + i (mod C with wrap padding; a zero outside [0, C) with constant padding),
//! or every channel once (first = 0, count = C) when the halo would cover them all.
struct ChannelWindow
{
    int first;
    int count;
};

__device__ __forceinline__ ChannelWindow channelWindow(int c0, int tileChannels, int kernelSize, int channels)
{
    int const span = tileChannels + kernelSize - 1;
    return span >= channels ? ChannelWindow{0, channels} : ChannelWindow{c0 - (kernelSize - 1) / 2, span};
}

//! Channel at window position i, or -1 where constant padding reads a zero.
__device__ __forceinline__ int windowChannel(ChannelWindow window, int i, int channels, int padMode)
{
    int const ch = window.first + i;
    if (padMode == kPadConstant)
    {
        return ch >= 0 && ch < channels ? ch : -1;
    }
    return wrapIndex(ch, channels);
}

//! Gate of channel c from the window means (shared memory) of its tile.
template <typename T>
__device__ __forceinline__ float windowGate(T const* __restrict__ weight, int kernelSize, int c, int channels,
    int padMode, ChannelWindow window, float const* means)
{
    return channelGate(weight, kernelSize, c, channels, padMode,
        [&](int ch) { return means[wrapIndex(ch - window.first, channels)]; });
}

//! y[i] = x[i] * gates[(pos0 + i) / hw] for i in [0, count * V), V elements per access; threads
//! stride by `threads` accesses. Plane and offset advance incrementally: no division in the loop.
template <typename T, int V>
__device__ __forceinline__ void scaleRun(T const* __restrict__ x, T* __restrict__ y, index_t count, index_t pos0,
    index_t hw, float const* gates, int tid, int threads)
{
    index_t const pos = pos0 + static_cast<index_t>(tid) * V;
    index_t q = pos / hw;
    index_t r = pos - q * hw;
    index_t const step = static_cast<index_t>(threads) * V;
    index_t const stepQ = step / hw;
    index_t const stepR = step - stepQ * hw;
    Pack<T, V> const* in = reinterpret_cast<Pack<T, V> const*>(x);
    Pack<T, V>* out = reinterpret_cast<Pack<T, V>*>(y);
    for (index_t i = tid; i < count; i += threads)
    {
        Pack<T, V> pack = in[i];
        index_t lq = q;
        index_t lr = r;
#pragma unroll
        for (int e = 0; e < V; ++e)
        {
            pack.v[e] = fromFloat<T>(toFloat(pack.v[e]) * gates[lq]);
            if (++lr == hw)
            {
                lr = 0;
                ++lq;
            }
        }
        out[i] = pack;
        q += stepQ;
        r += stepR;
        if (r >= hw)
        {
            r -= hw;
            ++q;
        }
    }
}

//! Gate the contiguous span x[0:len] into y (element i belongs to gates[(pos0 + i) / hw]): 16-byte
//! accesses when x and y share their alignment, scalar otherwise.
template <typename T>
__device__ __forceinline__ void scaleSpan(T const* __restrict__ x, T* __restrict__ y, index_t len, index_t pos0,
    index_t hw, float const* gates, int tid, int threads)
{
    constexpr int V = kVec<T>;
    index_t const head = minOf(len, elementsToAlignment(x));
    if (head != minOf(len, elementsToAlignment(y)))
    {
        scaleRun<T, 1>(x, y, len, pos0, hw, gates, tid, threads);
        return;
    }
    index_t const vecs = (len - head) / V;
    index_t const tail = head + vecs * V;
    scaleRun<T, 1>(x, y, head, pos0, hw, gates, tid, threads);
    scaleRun<T, V>(x + head, y + head, vecs, pos0 + head, hw, gates, tid, threads);
    scaleRun<T, 1>(x + tail, y + tail, len - tail, pos0 + tail, hw, gates, tid, threads);
}

/*
 * Two-launch path (ecaForward). Pass 1 writes per-(n, c, split) FP32 sums into the workspace,
 * sums[(n * C + c) * splits + s]; pass 2 turns them into gates and scales x.
 */

//! Pass 1, NCHW: groups of `groupSize` threads each reduce `segment` elements of one plane
//! (split s covers [s * segment, min((s + 1) * segment, hw))). 1D grid, any size, blockDim.x a
//! multiple of groupSize.
template <typename T>
__global__ void __launch_bounds__(kMaxBlockThreads) ecaPlaneSumsNchw(T const* __restrict__ x,
    float* __restrict__ sums, index_t planes, int splits, index_t hw, index_t segment, int groupSize)
{
    __shared__ float scratch[kReduceScratchFloats];
    int const groupsPerBlock = blockDim.x / groupSize;
    int const group = threadIdx.x / groupSize;
    int const lane = threadIdx.x % groupSize;
    index_t const items = planes * splits;
    for (index_t base = static_cast<index_t>(blockIdx.x) * groupsPerBlock; base < items;
         base += static_cast<index_t>(gridDim.x) * groupsPerBlock)
    {
        index_t const item = base + group;
        float sum = 0.f;
        if (item < items)
        {
            index_t const plane = item / splits;
            index_t const begin = (item - plane * splits) * segment;
            sum = sumSpan(x + plane * hw + begin, minOf(segment, hw - begin), lane, groupSize);
        }
        sum = groupReduce(sum, groupSize, scratch);
        if (item < items && lane == 0)
        {
            sums[item] = sum;
        }
    }
}

//! Pass 1, channels-last (N x HW x pixelStride): block (TX, TY) owns TX vectors of V channels of one
//! sample and one split of `rowsPerSplit` pixels; threads stride over pixels by TY (a power of two)
//! and are combined by a shared-memory tree. 1D grid over (sample, channel tile, split).
template <typename T, int V>
__global__ void __launch_bounds__(kMaxBlockThreads) ecaChannelSumsNhwc(T const* __restrict__ x,
    float* __restrict__ sums, int samples, int channels, index_t hw, int pixelStride, int splits,
    index_t rowsPerSplit)
{
    __shared__ float partial[kMaxBlockThreads * V];
    int const tx = threadIdx.x;
    int const ty = threadIdx.y;
    int const vectors = static_cast<int>(ceilDiv(channels, V));
    int const tiles = static_cast<int>(ceilDiv(vectors, blockDim.x));
    index_t const items = static_cast<index_t>(samples) * tiles * splits;
    float* mine = partial + (ty * blockDim.x + tx) * V;
    for (index_t b = blockIdx.x; b < items; b += gridDim.x)
    {
        int const split = static_cast<int>(b % splits);
        index_t const rest = b / splits;
        int const tile = static_cast<int>(rest % tiles);
        index_t const n = rest / tiles;
        int const vector = tile * blockDim.x + tx;
        float acc[V];
#pragma unroll
        for (int e = 0; e < V; ++e)
        {
            acc[e] = 0.f;
        }
        if (vector < vectors)
        {
            index_t const rowEnd = minOf(hw, (split + 1) * rowsPerSplit);
            T const* column = x + n * hw * pixelStride + static_cast<index_t>(vector) * V;
            for (index_t row = split * rowsPerSplit + ty; row < rowEnd; row += blockDim.y)
            {
                Pack<T, V> const pack = *reinterpret_cast<Pack<T, V> const*>(column + row * pixelStride);
#pragma unroll
                for (int e = 0; e < V; ++e)
                {
                    acc[e] += toFloat(pack.v[e]);
                }
            }
        }
#pragma unroll
        for (int e = 0; e < V; ++e)
        {
            mine[e] = acc[e];
        }
        __syncthreads();
        for (int stride = blockDim.y / 2; stride > 0; stride >>= 1)
        {
            if (ty < stride)
            {
#pragma unroll
                for (int e = 0; e < V; ++e)
                {
                    mine[e] += mine[stride * blockDim.x * V + e];
                }
            }
            __syncthreads();
        }
        if (ty == 0 && vector < vectors)
        {
#pragma unroll
            for (int e = 0; e < V; ++e)
            {
                int const c = vector * V + e;
                if (c < channels)
                {
                    sums[(n * channels + c) * splits + split] = mine[e];
                }
            }
        }
        __syncthreads(); // partial is reused by the next item
    }
}

//! Gate of channel c of the sample whose sums start at sampleSums, from the pass-1 sums.
template <typename T>
__device__ __forceinline__ float gateFromSums(float const* __restrict__ sampleSums, T const* __restrict__ weight,
    int kernelSize, int c, int channels, int padMode, int splits, float hw)
{
    return channelGate(weight, kernelSize, c, channels, padMode, [&](int ch) {
        float sum = 0.f;
        for (int s = 0; s < splits; ++s)
        {
            sum += sampleSums[static_cast<index_t>(ch) * splits + s];
        }
        return sum / hw;
    });
}

//! Pass 2, NCHW: block b gates elements [b * chunk, (b + 1) * chunk) of the flat tensor; it first
//! computes the gates of the planes the chunk touches into dynamic shared memory
//! ((chunk - 1) / hw + 2 floats suffice). 1D grid, any size.
template <typename T>
__global__ void __launch_bounds__(kMaxBlockThreads) ecaGateNchw(T const* __restrict__ x, T const* __restrict__ weight,
    float const* __restrict__ sums, T* __restrict__ y, int channels, index_t planes, index_t hw, int kernelSize,
    int splits, int padMode, index_t chunk)
{
    extern __shared__ float gates[];
    index_t const total = planes * hw;
    index_t const chunks = ceilDiv(total, chunk);
    for (index_t b = blockIdx.x; b < chunks; b += gridDim.x)
    {
        index_t const begin = b * chunk;
        index_t const len = minOf(chunk, total - begin);
        index_t const first = begin / hw;
        index_t const last = (begin + len - 1) / hw;
        for (index_t p = first + threadIdx.x; p <= last; p += blockDim.x)
        {
            index_t const n = p / channels;
            int const c = static_cast<int>(p - n * channels);
            gates[p - first] = gateFromSums(sums + n * channels * splits, weight, kernelSize, c, channels, padMode,
                splits, static_cast<float>(hw));
        }
        __syncthreads();
        scaleSpan(x + begin, y + begin, len, begin - first * hw, hw, gates, threadIdx.x, blockDim.x);
        __syncthreads(); // gates is reused by the next chunk
    }
}

//! Pass 2, channels-last: block (TX, TY) owns TX vectors of V channels of one sample (tiles span the
//! whole pixelStride, so the padding channels of HWC8 are written as zeros) and `rowsPerBlock`
//! pixels. With `windowed` it first reduces the split sums of its channel window to means in shared
//! memory, then computes its gates from them; without (the window would not fit in shared memory) the
//! gates read the split sums directly, as ecaGateNchw's do: the same bits, more global reads.
//! 1D grid over (sample, channel tile, pixel chunk); dynamic shared memory of
//! ((windowed ? min(TX * V + k - 1, C) : 0) + TX * V) floats.
template <typename T, int V>
__global__ void __launch_bounds__(kMaxBlockThreads) ecaGateNhwc(T const* __restrict__ x, T const* __restrict__ weight,
    float const* __restrict__ sums, T* __restrict__ y, int samples, int channels, index_t hw, int pixelStride,
    int kernelSize, int splits, int padMode, index_t rowsPerBlock, int windowed)
{
    extern __shared__ float means[];
    int const tx = threadIdx.x;
    int const tid = threadIdx.y * blockDim.x + tx;
    int const threads = blockDim.x * blockDim.y;
    int const tileChannels = blockDim.x * V;
    float* gates = windowed ? means + minOf(tileChannels + kernelSize - 1, channels) : means;
    int const vectors = pixelStride / V;
    int const tiles = static_cast<int>(ceilDiv(vectors, blockDim.x));
    index_t const chunks = ceilDiv(hw, rowsPerBlock);
    index_t const items = static_cast<index_t>(samples) * tiles * chunks;
    for (index_t b = blockIdx.x; b < items; b += gridDim.x)
    {
        index_t const chunk = b % chunks;
        index_t const rest = b / chunks;
        int const c0 = static_cast<int>(rest % tiles) * tileChannels;
        index_t const n = rest / tiles;
        float const* sampleSums = sums + n * channels * splits;
        ChannelWindow const window = channelWindow(c0, maxOf(minOf(tileChannels, channels - c0), 0), kernelSize,
            channels);
        if (windowed)
        {
            for (int i = tid; i < window.count; i += threads)
            {
                int const ch = windowChannel(window, i, channels, padMode);
                float sum = 0.f;
                for (int s = 0; ch >= 0 && s < splits; ++s)
                {
                    sum += sampleSums[static_cast<index_t>(ch) * splits + s];
                }
                means[i] = sum / static_cast<float>(hw);
            }
            __syncthreads();
        }
        for (int t = tid; t < tileChannels; t += threads)
        {
            int const c = c0 + t;
            float gate = 0.f;
            if (c < channels)
            {
                gate = windowed ? windowGate(weight, kernelSize, c, channels, padMode, window, means)
                                : gateFromSums(sampleSums, weight, kernelSize, c, channels, padMode, splits,
                                    static_cast<float>(hw));
            }
            gates[t] = gate;
        }
        __syncthreads();
        int const vector = c0 / V + tx;
        if (vector < vectors)
        {
            index_t const rowEnd = minOf(hw, (chunk + 1) * rowsPerBlock);
            index_t const column = n * hw * pixelStride + static_cast<index_t>(vector) * V;
            for (index_t row = chunk * rowsPerBlock + threadIdx.y; row < rowEnd; row += blockDim.y)
            {
                index_t const offset = column + row * pixelStride;
                Pack<T, V> pack = *reinterpret_cast<Pack<T, V> const*>(x + offset);
#pragma unroll
                for (int e = 0; e < V; ++e)
                {
                    bool const real = vector * V + e < channels;
                    pack.v[e] = fromFloat<T>(real ? toFloat(pack.v[e]) * gates[tx * V + e] : 0.f);
                }
                *reinterpret_cast<Pack<T, V>*>(y + offset) = pack;
            }
        }
        __syncthreads(); // means and gates are reused by the next item
    }
}

/*
 * Single-launch path (TensorRT Quickly Deployable Plugin AOT: one kernel, one launch, no workspace).
 *
 * Launch shape (eca_deploy.nvrtc.single_launch_params computes it):
 *   grid  = (ceil(C / channelsPerBlock) * N, 1, 1)   block b: sample b / tiles, channel tile b % tiles
 *   block = (threads, 1, 1), threads a power of two from 32 to kMaxBlockThreads (so that the plane
 *           groups, a power of two each, divide it: groupReduce needs every group whole)
 *   dynamic shared memory = (min(channelsPerBlock + k - 1, C) + channelsPerBlock) * sizeof(float), at
 *           most 48 KiB less the kernel's own kReduceScratchFloats floats of static shared memory
 * Each block recomputes the means of its channel tile plus the (k-1)/2 halo channels on each side
 * (or of all C channels when that window covers them), then gates and scales its tile. A smaller
 * grid is also correct: blocks stride over the tiles.
 */
template <typename T>
__device__ void singleLaunchNchw(T const* __restrict__ x, T const* __restrict__ weight, int samples, int channels,
    int hw, int kernelSize, int padMode, int channelsPerBlock, T* __restrict__ y)
{
    extern __shared__ float means[];
    __shared__ float scratch[kReduceScratchFloats];
    int const tiles = static_cast<int>(ceilDiv(channels, channelsPerBlock));
    float* gates = means + minOf(channelsPerBlock + kernelSize - 1, channels);
    int const groupSize = planeGroupSize(hw, kVec<T>, blockDim.x);
    int const groupsPerBlock = blockDim.x / groupSize;
    int const group = threadIdx.x / groupSize;
    int const lane = threadIdx.x % groupSize;
    for (index_t b = blockIdx.x; b < static_cast<index_t>(samples) * tiles; b += gridDim.x)
    {
        index_t const n = b / tiles;
        int const c0 = static_cast<int>(b - n * tiles) * channelsPerBlock;
        int const tileChannels = minOf(channelsPerBlock, channels - c0);
        ChannelWindow const window = channelWindow(c0, tileChannels, kernelSize, channels);
        T const* sample = x + n * channels * hw;
        for (int base = 0; base < window.count; base += groupsPerBlock)
        {
            int const i = base + group;
            int const ch = i < window.count ? windowChannel(window, i, channels, padMode) : -1;
            float sum = ch >= 0 ? sumSpan(sample + static_cast<index_t>(ch) * hw, hw, lane, groupSize) : 0.f;
            sum = groupReduce(sum, groupSize, scratch);
            if (i < window.count && lane == 0)
            {
                means[i] = sum / static_cast<float>(hw);
            }
        }
        __syncthreads();
        for (int t = threadIdx.x; t < tileChannels; t += blockDim.x)
        {
            gates[t] = windowGate(weight, kernelSize, c0 + t, channels, padMode, window, means);
        }
        __syncthreads();
        index_t const offset = (n * channels + c0) * hw;
        scaleSpan(x + offset, y + offset, static_cast<index_t>(tileChannels) * hw, 0, hw, gates, threadIdx.x,
            blockDim.x);
        __syncthreads(); // means and gates are reused by the next tile
    }
}

} // namespace kernels
} // namespace eca

// Fixed, unmangled names for the QDP AOT path. Argument order follows TensorRT's AOT convention:
// input pointers (x, weight), extra int32 scalars, output pointer (y).
#define ECA_SINGLE_LAUNCH_KERNEL(NAME, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(eca::kernels::kMaxBlockThreads)                                       \
        NAME(T const* __restrict__ x, T const* __restrict__ weight, int samples, int channels, int hw, int kernelSize, \
            int padMode, int channelsPerBlock, T* __restrict__ y)                                                      \
    {                                                                                                                  \
        eca::kernels::singleLaunchNchw(x, weight, samples, channels, hw, kernelSize, padMode, channelsPerBlock, y);   \
    }

ECA_SINGLE_LAUNCH_KERNEL(eca_single_launch_f32, float)
ECA_SINGLE_LAUNCH_KERNEL(eca_single_launch_f16, __half)
ECA_SINGLE_LAUNCH_KERNEL(eca_single_launch_bf16, __nv_bfloat16)

#undef ECA_SINGLE_LAUNCH_KERNEL
