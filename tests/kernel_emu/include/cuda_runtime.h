/*
 * kernel_emu: what nvcc gives CUDA C++ (qualifiers, built-in variables, __syncthreads, warp shuffles,
 * shared memory, kernel launches), as plain C++ for g++. The emulator build includes it before every
 * .cu file, as nvcc does; the runtime behind it lives in tests/kernel_emu/src.
 *
 *   __shared__            thread_local with the global-dynamic TLS model, so every access asks the
 *                         dynamic linker's __tls_get_addr for the address; the build renames that call
 *                         to emuSharedAddress (objcopy), and the runtime answers with the running block's
 *                         own guarded buffer for that variable. Every `extern __shared__` array is the
 *                         launch's dynamic shared memory, exactly the size the launch asked for.
 *   threadIdx, blockIdx,  fields of a per-OS-thread record that the scheduler fills before it runs a
 *   blockDim, gridDim     CUDA thread.
 *   __syncthreads()       a scheduling point: every thread of the block must meet there (same file and
 *                         line), else the runtime reports barrier divergence.
 *   __shfl_xor_sync()     a warp-level meeting point: every lane named by the mask must arrive there.
 *   __popc()              the population count of a 32-bit word.
 *   __expf()              the fast exponential, computed here as expf (the GPU's is less accurate).
 *   kernel<<<g, b, s, st>>>(args)
 *                         rewritten by the build to emu::launch(kernel, g, b, s, st)(args), which runs
 *                         every thread of every block of the grid.
 */
#pragma once

#include "emu_device.h"

#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ thread_local __attribute__((tls_model("global-dynamic")))

#define threadIdx (::emu::builtins.threadIdx)
#define blockIdx (::emu::builtins.blockIdx)
#define blockDim (::emu::builtins.blockDim)
#define gridDim (::emu::builtins.gridDim)
#define __syncthreads() (::emu::syncThreads(__FILE__, __LINE__))
#define __shfl_xor_sync(...) (::emu::shuffleXor(__FILE__, __LINE__, __VA_ARGS__))

inline int __popc(unsigned value)
{
    return __builtin_popcount(value);
}

inline float __expf(float value)
{
    return expf(value);
}
