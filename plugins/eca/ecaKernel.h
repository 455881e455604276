/*
 * Fused ECA (Efficient Channel Attention) CUDA kernel: pure CUDA, no TensorRT types.
 *
 *   y[n, c, h, w] = x[n, c, h, w] * sigmoid( sum_j w[j] * mean_hw(x)[n, c + j - (k-1)/2] )
 *
 * with zero ("constant") or circular ("wrap") padding across channels, FP32 accumulation.
 * Used by the TensorRT plugin (ecaPlugin.cpp), the ctypes entry point for PyTorch and the
 * NVRTC/Quickly-Deployable-Plugin path (same source).
 */
#pragma once

#include <cuda_runtime.h>
#include <cstddef>
#include <cstdint>

namespace eca
{

enum class DataType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
    kBF16 = 2,
};

enum class PadMode : int32_t
{
    kCONSTANT = 0, //!< zero padding (the authors' ECA)
    kWRAP = 1,     //!< circular padding (timm's CecaModule)
};

enum class Layout : int32_t
{
    kNCHW = 0,        //!< linear N x C x H x W
    kCHANNELS_LAST = 1, //!< N x H x W x pixelStride, channel c at offset c (NHWC, or HWC8 with
                        //!< pixelStride = roundUp(C, 8)); ecaForward writes zeros to the padding
                        //!< channels [C, pixelStride) of y
};

struct EcaParams
{
    int32_t n{0};
    int32_t c{0};
    int32_t h{0};
    int32_t w{0};
    int32_t kernelSize{1};
    PadMode padMode{PadMode::kCONSTANT};
    DataType dataType{DataType::kFLOAT}; //!< type of x, weight and y
    Layout layout{Layout::kNCHW};
    int32_t pixelStride{0}; //!< channels-last: elements between pixels, >= C (0 means C); NCHW: 0 or C
};

//! Bytes of device scratch ecaForward needs for these parameters (pass at least this much); 0 if
//! they are invalid. It grows with n * c only: the size for the largest shape serves every smaller one.
size_t ecaWorkspaceSize(EcaParams const& params) noexcept;

//! Run the fused operator on `stream`: one kernel launch (NCHW, where the single-launch kernel's plan fits) or two,
//! no allocation, deterministic.
//! x, weight (k taps) and y are device pointers of params.dataType; y may not alias x.
//! Returns cudaErrorInvalidValue for invalid params or null pointers, else cudaGetLastError().
cudaError_t ecaForward(EcaParams const& params, void const* x, void const* weight, void* y, void* workspace,
    cudaStream_t stream) noexcept;

//! Launch shape of the single-launch NCHW kernel (eca_single_launch_{f32,f16,bf16} in ecaKernels.cuh, the kernel
//! TensorRT's Quickly Deployable Plugin AOT path runs and ecaForward runs where it fits), as computed by
//! eca_deploy.tensorrt.nvrtc.single_launch_params: grid (gridX, N, 1), block (blockX, 1, 1).
struct SingleLaunchConfig
{
    int32_t channelsPerBlock{0}; //!< channels of one sample that one block gates
    int32_t gridX{0};            //!< ceil(C / channelsPerBlock); the grid's y is the batch N (at most 65535)
    int32_t blockX{0};           //!< a power of two from 32 to 256
    int32_t sharedBytes{0};      //!< (k + min(channelsPerBlock + k - 1, C)) * 4, at most 48 KiB - 32
    int32_t lanesPerPlane{0};    //!< threads that read one plane together: a power of two, at most blockX
};

//! Run the fused operator as one kernel launch without workspace (NCHW only, H * W < 2^31, N <= 65535), with the
//! given launch shape; checks the shape, so it also validates what the Python side computes for QDP.
cudaError_t ecaForwardSingleLaunch(EcaParams const& params, SingleLaunchConfig const& config, void const* x,
    void const* weight, void* y, cudaStream_t stream) noexcept;

} // namespace eca
