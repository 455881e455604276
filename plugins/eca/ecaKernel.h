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
    kCHANNELS_LAST = 1, //!< N x H x W x pixelStride, channel c at offset c (NHWC, or HWC8 with pixelStride = roundUp(C, 8))
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
    int32_t pixelStride{0}; //!< channels-last only: elements between pixels (0 means C)
};

//! Bytes of device scratch ecaForward needs for these parameters (pass at least this much).
size_t ecaWorkspaceSize(EcaParams const& params) noexcept;

//! Run the fused operator on `stream`: at most two kernel launches, no allocation, deterministic.
//! x, weight (k taps) and y are device pointers of params.dataType; y may not alias x.
cudaError_t ecaForward(EcaParams const& params, void const* x, void const* weight, void* y, void* workspace,
    cudaStream_t stream) noexcept;

} // namespace eca
