/*
 * kernel_emu runtime: what its sources and the driver share.
 *
 *   memory.cpp     global buffers and per-block shared memory (guard zones, poison, shadow state), the
 *                  access hooks that -fsanitize=kernel-address makes the kernel code call, and
 *                  emuSharedAddress, which places every __shared__ variable in the running block's memory
 *   scheduler.cpp  runs the threads of a block as fibers (fast, every check) or as OS threads (for
 *                  ThreadSanitizer), with barriers and warp shuffles as meeting points
 *   launch.cpp     kernel launches (configuration and shared-memory limits of the emulated device), the
 *                  CUDA runtime API functions and failure reports
 */
#pragma once

#include "emu_device.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace emu
{

//! The checks the emulator makes; a failure report names its check (the tests match these names).
enum class Check
{
    OutOfBounds,       //!< an access touches a guard zone of a buffer
    WildAccess,        //!< device code touches memory that is no buffer, parameter or own stack
    ReadOnlyWrite,     //!< device code writes an input buffer or its parameters
    UninitialisedRead, //!< device code reads bytes nobody wrote (shared memory: in this block)
    SharedRace,        //!< two threads of a block touch the same shared bytes between barriers, one writing
    GuardOverwritten,  //!< a guard zone lost its pattern (a write no hook saw)
    BarrierDivergence, //!< threads of a block at different barriers, or exited while others wait at one
    Shuffle,           //!< a warp shuffle whose lanes do not all take part
    SharedMemoryLimit, //!< a block uses more shared memory than its launch may
    Usage,             //!< the emulator itself was used wrongly
};

inline constexpr int kFailureExit = 3;

//! Print "kernel_emu error [check] message" with the case, kernel, block and thread, then exit(kFailureExit).
[[noreturn]] void fail(Check check, std::string const& message);

//! Shared memory per block of an emulated GPU.
struct Device
{
    char const* name;
    std::size_t optInSharedBytes; //!< static + dynamic shared memory a kernel may opt in to
};

inline constexpr std::size_t kDefaultSharedBytes = 48 * 1024; //!< static + dynamic without an opt-in

//! "sm75", "sm80", "sm86", "sm87" (Orin), "sm89" or "sm90" (H100/H200); fails for others.
Device const& deviceNamed(std::string const& name);

enum class Mode
{
    Fibers,  //!< one OS thread; a CUDA thread runs until a barrier, shuffle or its end
    Threads, //!< one OS thread per CUDA thread, blocks in waves; for ThreadSanitizer
};

//! How launches run; the driver sets it per case and run.
struct Settings
{
    Device device{};
    Mode mode = Mode::Fibers;
    std::uint64_t orderSeed = 0;     //!< 0: blocks and threads in index order; else seeded permutations
    std::uint16_t poisonPattern = 0; //!< two-byte pattern of never-written memory (a NaN in every dtype)
    std::string caseName;            //!< for failure reports
};

Settings& settings();

//! One launch as the host code asked for it.
struct LaunchRecord
{
    std::string kernel;
    dim3 grid;
    dim3 block;
    std::size_t sharedBytes;
    cudaError_t error;
};

std::vector<LaunchRecord>& launchLog();

//! A fresh context: no pending error, no opt-in attributes, an empty launch log.
void resetDevice();

// --- memory.cpp ------------------------------------------------------------------------------------------------

inline constexpr std::size_t kGuardBytes = 256;      //!< on each side of every buffer
inline constexpr std::size_t kDeviceAlignment = 256; //!< what cudaMalloc returns

//! A payload with a guard zone on each side, allocated with the payload `misalignment` bytes past a
//! kDeviceAlignment boundary.
class GuardedMemory
{
public:
    GuardedMemory(std::size_t bytes, std::size_t misalignment);
    ~GuardedMemory();
    GuardedMemory(GuardedMemory const&) = delete;
    GuardedMemory& operator=(GuardedMemory const&) = delete;

    std::byte* data() const { return mPayload; }
    std::size_t size() const { return mBytes; }
    //! Whether [address, address + bytes) meets the payload or a guard zone.
    bool touches(std::uintptr_t address, std::size_t bytes) const;
    //! Whether [address, address + bytes) lies in the payload.
    bool holds(std::uintptr_t address, std::size_t bytes) const;
    //! Offset of the first guard byte that lost its pattern, or -1.
    std::ptrdiff_t damagedGuard() const;

private:
    std::size_t mBytes;
    std::byte* mAllocation;
    std::byte* mPayload;
};

//! Global memory the driver allocates. Device code may read bytes the host uploaded or a kernel wrote,
//! and write unless it is read-only; every byte counts the kernel writes it got since the last poison().
class GlobalBuffer
{
public:
    GlobalBuffer(std::string name, std::size_t bytes, std::size_t misalignment, bool readOnly);
    ~GlobalBuffer();
    GlobalBuffer(GlobalBuffer const&) = delete;
    GlobalBuffer& operator=(GlobalBuffer const&) = delete;

    std::byte* data() const { return mMemory.data(); }
    std::size_t size() const { return mMemory.size(); }
    std::string const& name() const { return mName; }

    void upload(void const* source);
    //! Fill with settings().poisonPattern and forget every write.
    void poison();
    //! Offset of the first byte not written exactly once by kernels since poison(), or -1.
    std::ptrdiff_t firstNotWrittenOnce() const;

    // For the access hooks and launches:
    GuardedMemory const& memory() const { return mMemory; }
    void access(std::uintptr_t address, std::size_t bytes, bool write);

private:
    std::string mName;
    GuardedMemory mMemory;
    bool mReadOnly;
    std::vector<std::uint8_t> mWrites; //!< per byte: 0 never written, kHostWritten, else kernel writes
};

//! A __shared__ variable of the kernel library, from the layout file its build writes.
struct SharedVariable
{
    std::size_t tlsOffset;
    std::size_t bytes;
    bool dynamic; //!< an `extern __shared__` array: the launch's dynamic shared memory
    std::string name;
};

//! Read "offset size static|dynamic name" lines.
void loadSharedLayout(std::string const& path);

class SharedArena;
class BlockRun;

//! A block being run.
struct Block
{
    uint3 index{};
    SharedArena* shared = nullptr;
    std::uint64_t serial = 0;   //!< unique per block run: shared bytes written by an earlier block count as unwritten
    std::uint64_t interval = 0; //!< unique per stretch between two barriers of this block (race check)
};

//! The CUDA thread running on this OS thread.
struct ThreadContext
{
    Block* block = nullptr;
    BlockRun* run = nullptr;     //!< meets the block's other threads at barriers and shuffles
    int thread = 0;              //!< linear index in the block
    std::uintptr_t stackLow = 0; //!< its fiber stack, which the hooks allow (fiber mode)
    std::uintptr_t stackHigh = 0;
    bool checked = false; //!< the hooks check its accesses (fiber mode only: they keep unsynchronised state)
};

extern thread_local ThreadContext* tCurrent;

//! The memory state of one launch: its parameter space and the shared memory of the blocks it runs at once.
class LaunchMemory
{
public:
    LaunchMemory(std::size_t dynamicSharedBytes, std::size_t sharedLimit, void const* params, std::size_t paramBytes,
        int concurrentBlocks);
    ~LaunchMemory();

    //! Shared memory for `block`, the `slot`-th block running at the same time, fresh and poisoned.
    void enter(Block& block, int slot);
    //! Fail if a guard zone of a global buffer or of this launch's shared memory lost its pattern.
    void checkGuards() const;

private:
    std::vector<std::unique_ptr<SharedArena>> mArenas;
};

//! A new unique number for a barrier interval or a block run.
std::uint64_t nextSerial();

//! Accesses the hooks checked since the last call.
std::uint64_t takeCheckedAccesses();

// --- scheduler.cpp ---------------------------------------------------------------------------------------------

//! How many blocks of `block` threads run at once (each needs its own shared memory).
int concurrentBlocks(dim3 block);

//! Run `body(params)` as every thread of every block of `config`, in the order settings() gives.
void runGrid(LaunchConfig const& config, LaunchMemory& memory, void (*body)(void const*), void const* params);

} // namespace emu
