/*
 * Driver of scripts/sim_eca_kernel.py: runs one variant of the ECA layer once, on data from a file, in a
 * cycle-level GPU simulator (GPGPU-Sim links in place of libcudart; it also runs on a real GPU).
 *
 *   sim_eca_kernel VARIANT DTYPE LAYOUT N C H W K PAD INPUT OUTPUT [PER_BLOCK GRID BLOCK SHARED LANES]
 *
 * VARIANT   ours    eca::ecaForward (plugins/eca, included below unchanged)
 *           single  eca::ecaForwardSingleLaunch with the launch shape given by the last five arguments
 *           naive   four plain kernels as PyTorch eager launches the layer: mean over H x W, conv1d across
 *                   channels, sigmoid, broadcast multiply (one element per thread)
 *           copy    y = x with 16-byte vectors: the same bytes read and written, no arithmetic
 * DTYPE     0 float, 1 half, 2 bfloat16 (eca::DataType); LAYOUT 0 NCHW, 1 channels-last (eca::Layout)
 * PAD       0 zero padding, 1 circular (eca::PadMode)
 * INPUT     x (in LAYOUT) then the K taps, in DTYPE; OUTPUT receives y.
 * Prints "sim_eca_kernel: ok" or one error line and exits non-zero.
 */
#include "ecaKernel.cu"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace
{

using eca::kernels::index_t;
using eca::kernels::toFloat;
using eca::kernels::fromFloat;

constexpr int kThreads = 256;
constexpr int kMeanRows = 64; //!< pixels a block of the naive channels-last mean sums

//! Mean of each (n, c) plane of an NCHW x: one block per plane, strided loads, shared-memory tree.
template <typename T>
__global__ void naiveMeanNchw(T const* x, float* means, int hw)
{
    __shared__ float partial[kThreads];
    T const* plane = x + static_cast<index_t>(blockIdx.x) * hw;
    float sum = 0.f;
    for (int i = threadIdx.x; i < hw; i += blockDim.x)
    {
        sum += toFloat(plane[i]);
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2)
    {
        if (threadIdx.x < stride)
        {
            partial[threadIdx.x] += partial[threadIdx.x + stride];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0)
    {
        means[blockIdx.x] = partial[0] / hw;
    }
}

//! Mean of every channel of a channels-last x, as PyTorch's reduction splits it: block (32 channels, 8 pixel rows) per
//! 32-channel tile and chunk of kMeanRows pixels of a sample, its sums (over hw) added atomically into means, which
//! the caller zeroes (cudaMemset, which the simulator does not time).
template <typename T>
__global__ void naiveMeanChannelsLast(T const* x, float* means, int channels, int hw)
{
    __shared__ float partial[8][32];
    int const tiles = (channels + 31) / 32;
    int const n = blockIdx.y / tiles;
    int const c = blockIdx.y % tiles * 32 + threadIdx.x;
    int const end = min(hw, static_cast<int>(blockIdx.x + 1) * kMeanRows);
    float sum = 0.f;
    if (c < channels)
    {
        for (int p = blockIdx.x * kMeanRows + threadIdx.y; p < end; p += blockDim.y)
        {
            sum += toFloat(x[(static_cast<index_t>(n) * hw + p) * channels + c]);
        }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels)
    {
        float total = 0.f;
        for (int row = 0; row < 8; ++row)
        {
            total += partial[row][threadIdx.x];
        }
        atomicAdd(means + n * channels + c, total / hw);
    }
}

//! z[n, c] = sum_j w[j] * means[n, c + j - (k-1)/2], zero or circular padding: one thread per output.
template <typename T>
__global__ void naiveConv1d(float const* means, T const* weight, float* z, int samples, int channels, int k, int pad)
{
    int const i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= samples * channels)
    {
        return;
    }
    int const n = i / channels;
    int const c = i % channels;
    float sum = 0.f;
    for (int j = 0; j < k; ++j)
    {
        int ch = c + j - (k - 1) / 2;
        if (pad == 0 && (ch < 0 || ch >= channels))
        {
            continue;
        }
        ch = ((ch % channels) + channels) % channels;
        sum += toFloat(weight[j]) * means[n * channels + ch];
    }
    z[i] = sum;
}

__global__ void naiveSigmoid(float const* z, float* gates, int count)
{
    int const i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count)
    {
        gates[i] = 1.f / (1.f + expf(-z[i]));
    }
}

//! y = x * gate of the element's (n, c): one element per thread.
template <typename T>
__global__ void naiveScale(T const* x, float const* gates, T* y, index_t total, int channels, int hw, int channelsLast)
{
    index_t const i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= total)
    {
        return;
    }
    index_t const plane = channelsLast ? i / (static_cast<index_t>(hw) * channels) * channels + i % channels : i / hw;
    y[i] = fromFloat<T>(toFloat(x[i]) * gates[plane]);
}

__global__ void copyVectors(uint4 const* x, uint4* y, index_t count)
{
    index_t const i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count)
    {
        y[i] = x[i];
    }
}

unsigned blocksFor(index_t count)
{
    return static_cast<unsigned>((count + kThreads - 1) / kThreads);
}

