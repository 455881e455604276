/*
 * kernel_emu: what the driver hands the plugin bridge (a separate library built with TensorRT's headers).
 */
#pragma once

#include <cstddef>

//! One case for EcaPlugin: x of shape N x C x H x W in `format`, weight of kernelSize taps.
struct EmuPluginCase
{
    int n, c, h, w;
    int kernelSize;
    char const* padMode;    //!< the plugin field's value: "constant" or "wrap"
    int dataType;           //!< 0 FP32, 1 FP16, 2 BF16
    int channelsLast;       //!< 0 kLINEAR; 1 kHWC (FP32) or kHWC8 (FP16, BF16)
    int maxN, maxH, maxW;   //!< the optimisation profile's largest shape, for getWorkspaceSize
};

extern "C"
{
//! Create the plugin through its creator, check and configure it as TensorRT's builder does, and return
//! getWorkspaceSize() for the profile's largest shape; or -1 when a step fails (logged to stderr).
long long emuPluginWorkspaceSize(EmuPluginCase const* plugin);

//! onShapeChange() and enqueue() for the case's own shape, as an execution context does; their status.
int emuPluginEnqueue(EmuPluginCase const* plugin, void const* x, void const* weight, void* y, void* workspace);
}
