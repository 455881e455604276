/*
 * kernel_emu: the CUDA runtime API that the ECA sources and TensorRT's headers use, for g++ on a CPU.
 * The functions are defined by the emulator runtime (tests/kernel_emu/src/launch.cpp).
 */
#pragma once

#include <cstddef>

//! The codes the ECA host code and its tests use, with CUDA's values.
enum cudaError_t
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
};

enum cudaFuncAttribute
{
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

using cudaStream_t = struct CUstream_st*;
using cudaEvent_t = struct CUevent_st*;

cudaError_t cudaGetLastError();
char const* cudaGetErrorName(cudaError_t error);
char const* cudaGetErrorString(cudaError_t error);
cudaError_t cudaFuncSetAttribute(void const* function, cudaFuncAttribute attribute, int value);

template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attribute, int value)
{
    return cudaFuncSetAttribute(reinterpret_cast<void const*>(entry), attribute, value);
}