template <typename T>
void naive(eca::EcaParams const& p, T const* x, T const* weight, T* y, float* scratch)
{
    int const planes = p.n * p.c;
    int const hw = p.h * p.w;
    float* means = scratch;
    float* z = scratch + planes;
    float* gates = scratch + 2 * planes;
    bool const channelsLast = p.layout == eca::Layout::kCHANNELS_LAST;
    if (channelsLast)
    {
        cudaMemset(means, 0, planes * sizeof(float));
        dim3 const grid((hw + kMeanRows - 1) / kMeanRows, p.n * ((p.c + 31) / 32));
        naiveMeanChannelsLast<T><<<grid, dim3(32, 8)>>>(x, means, p.c, hw);
    }
    else
    {
        naiveMeanNchw<T><<<planes, kThreads>>>(x, means, hw);
    }
    naiveConv1d<T><<<blocksFor(planes), kThreads>>>(means, weight, z, p.n, p.c, p.kernelSize,
        static_cast<int>(p.padMode));
    naiveSigmoid<<<blocksFor(planes), kThreads>>>(z, gates, planes);
    index_t const total = static_cast<index_t>(planes) * hw;
    naiveScale<T><<<blocksFor(total), kThreads>>>(x, gates, y, total, p.c, hw, channelsLast ? 1 : 0);
}

int fail(char const* what)
{
    std::printf("sim_eca_kernel: error: %s\n", what);
    return 1;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 12 && argc != 17)
    {
        return fail("usage: VARIANT DTYPE LAYOUT N C H W K PAD INPUT OUTPUT [PER_BLOCK GRID BLOCK SHARED LANES]");
    }
    std::string const variant = argv[1];
    eca::EcaParams p;
    p.dataType = static_cast<eca::DataType>(std::atoi(argv[2]));
    p.layout = static_cast<eca::Layout>(std::atoi(argv[3]));
    p.n = std::atoi(argv[4]);
    p.c = std::atoi(argv[5]);
    p.h = std::atoi(argv[6]);
    p.w = std::atoi(argv[7]);
    p.kernelSize = std::atoi(argv[8]);
    p.padMode = static_cast<eca::PadMode>(std::atoi(argv[9]));
    size_t const element = p.dataType == eca::DataType::kFLOAT ? 4 : 2;
    size_t const xBytes = static_cast<size_t>(p.n) * p.c * p.h * p.w * element;
    size_t const weightBytes = static_cast<size_t>(p.kernelSize) * element;

    std::vector<char> host(xBytes + weightBytes);
    FILE* in = std::fopen(argv[10], "rb");
    if (in == nullptr || std::fread(host.data(), 1, host.size(), in) != host.size())
    {
        return fail("cannot read the input file");
    }
    std::fclose(in);

    void *x = nullptr, *weight = nullptr, *y = nullptr, *workspace = nullptr;
    size_t const workspaceBytes = std::max(eca::ecaWorkspaceSize(p), static_cast<size_t>(3) * p.n * p.c * 4);
    if (cudaMalloc(&x, xBytes) != cudaSuccess || cudaMalloc(&weight, weightBytes) != cudaSuccess
        || cudaMalloc(&y, xBytes) != cudaSuccess || cudaMalloc(&workspace, workspaceBytes) != cudaSuccess)
    {
        return fail("cudaMalloc failed");
    }
    cudaMemcpy(x, host.data(), xBytes, cudaMemcpyHostToDevice);
    cudaMemcpy(weight, host.data() + xBytes, weightBytes, cudaMemcpyHostToDevice);
    cudaMemset(y, 0xff, xBytes); // NaN in every dtype: an unwritten output fails the check

    cudaError_t status = cudaSuccess;
    if (variant == "ours")
    {
        status = eca::ecaForward(p, x, weight, y, workspace, nullptr);
    }
    else if (variant == "single" && argc == 17)
    {
        eca::SingleLaunchConfig config;
        config.channelsPerBlock = std::atoi(argv[12]);
        config.gridX = std::atoi(argv[13]);
        config.blockX = std::atoi(argv[14]);
        config.sharedBytes = std::atoi(argv[15]);
        config.lanesPerPlane = std::atoi(argv[16]);
        status = eca::ecaForwardSingleLaunch(p, config, x, weight, y, nullptr);
    }
    else if (variant == "naive")
    {
        float* scratch = static_cast<float*>(workspace);
        switch (p.dataType)
        {
        case eca::DataType::kFLOAT:
            naive(p, static_cast<float const*>(x), static_cast<float const*>(weight), static_cast<float*>(y), scratch);
            break;
        case eca::DataType::kHALF:
            naive(p, static_cast<__half const*>(x), static_cast<__half const*>(weight), static_cast<__half*>(y), scratch);
            break;
        case eca::DataType::kBF16:
            naive(p, static_cast<__nv_bfloat16 const*>(x), static_cast<__nv_bfloat16 const*>(weight),
                static_cast<__nv_bfloat16*>(y), scratch);
            break;
        }
        status = cudaGetLastError();
    }
    else if (variant == "copy")
    {
        index_t const vectors = static_cast<index_t>(xBytes / sizeof(uint4));
        if (vectors * sizeof(uint4) != xBytes)
        {
            return fail("the copy kernel needs a multiple of 16 bytes");
        }
        copyVectors<<<blocksFor(vectors), kThreads>>>(static_cast<uint4 const*>(x), static_cast<uint4*>(y), vectors);
        status = cudaGetLastError();
    }
    else
    {
        return fail("unknown variant (or single without its launch shape)");
    }
    if (status != cudaSuccess)
    {
        return fail(cudaGetErrorString(status));
    }
    if (cudaDeviceSynchronize() != cudaSuccess || cudaMemcpy(host.data(), y, xBytes, cudaMemcpyDeviceToHost) != cudaSuccess)
    {
        return fail("the kernels failed");
    }
    FILE* out = std::fopen(argv[11], "wb");
    if (out == nullptr || std::fwrite(host.data(), 1, xBytes, out) != xBytes)
    {
        return fail("cannot write the output file");
    }
    std::fclose(out);
    std::printf("sim_eca_kernel: ok\n");
    return 0;
}
