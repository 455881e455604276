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
//! 16-byte vectors of its plane a lane of the single-launch kernel keeps in registers between reading and scaling
inline constexpr int kHeldVectors = 16;
//! Pass-1 partial sums a gate loads before it adds the first (sumOfSplits).
inline constexpr int kSplitsInFlight = 8;
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
__device__ __forceinline__ int elementsToAlignment(T const* p)
{
    int const offset = static_cast<int>(reinterpret_cast<unsigned long long>(p) % kVectorBytes);
    return offset == 0 ? 0 : (kVectorBytes - offset) / static_cast<int>(sizeof(T));
}

//! This thread's share of sum(p[0:len]) for `lanes` cooperating threads: scalar head up to the
//! first 16-byte boundary, 16-byte body, scalar tail.
template <typename T>
__device__ __forceinline__ float sumSpan(T const* __restrict__ p, index_t len, int lane, int lanes)
{
    constexpr int V = kVec<T>;
    index_t const head = minOf<index_t>(len, elementsToAlignment(p));
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

//! Sum of `v` over aligned groups of `groupSize` threads (a power of two, 1 <= groupSize <= blockDim.x, and
//! blockDim.x a multiple of 32); every thread of a group gets the same bits. All threads of the block must call it
//! together. `scratch` holds one float per warp.
__device__ __forceinline__ float groupReduce(float v, int groupSize, float* scratch)
{
    for (int offset = minOf(groupSize, kWarpSize) / 2; offset > 0; offset >>= 1)
    {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    if (groupSize <= kWarpSize)
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

//! sigmoid(sum_j w[j] * meanAt(channel of tap j)) for channel c; meanAt receives a channel in [0, C). The taps
//! are the layer's weight (storage type T) or a float copy of them.
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

//! Gate of channel c from the window means (shared memory) of its tile and the taps (weight or a float copy).
template <typename Tap>
__device__ __forceinline__ float windowGate(Tap const* __restrict__ taps, int kernelSize, int c, int channels,
    int padMode, ChannelWindow window, float const* means)
{
    return channelGate(taps, kernelSize, c, channels, padMode,
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
    index_t const head = minOf<index_t>(len, elementsToAlignment(x));
    if (head != minOf<index_t>(len, elementsToAlignment(y)))
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
        index_t const split = b % splits; // not int: GPGPU-Sim drops the 64-bit immediate nvcc adds to widen int + 1
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

//! Sum of a channel's `splits` pass-1 partial sums, added in split order. The loads go out kSplitsInFlight at a time
//! before the first is added: one at a time, each add waited for its L2 round trip (simulated A100, 49 splits of
//! a 16 x 112 x 112 FP16 map: the channels-last gate took 18,928 cycles, 8,562 with this).
__device__ __forceinline__ float sumOfSplits(float const* __restrict__ channelSums, int splits)
{
    float sum = 0.f;
    for (int first = 0; first < splits; first += kSplitsInFlight)
    {
        float parts[kSplitsInFlight];
#pragma unroll
        for (int j = 0; j < kSplitsInFlight; ++j)
        {
            parts[j] = first + j < splits ? channelSums[first + j] : 0.f;
        }
#pragma unroll
        for (int j = 0; j < kSplitsInFlight; ++j)
        {
            if (first + j < splits)
            {
                sum += parts[j];
            }
        }
    }
    return sum;
}

//! Gate of channel c of the sample whose sums start at sampleSums, from the pass-1 sums.
template <typename T>
__device__ __forceinline__ float gateFromSums(float const* __restrict__ sampleSums, T const* __restrict__ weight,
    int kernelSize, int c, int channels, int padMode, int splits, float hw)
{
    return channelGate(weight, kernelSize, c, channels, padMode,
        [&](int ch) { return sumOfSplits(sampleSums + static_cast<index_t>(ch) * splits, splits) / hw; });
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
                float const sum = ch >= 0 ? sumOfSplits(sampleSums + static_cast<index_t>(ch) * splits, splits) : 0.f;
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
 * Single-launch path: one kernel, one launch, no workspace. ecaForward runs it for NCHW whenever its plan fits
 * (planSingleLaunch in ecaKernel.cu), and TensorRT's Quickly Deployable Plugin AOT path runs it alone.
 *
 * Launch shape (ecaKernel.cu's planSingleLaunch and eca_deploy.tensorrt.nvrtc.single_launch_params compute it):
 *   grid  = (ceil(C / channelsPerBlock), N, 1)        block (t, n): channel tile t of sample n
 *   block = (threads, 1, 1), threads a power of two from 32 to kMaxBlockThreads, split into groups of
 *           lanesPerPlane threads (a power of two, at most threads): group g reads plane g of the tile's window
 *   dynamic shared memory = (k + min(channelsPerBlock + k - 1, C)) * sizeof(float) (the taps, then the window's
 *           means), at most 48 KiB less the kernel's own kReduceScratchFloats floats of static shared memory
 * Each block reads the planes of its channel tile plus the (k-1)/2 halo channels on each side (or all C channels when
 * that window covers them), one plane per lane group, each lane keeping its share in registers (up to kHeldVectors
 * accesses); it reduces them to means in shared memory, then every lane of a tile channel's group computes that
 * channel's gate and scales its share of the plane from its registers. x is read from DRAM about once (the halo
 * planes are the neighbouring tiles' own, read at the same time) and y written once. A window larger than the
 * groups is read in several passes and the tile read again to scale it. Accesses are 16-byte vectors when every
 * plane starts on a 16-byte boundary in x and y, else 8-byte ones (planes of 14 x 14 halves), else single elements
 * (planes of 7 x 7).
 *
 * At batch 1 a block has a warp or two and an SM one block or two, so nothing hides latency: the time is the
 * number of instructions one thread runs one after the other. Hence a 2D grid (no division for the tile), shifts
 * for the power-of-two lanes, no head or tail elements, the taps' load issued before x's, pairwise sums, the fast
 * exponential.
 */

//! One lane's share of a plane: of `lanes` lanes, lane l takes accesses l, l + lanes, ...; the first kHeldVectors of
//! them stay here between reading and scaling.
template <typename T, int V>
struct PlaneShare
{
    Pack<T, V> held[kHeldVectors];
};

//! Sum of a pack's elements, pairwise (a dependency chain of log2(V) additions, not V).
template <typename T, int V>
__device__ __forceinline__ float packSum(Pack<T, V> const& pack)
{
    float partial[V];
#pragma unroll
    for (int e = 0; e < V; ++e)
    {
        partial[e] = toFloat(pack.v[e]);
    }
#pragma unroll
    for (int width = V / 2; width > 0; width /= 2)
    {
#pragma unroll
        for (int e = 0; e < width; ++e)
        {
            partial[e] += partial[e + width];
        }
    }
    return partial[0];
}

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> scaled(Pack<T, V> pack, float gate)
{
#pragma unroll
    for (int e = 0; e < V; ++e)
    {
        pack.v[e] = fromFloat<T>(toFloat(pack.v[e]) * gate);
    }
    return pack;
}

//! Accesses lane `lane` of 2^laneBits lanes takes of a plane of `count`.
__device__ __forceinline__ int laneAccesses(int count, int lane, int laneBits)
{
    return lane < count ? ((count - 1 - lane) >> laneBits) + 1 : 0;
}

//! Read this lane's `mine` accesses of a plane (from `plane + lane`, 2^laneBits apart) into `share`, every load issued
//! before any is used, and return their sum.
template <typename T, int V>
__device__ __forceinline__ float readPlane(Pack<T, V> const* __restrict__ plane, int mine, int laneBits,
    PlaneShare<T, V>& share)
{
    Pack<T, V> const* p = plane;
#pragma unroll
    for (int r = 0; r < kHeldVectors; ++r)
    {
        if (r >= mine)
        {
            break;
        }
        share.held[r] = *p;
        p += 1 << laneBits;
    }
    float acc = 0.f;
#pragma unroll
    for (int r = 0; r < kHeldVectors; ++r)
    {
        if (r >= mine)
        {
            break;
        }
        acc += packSum(share.held[r]);
    }
    for (int r = kHeldVectors; r < mine; ++r)
    {
        acc += packSum(*p);
        p += 1 << laneBits;
    }
    return acc;
}

//! out = in * gate for this lane's `mine` accesses of a plane (from `in + lane` and `out + lane`, 2^laneBits apart):
//! from `share` (readPlane of in), and beyond what it holds from in again.
template <typename T, int V>
__device__ __forceinline__ void scalePlane(Pack<T, V> const* __restrict__ in, Pack<T, V>* __restrict__ out, int mine,
    int laneBits, float gate, PlaneShare<T, V> const& share)
{
#pragma unroll
    for (int r = 0; r < kHeldVectors; ++r)
    {
        if (r >= mine)
        {
            break;
        }
        *out = scaled(share.held[r], gate);
        out += 1 << laneBits;
    }
    in += kHeldVectors << laneBits;
    for (int r = kHeldVectors; r < mine; ++r)
    {
        *out = scaled(*in, gate);
        in += 1 << laneBits;
        out += 1 << laneBits;
    }
}

//! Sum over aligned groups of 2^laneBits <= 32 lanes, unrolled (groupReduce for groups within a warp).
__device__ __forceinline__ float warpGroupReduce(float v, int laneBits)
{
#pragma unroll
    for (int bit = 0; bit < 5; ++bit)
    {
        if (bit < laneBits)
        {
            v += __shfl_xor_sync(0xffffffffu, v, 1 << (laneBits - 1 - bit));
        }
    }
    return v;
}

//! sigmoid(sum_j taps[j] * means[j]) over k taps in shared memory.
__device__ __forceinline__ float tapGate(float const* taps, float const* means, int kernelSize)
{
    float z = 0.f;
#pragma unroll 4
    for (int j = 0; j < kernelSize; ++j)
    {
        z += taps[j] * means[j];
    }
    return 1.f / (1.f + __expf(-z));
}

//! The single-launch kernel with accesses of V elements (see above); `tap` is tap threadIdx.x (0 past k), loaded by
//! the caller first; `scratch` is groupReduce's.
template <typename T, int V>
__device__ __forceinline__ void singleLaunchBody(T const* __restrict__ x, T const* __restrict__ weight, int channels,
    int hw, int kernelSize, int padMode, int channelsPerBlock, int lanesPerPlane, T* __restrict__ y, float tap,
    float* scratch)
{
    extern __shared__ float taps[]; // the k taps as floats, then the means of the tile's channel window
    int const laneBits = __popc(lanesPerPlane - 1);
    int const lane = threadIdx.x & (lanesPerPlane - 1);
    int const group = threadIdx.x >> laneBits;
    int const groups = blockDim.x >> laneBits;
    int const c0 = blockIdx.x * channelsPerBlock;
    int const tileChannels = minOf(channelsPerBlock, channels - c0);
    int const count = hw / V; // accesses per plane
    int const mine = laneAccesses(count, lane, laneBits);
    ChannelWindow const window = channelWindow(c0, tileChannels, kernelSize, channels);
    index_t const sample = static_cast<index_t>(blockIdx.y) * channels * count + lane;
    Pack<T, V> const* in = reinterpret_cast<Pack<T, V> const*>(x) + sample;
    float const inverseHw = 1.f / static_cast<float>(hw);
    float* means = taps + kernelSize;
    PlaneShare<T, V> share;
    for (int base = 0; base < window.count; base += groups)
    {
        int const i = base + group;
        int const ch = i < window.count ? windowChannel(window, i, channels, padMode) : -1;
        float sum = ch >= 0 ? readPlane(in + static_cast<index_t>(ch) * count, mine, laneBits, share) : 0.f;
        sum = laneBits <= 5 ? warpGroupReduce(sum, laneBits) : groupReduce(sum, lanesPerPlane, scratch);
        if (i < window.count && lane == 0)
        {
            means[i] = sum * inverseHw;
        }
    }
    if (threadIdx.x < kernelSize)
    {
        taps[threadIdx.x] = tap;
    }
    for (int j = threadIdx.x + blockDim.x; j < kernelSize; j += blockDim.x)
    {
        taps[j] = toFloat(weight[j]);
    }
    __syncthreads();
    // The window is [c0 - halo, c0 + tile + halo) unless it covers every channel: then channel ch's taps read
    // positions ch - c0 .. ch - c0 + k - 1 (zero padding stored as zero means), else windowGate wraps them.
    bool const direct = tileChannels + kernelSize - 1 < channels;
    bool const held = window.count <= groups; // one pass: `share` still holds this group's plane
    Pack<T, V>* out = reinterpret_cast<Pack<T, V>*>(y) + sample;
    for (int i = group; i < window.count; i += groups)
    {
        int const ch = window.first + i; // a tile channel lies in [0, C): no wrapping
        if (ch < c0 || ch >= c0 + tileChannels)
        {
            continue;
        }
        float const gate = direct ? tapGate(taps, means + ch - c0, kernelSize)
                                  : windowGate(taps, kernelSize, ch, channels, padMode, window, means);
        index_t const plane = static_cast<index_t>(ch) * count;
        if (!held)
        {
            readPlane(in + plane, mine, laneBits, share);
        }
        scalePlane(in + plane, out + plane, mine, laneBits, gate, share);
    }
}

//! Whether every plane of x and y is a whole number of aligned packs of V elements.
template <int V, typename T>
__device__ __forceinline__ bool planesOfPacks(T const* x, T const* y, int hw)
{
    constexpr unsigned long long bytes = V * sizeof(T);
    return hw % V == 0 && reinterpret_cast<unsigned long long>(x) % bytes == 0
        && reinterpret_cast<unsigned long long>(y) % bytes == 0;
}

template <typename T>
__device__ void singleLaunchNchw(T const* __restrict__ x, T const* __restrict__ weight, int channels, int hw,
    int kernelSize, int padMode, int channelsPerBlock, int lanesPerPlane, T* __restrict__ y)
{
    __shared__ float scratch[kReduceScratchFloats];
    float const tap = threadIdx.x < kernelSize ? toFloat(weight[threadIdx.x]) : 0.f; // in flight beside x's loads
    constexpr int V = kVec<T>;
    if (planesOfPacks<V>(x, y, hw))
    {
        singleLaunchBody<T, V>(x, weight, channels, hw, kernelSize, padMode, channelsPerBlock, lanesPerPlane, y, tap,
            scratch);
    }
    else if (planesOfPacks<V / 2>(x, y, hw))
    {
        singleLaunchBody<T, V / 2>(x, weight, channels, hw, kernelSize, padMode, channelsPerBlock, lanesPerPlane, y,
            tap, scratch);
    }
    else
    {
        singleLaunchBody<T, 1>(x, weight, channels, hw, kernelSize, padMode, channelsPerBlock, lanesPerPlane, y, tap,
            scratch);
    }
}

//! sum_l p[l * stride] for l < count, four partial sums at a time.
__device__ __forceinline__ float stridedSum(float const* p, int count, int stride)
{
    float a = 0.f, b = 0.f, c = 0.f, d = 0.f;
    int l = 0;
    for (; l + 4 <= count; l += 4)
    {
        a += p[l * stride];
        b += p[(l + 1) * stride];
        c += p[(l + 2) * stride];
        d += p[(l + 3) * stride];
    }
    for (; l < count; ++l)
    {
        a += p[l * stride];
    }
    return (a + b) + (c + d);
}

//! Element e of the pack (channel first + e) times gate[e]; zero for channels past C (HWC8 padding, which x may
//! hold anything in).
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> gated(Pack<T, V> pack, float const (&gate)[V], int first, int channels)
{
#pragma unroll
    for (int e = 0; e < V; ++e)
    {
        pack.v[e] = fromFloat<T>(first + e < channels ? toFloat(pack.v[e]) * gate[e] : 0.f);
    }
    return pack;
}

/*
 * Channels-last single launch (ecaForward, zero padding, maps a block's lanes hold: up to 28 x 28 at the zoo's
 * channel counts): block (t, n) owns channel vectors [t * tileVectors, (t + 1) * tileVectors) of a pixel row of
 * sample n (V channels each, HWC8's padding channels included, written as zeros) and haloVectors more on each side.
 * Group g of lanesPerColumn lanes reads window vector g at every pixel (lane l: pixels l, l + lanes, ...) and keeps
 * them in registers; the lanes' sums meet in shared memory as one mean per window channel; then each lane of a
 * tile group computes its vector's V gates and scales its registers.
 * Dynamic shared memory (floats): the k taps, windowVectors * V means, blockDim.x * V partial sums.
 */
template <typename T, int V>
__global__ void __launch_bounds__(kMaxBlockThreads) ecaSingleLaunchChannelsLast(T const* __restrict__ x,
    T const* __restrict__ weight, T* __restrict__ y, int channels, int hw, int pixelStride, int kernelSize,
    int tileVectors, int haloVectors, int lanesPerColumn)
{
    extern __shared__ float taps[];
    float const tap = threadIdx.x < kernelSize ? toFloat(weight[threadIdx.x]) : 0.f; // in flight beside x's loads
    int const windowVectors = tileVectors + 2 * haloVectors;
    float* means = taps + kernelSize;
    float* partial = means + windowVectors * V;
    int const laneBits = __popc(lanesPerColumn - 1);
    int const lane = threadIdx.x & (lanesPerColumn - 1);
    int const group = threadIdx.x >> laneBits;
    int const rowPacks = pixelStride / V;
    int const firstVector = static_cast<int>(blockIdx.x) * tileVectors - haloVectors;
    int const vector = firstVector + group; // this group's vector of a pixel row
    int const mine = group < windowVectors && vector >= 0 && vector < rowPacks ? laneAccesses(hw, lane, laneBits) : 0;
    index_t const offset = (static_cast<index_t>(blockIdx.y) * hw + lane) * rowPacks + vector;
    index_t const step = static_cast<index_t>(rowPacks) << laneBits; // between a lane's pixels
    Pack<T, V> const* in = reinterpret_cast<Pack<T, V> const*>(x) + offset;
    PlaneShare<T, V> share;
    float sum[V] = {};
#pragma unroll
    for (int r = 0; r < kHeldVectors; ++r)
    {
        if (r >= mine)
        {
            break;
        }
        share.held[r] = in[r * step];
    }
#pragma unroll
    for (int r = 0; r < kHeldVectors; ++r)
    {
        if (r >= mine)
        {
            break;
        }
#pragma unroll
        for (int e = 0; e < V; ++e)
        {
            sum[e] += toFloat(share.held[r].v[e]);
        }
    }
    for (int r = kHeldVectors; r < mine; ++r)
    {
        Pack<T, V> const pack = in[r * step];
#pragma unroll
        for (int e = 0; e < V; ++e)
        {
            sum[e] += toFloat(pack.v[e]);
        }
    }
#pragma unroll
    for (int e = 0; e < V; ++e)
    {
        partial[threadIdx.x * V + e] = sum[e];
    }
    if (threadIdx.x < kernelSize)
    {
        taps[threadIdx.x] = tap;
    }
    for (int j = threadIdx.x + blockDim.x; j < kernelSize; j += blockDim.x)
    {
        taps[j] = toFloat(weight[j]);
    }
    __syncthreads();
    float const inverseHw = 1.f / static_cast<float>(hw);
    for (int i = threadIdx.x; i < windowVectors * V; i += blockDim.x)
    {
        int const channel = firstVector * V + i; // window channel i; zero padding outside [0, C)
        float const total = stridedSum(partial + ((i / V) << laneBits) * V + i % V, lanesPerColumn, V);
        means[i] = channel >= 0 && channel < channels ? total * inverseHw : 0.f;
    }
    __syncthreads();
    if (group < haloVectors || group >= haloVectors + tileVectors || vector >= rowPacks)
    {
        return;
    }
    int const halo = (kernelSize - 1) / 2;
    float gate[V];
#pragma unroll
    for (int e = 0; e < V; ++e)
    {
        // channel vector * V + e sits at window position group * V + e; its taps read from halo positions before
        gate[e] = vector * V + e < channels ? tapGate(taps, means + group * V + e - halo, kernelSize) : 0.f;
    }
    Pack<T, V>* out = reinterpret_cast<Pack<T, V>*>(y) + offset;
#pragma unroll
    for (int r = 0; r < kHeldVectors; ++r)
    {
        if (r >= mine)
        {
            break;
        }
        out[r * step] = gated(share.held[r], gate, vector * V, channels);
    }
    for (int r = kHeldVectors; r < mine; ++r)
    {
        out[r * step] = gated(in[r * step], gate, vector * V, channels);
    }
}

} // namespace kernels
} // namespace eca

// Fixed, unmangled names for the QDP AOT path. Argument order follows TensorRT's AOT convention:
// input pointers (x, weight), extra int32 scalars, output pointer (y). The batch is not among them: the grid covers
// it (channel tiles x N blocks).
#define ECA_SINGLE_LAUNCH_KERNEL(NAME, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(eca::kernels::kMaxBlockThreads)                                       \
        NAME(T const* __restrict__ x, T const* __restrict__ weight, int channels, int hw, int kernelSize, int padMode,  \
            int channelsPerBlock, int lanesPerPlane, T* __restrict__ y)                                                \
    {                                                                                                                  \
        eca::kernels::singleLaunchNchw(x, weight, channels, hw, kernelSize, padMode, channelsPerBlock, lanesPerPlane, y); \
    }

ECA_SINGLE_LAUNCH_KERNEL(eca_single_launch_f32, float)
ECA_SINGLE_LAUNCH_KERNEL(eca_single_launch_f16, __half)
ECA_SINGLE_LAUNCH_KERNEL(eca_single_launch_bf16, __nv_bfloat16)

#undef ECA_SINGLE_LAUNCH_KERNEL
