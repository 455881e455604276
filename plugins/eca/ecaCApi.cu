/*
 * Plain C entry points of the fused ECA kernel, for ctypes (eca_deploy/cuda_kernel.py). Enums are
 * passed as their ecaKernel.h codes; the return value is a cudaError_t code (0 on success).
 */
#include "ecaKernel.h"

namespace
{

eca::EcaParams makeParams(int n, int c, int h, int w, int kernelSize, int padMode, int dataType, int layout,
    int pixelStride)
{
    eca::EcaParams params;
    params.n = n;
    params.c = c;
    params.h = h;
    params.w = w;
    params.kernelSize = kernelSize;
    params.padMode = static_cast<eca::PadMode>(padMode);
    params.dataType = static_cast<eca::DataType>(dataType);
    params.layout = static_cast<eca::Layout>(layout);
    params.pixelStride = pixelStride;
    return params;
}

} // namespace

extern "C"
{

//! eca::ecaWorkspaceSize; 0 for invalid parameters.
size_t ecaWorkspaceSizeC(int n, int c, int h, int w, int kernelSize, int padMode, int dataType, int layout,
    int pixelStride)
{
    return eca::ecaWorkspaceSize(makeParams(n, c, h, w, kernelSize, padMode, dataType, layout, pixelStride));
}

//! eca::ecaForward on `stream` (a cudaStream_t).
int ecaForwardC(int n, int c, int h, int w, int kernelSize, int padMode, int dataType, int layout, int pixelStride,
    void const* x, void const* weight, void* y, void* workspace, void* stream)
{
    return static_cast<int>(eca::ecaForward(makeParams(n, c, h, w, kernelSize, padMode, dataType, layout, pixelStride),
        x, weight, y, workspace, static_cast<cudaStream_t>(stream)));
}

//! eca::ecaForwardSingleLaunch (NCHW) with the launch shape the caller computed.
int ecaForwardSingleLaunchC(int n, int c, int h, int w, int kernelSize, int padMode, int dataType,
    int channelsPerBlock, int gridX, int blockX, int sharedBytes, int lanesPerPlane, void const* x, void const* weight,
    void* y, void* stream)
{
    eca::SingleLaunchConfig config;
    config.channelsPerBlock = channelsPerBlock;
    config.gridX = gridX;
    config.blockX = blockX;
    config.sharedBytes = sharedBytes;
    config.lanesPerPlane = lanesPerPlane;
    return static_cast<int>(eca::ecaForwardSingleLaunch(
        makeParams(n, c, h, w, kernelSize, padMode, dataType, static_cast<int>(eca::Layout::kNCHW), 0), config, x,
        weight, y, static_cast<cudaStream_t>(stream)));
}

//! cudaGetErrorString of a code returned above.
char const* ecaErrorStringC(int error)
{
    return cudaGetErrorString(static_cast<cudaError_t>(error));
}

} // extern "C"
