/*
 * kernel_emu: the declarations behind cuda_runtime.h's built-ins (see there), without the macros that
 * name them, so the emulator runtime can include it too.
 */
#pragma once

#include "cuda_runtime_api.h"

#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3
{
    unsigned x, y, z;
};

struct dim3
{
    unsigned x, y, z;

    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
        : x(x_)
        , y(y_)
        , z(z_)
    {
    }
};

namespace emu
{

//! The built-in variables of the CUDA thread running on this OS thread.
struct Builtins
{
    uint3 threadIdx;
    uint3 blockIdx;
    uint3 blockDim;
    uint3 gridDim;
};

extern __thread Builtins builtins __attribute__((tls_model("initial-exec")));

//! Barrier of the calling thread's block, identified by its source location.
void syncThreads(char const* file, int line);

//! The `bits` of lane (own lane ^ laneMask) of the calling thread's warp; every lane in `mask` must call it
//! at the same source location with the same mask.
std::uint64_t shuffleXorBits(char const* file, int line, unsigned mask, std::uint64_t bits, int laneMask, int width);

template <typename T>
T shuffleXor(char const* file, int line, unsigned mask, T value, int laneMask, int width = 32)
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(std::uint64_t), "shuffle of a 1-8 byte value");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    bits = shuffleXorBits(file, line, mask, bits, laneMask, width);
    T result;
    std::memcpy(&result, &bits, sizeof(T));
    return result;
}

struct LaunchConfig
{
    dim3 grid;
    dim3 block;
    std::size_t sharedBytes;
};

//! Run `body(params)` as every thread of every block of `config` (or record a launch error for
//! cudaGetLastError when the configuration is invalid). `params` (paramBytes long) is the kernel's
//! parameter space: device code may read it, never write it.
void runKernel(void const* kernel, LaunchConfig const& config, void (*body)(void const* params), void const* params,
    std::size_t paramBytes);

//! A configured launch of `kernel`; calling it with the kernel's arguments runs the grid.
template <typename... Params>
class Launch
{
public:
    Launch(void (*kernel)(Params...), LaunchConfig config)
        : mKernel(kernel)
        , mConfig(config)
    {
    }

    template <typename... Args>
    void operator()(Args&&... args) const
    {
        Bound const bound{mKernel, std::tuple<Params...>(std::forward<Args>(args)...)};
        runKernel(reinterpret_cast<void const*>(mKernel), mConfig, &run, &bound, sizeof(bound));
    }

private:
    struct Bound
    {
        void (*kernel)(Params...);
        std::tuple<Params...> params;
    };

    static void run(void const* bound)
    {
        Bound const& self = *static_cast<Bound const*>(bound);
        std::apply(self.kernel, self.params);
    }

    void (*mKernel)(Params...);
    LaunchConfig mConfig;
};

//! What `kernel<<<grid, block, sharedBytes, stream>>>` becomes.
template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t sharedBytes = 0,
    cudaStream_t /*stream*/ = nullptr)
{
    return Launch<Params...>(kernel, LaunchConfig{grid, block, sharedBytes});
}

} // namespace emu
