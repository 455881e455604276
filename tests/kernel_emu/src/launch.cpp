/*
 * kernel_emu launches: the configuration checks and shared-memory limits of the emulated device, the CUDA
 * runtime API the sources call, and failure reports.
 *
 * A launch is refused (and its error kept for cudaGetLastError) as CUDA refuses it: block dimensions over
 * 1024 x 1024 x 64 or 1024 threads, grid dimensions over 2^31 - 1 x 65535 x 65535, or more dynamic shared
 * memory than 48 KiB without an opt-in (cudaFuncSetAttribute, at most the device's opt-in limit). A block
 * that then touches static shared memory beyond what is left fails the SharedMemoryLimit check.
 */
#include "runtime.h"

#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>

namespace emu
{
namespace
{

constexpr Device kDevices[]{
    {"sm75", 64 * 1024},  // T4
    {"sm80", 163 * 1024}, // A100
    {"sm86", 99 * 1024},
    {"sm87", 163 * 1024}, // Jetson Orin
    {"sm89", 99 * 1024},
    {"sm90", 227 * 1024}, // H100, H200
};

constexpr unsigned kMaxBlockThreads = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridX = 0x7fffffffu;
constexpr unsigned kMaxGridYZ = 65535;

cudaError_t gLastError = cudaSuccess;
std::map<void const*, std::size_t> gOptIn; //!< kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
std::string gKernel;                       //!< the running kernel, for failure reports

char const* checkName(Check check)
{
    switch (check)
    {
    case Check::OutOfBounds: return "out-of-bounds";
    case Check::WildAccess: return "wild-access";
    case Check::ReadOnlyWrite: return "read-only-write";
    case Check::UninitialisedRead: return "uninitialised-read";
    case Check::SharedRace: return "shared-race";
    case Check::GuardOverwritten: return "guard-overwritten";
    case Check::BarrierDivergence: return "barrier-divergence";
    case Check::Shuffle: return "shuffle";
    case Check::SharedMemoryLimit: return "shared-memory-limit";
    case Check::Usage: return "usage";
    }
    return "unknown";
}

//! "eca::kernels::ecaGateNchw<float>" for a kernel's address.
std::string kernelName(void const* kernel)
{
    Dl_info info{};
    if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr)
    {
        return "<unknown kernel>";
    }
    int status = 0;
    std::unique_ptr<char, decltype(&std::free)> const text(
        abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status), &std::free);
    std::string name = status == 0 ? text.get() : info.dli_sname;
    name = name.substr(0, name.find('('));
    name = name.substr(name.rfind(' ', name.find('<')) + 1); // drop the return type
    name.erase(std::remove(name.begin(), name.end(), ' '), name.end());
    return name;
}

bool within(dim3 d, unsigned maxX, unsigned maxY, unsigned maxZ)
{
    return d.x >= 1 && d.y >= 1 && d.z >= 1 && d.x <= maxX && d.y <= maxY && d.z <= maxZ;
}

cudaError_t checkConfiguration(LaunchConfig const& config, std::size_t sharedLimit)
{
    dim3 const& b = config.block;
    bool const block = within(b, kMaxBlockThreads, kMaxBlockThreads, kMaxBlockZ)
        && static_cast<unsigned long long>(b.x) * b.y * b.z <= kMaxBlockThreads;
    if (!block || !within(config.grid, kMaxGridX, kMaxGridYZ, kMaxGridYZ))
    {
        return cudaErrorInvalidConfiguration;
    }
    return config.sharedBytes <= sharedLimit ? cudaSuccess : cudaErrorInvalidValue;
}

} // namespace

Settings& settings()
{
    static Settings instance = [] {
        Settings initial;
        initial.device = deviceNamed("sm90");
        return initial;
    }();
    return instance;
}

std::vector<LaunchRecord>& launchLog()
{
    static std::vector<LaunchRecord> log;
    return log;
}

Device const& deviceNamed(std::string const& name)
{
    for (Device const& device : kDevices)
    {
        if (name == device.name)
        {
            return device;
        }
    }
    fail(Check::Usage, "unknown device '" + name + "'");
}

void resetDevice()
{
    gLastError = cudaSuccess;
    gOptIn.clear();
    launchLog().clear();
}

void fail(Check check, std::string const& message)
{
    std::string context = "case " + settings().caseName;
    if (!gKernel.empty())
    {
        context += ", kernel " + gKernel;
    }
    if (tCurrent != nullptr)
    {
        Builtins const& b = builtins;
        context += ", block (" + std::to_string(b.blockIdx.x) + "," + std::to_string(b.blockIdx.y) + ","
            + std::to_string(b.blockIdx.z) + "), thread (" + std::to_string(b.threadIdx.x) + ","
            + std::to_string(b.threadIdx.y) + "," + std::to_string(b.threadIdx.z) + ")";
    }
    std::fprintf(stderr, "kernel_emu error [%s] %s (%s)\n", checkName(check), message.c_str(), context.c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(kFailureExit);
}

void runKernel(void const* kernel, LaunchConfig const& config, void (*body)(void const*), void const* params,
    std::size_t paramBytes)
{
    auto const optIn = gOptIn.find(kernel);
    bool const optedIn = optIn != gOptIn.end();
    cudaError_t const error = checkConfiguration(config, optedIn ? optIn->second : kDefaultSharedBytes);
    launchLog().push_back(LaunchRecord{kernelName(kernel), config.grid, config.block, config.sharedBytes, error});
    if (error != cudaSuccess)
    {
        gLastError = error;
        return;
    }
    gKernel = launchLog().back().kernel;
    LaunchMemory memory(config.sharedBytes, optedIn ? settings().device.optInSharedBytes : kDefaultSharedBytes, params,
        paramBytes, concurrentBlocks(config.block));
    runGrid(config, memory, body, params);
    memory.checkGuards();
    gKernel.clear();
}

} // namespace emu

cudaError_t cudaGetLastError()
{
    cudaError_t const error = emu::gLastError;
    emu::gLastError = cudaSuccess;
    return error;
}

char const* cudaGetErrorName(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    }
    return "cudaErrorUnknown";
}

char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    }
    return "unknown error";
}

cudaError_t cudaFuncSetAttribute(void const* function, cudaFuncAttribute attribute, int value)
{
    bool const valid = attribute == cudaFuncAttributeMaxDynamicSharedMemorySize && value >= 0
        && static_cast<std::size_t>(value) <= emu::settings().device.optInSharedBytes;
    if (!valid)
    {
        emu::gLastError = cudaErrorInvalidValue;
        return cudaErrorInvalidValue;
    }
    emu::gOptIn[function] = static_cast<std::size_t>(value);
    return cudaSuccess;
}
