/*
 * kernel_emu memory: guarded global buffers, per-block shared memory, the access hooks and emuSharedAddress.
 *
 * The checked build compiles the kernel library with -fsanitize=kernel-address and out-of-line
 * instrumentation, so every load and store the compiler keeps in memory calls __asan_{load,store}N_noabort
 * here first. While a fiber runs a CUDA thread, an access must lie in the thread's own stack, the built-in
 * variables (read only), the launch's parameters (read only), the block's shared memory or a global buffer;
 * it may not touch a guard zone; a read needs bytes that were written (global memory: by the host or a
 * kernel; shared memory: by this block); and two threads may not touch the same shared bytes between two
 * barriers unless both only read (compute-sanitizer's racecheck, but exact for every schedule).
 */
#include "runtime.h"

#include <cxxabi.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace emu
{

thread_local ThreadContext* tCurrent = nullptr;
__thread Builtins builtins;

namespace
{

constexpr std::byte kGuardByte{0xa5};
constexpr std::uint8_t kHostWritten = 0xff;      //!< GlobalBuffer write count of uploaded bytes
constexpr std::uint8_t kMaxKernelWrites = 0xfe;  //!< write counts saturate here
constexpr std::size_t kSharedAlignment = 16;     //!< of every shared variable and of dynamic shared memory
constexpr std::uint16_t kNoThread = 0xffff;
constexpr std::uint16_t kManyThreads = 0xfffe;

std::size_t roundUp(std::size_t value, std::size_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

std::string demangled(std::string const& name)
{
    int status = 0;
    std::unique_ptr<char, decltype(&std::free)> const text(
        abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), &std::free);
    return status == 0 ? std::string(text.get()) : name;
}

void poisonGuard(std::byte* begin, std::size_t bytes)
{
    std::memset(begin, static_cast<int>(kGuardByte), bytes);
#if defined(__SANITIZE_ADDRESS__)
    ASAN_POISON_MEMORY_REGION(begin, bytes);
#endif
}

void fillPattern(std::byte* begin, std::size_t bytes)
{
    std::uint16_t const pattern = settings().poisonPattern;
    for (std::size_t i = 0; i < bytes; ++i)
    {
        begin[i] = static_cast<std::byte>(pattern >> (8 * (i % 2)));
    }
}

//! Offset of the first byte of [begin, begin + bytes) that is not the guard pattern, or -1.
std::ptrdiff_t firstDamaged(std::byte const* begin, std::size_t bytes)
{
#if defined(__SANITIZE_ADDRESS__)
    static_cast<void>(begin);
    static_cast<void>(bytes);
    return -1; // AddressSanitizer reports every access to a guard zone itself
#else
    for (std::size_t i = 0; i < bytes; ++i)
    {
        if (begin[i] != kGuardByte)
        {
            return static_cast<std::ptrdiff_t>(i);
        }
    }
    return -1;
#endif
}

std::vector<GlobalBuffer*> gGlobals;
std::uint64_t gCheckedAccesses = 0;
std::vector<SharedVariable> gSharedVariables; //!< sorted by TLS offset
std::vector<int> gVariableAt;                 //!< TLS offset -> index in gSharedVariables, or -1
std::uintptr_t gParamsBegin = 0;
std::uintptr_t gParamsEnd = 0;

std::string describeAccess(std::size_t bytes, bool write)
{
    return std::string(write ? "write" : "read") + " of " + std::to_string(bytes) + " bytes";
}

} // namespace

std::uint64_t takeCheckedAccesses()
{
    return std::exchange(gCheckedAccesses, 0);
}

std::uint64_t nextSerial()
{
    static std::atomic<std::uint64_t> serial{0};
    return ++serial;
}

// --- GuardedMemory ---------------------------------------------------------------------------------------------

GuardedMemory::GuardedMemory(std::size_t bytes, std::size_t misalignment)
    : mBytes(bytes)
{
    std::size_t const front = kGuardBytes + misalignment;
    mAllocation = static_cast<std::byte*>(
        std::aligned_alloc(kDeviceAlignment, roundUp(front + bytes + kGuardBytes, kDeviceAlignment)));
    if (mAllocation == nullptr)
    {
        fail(Check::Usage, "out of host memory for a " + std::to_string(bytes) + "-byte buffer");
    }
    mPayload = mAllocation + front;
    poisonGuard(mAllocation, front);
    poisonGuard(mPayload + bytes, kGuardBytes);
}

GuardedMemory::~GuardedMemory()
{
#if defined(__SANITIZE_ADDRESS__)
    ASAN_UNPOISON_MEMORY_REGION(mAllocation, mPayload - mAllocation + mBytes + kGuardBytes);
#endif
    std::free(mAllocation);
}

bool GuardedMemory::touches(std::uintptr_t address, std::size_t bytes) const
{
    auto const begin = reinterpret_cast<std::uintptr_t>(mAllocation);
    auto const end = reinterpret_cast<std::uintptr_t>(mPayload + mBytes + kGuardBytes);
    return address < end && address + bytes > begin;
}

bool GuardedMemory::holds(std::uintptr_t address, std::size_t bytes) const
{
    auto const begin = reinterpret_cast<std::uintptr_t>(mPayload);
    return address >= begin && address + bytes <= begin + mBytes;
}

std::ptrdiff_t GuardedMemory::damagedGuard() const
{
    std::ptrdiff_t const front = firstDamaged(mAllocation, mPayload - mAllocation);
    if (front >= 0)
    {
        return front;
    }
    std::ptrdiff_t const back = firstDamaged(mPayload + mBytes, kGuardBytes);
    return back >= 0 ? (mPayload - mAllocation) + static_cast<std::ptrdiff_t>(mBytes) + back : -1;
}

// --- GlobalBuffer ----------------------------------------------------------------------------------------------

GlobalBuffer::GlobalBuffer(std::string name, std::size_t bytes, std::size_t misalignment, bool readOnly)
    : mName(std::move(name))
    , mMemory(bytes, misalignment)
    , mReadOnly(readOnly)
    , mWrites(bytes, 0)
{
    gGlobals.push_back(this);
}

GlobalBuffer::~GlobalBuffer()
{
    gGlobals.erase(std::find(gGlobals.begin(), gGlobals.end(), this));
}

void GlobalBuffer::upload(void const* source)
{
    std::memcpy(data(), source, size());
    std::fill(mWrites.begin(), mWrites.end(), kHostWritten);
}

void GlobalBuffer::poison()
{
    fillPattern(data(), size());
    std::fill(mWrites.begin(), mWrites.end(), 0);
}

std::ptrdiff_t GlobalBuffer::firstNotWrittenOnce() const
{
    auto const found = std::find_if(mWrites.begin(), mWrites.end(), [](std::uint8_t count) { return count != 1; });
    return found == mWrites.end() ? -1 : found - mWrites.begin();
}

void GlobalBuffer::access(std::uintptr_t address, std::size_t bytes, bool write)
{
    std::ptrdiff_t const offset = static_cast<std::ptrdiff_t>(address - reinterpret_cast<std::uintptr_t>(data()));
    auto const where = [&] {
        return describeAccess(bytes, write) + " at byte " + std::to_string(offset) + " of global buffer '" + mName
            + "' (" + std::to_string(size()) + " bytes)";
    };
    if (!mMemory.holds(address, bytes))
    {
        fail(Check::OutOfBounds, where());
    }
    std::uint8_t* const counts = mWrites.data() + offset;
    if (write)
    {
        if (mReadOnly)
        {
            fail(Check::ReadOnlyWrite, where());
        }
        for (std::size_t i = 0; i < bytes; ++i)
        {
            counts[i] = counts[i] == kHostWritten ? kHostWritten : std::min<std::uint8_t>(counts[i] + 1, kMaxKernelWrites);
        }
        return;
    }
    if (std::find(counts, counts + bytes, 0) != counts + bytes)
    {
        fail(Check::UninitialisedRead, where() + ": never written");
    }
}

// --- Shared memory ---------------------------------------------------------------------------------------------

void loadSharedLayout(std::string const& path)
{
    std::ifstream file(path);
    if (!file)
    {
        fail(Check::Usage, "cannot read the shared-memory layout " + path);
    }
    gSharedVariables.clear();
    std::string line;
    while (std::getline(file, line))
    {
        std::istringstream fields(line);
        SharedVariable variable{};
        std::string kind;
        if (!(fields >> variable.tlsOffset >> variable.bytes >> kind >> variable.name)
            || (kind != "static" && kind != "dynamic"))
        {
            fail(Check::Usage, path + ": bad line '" + line + "'");
        }
        variable.dynamic = kind == "dynamic";
        variable.name = demangled(variable.name);
        gSharedVariables.push_back(variable);
    }
    std::sort(gSharedVariables.begin(), gSharedVariables.end(),
        [](SharedVariable const& a, SharedVariable const& b) { return a.tlsOffset < b.tlsOffset; });
    gVariableAt.assign(gSharedVariables.empty() ? 0 : gSharedVariables.back().tlsOffset + 1, -1);
    for (std::size_t i = 0; i < gSharedVariables.size(); ++i)
    {
        gVariableAt[gSharedVariables[i].tlsOffset] = static_cast<int>(i);
    }
}

//! What a launch may use: static shared memory is counted as blocks first touch each variable.
struct SharedBudget
{
    std::size_t limit;
    std::size_t dynamicBytes;
    std::size_t staticBytes = 0;
    std::vector<bool> touched = std::vector<bool>(gSharedVariables.size(), false);
};

/*
 * The shared memory of one running block: every static __shared__ variable of the library and the dynamic
 * shared memory, each in its own slot with guard zones in between, and per byte the block run that last
 * wrote it and who touched it in the current barrier interval.
 */
class SharedArena
{
public:
    SharedArena(SharedBudget& budget)
        : mBudget(budget)
    {
        std::size_t offset = kGuardBytes;
        for (SharedVariable const& variable : gSharedVariables)
        {
            if (variable.dynamic)
            {
                mSlotOf.push_back(kDynamicSlot);
                continue;
            }
            mSlotOf.push_back(mSlots.size());
            mSlots.push_back(Slot{offset, variable.bytes, &variable});
            offset = roundUp(offset + variable.bytes + kGuardBytes, kSharedAlignment);
        }
        mSlots.push_back(Slot{offset, budget.dynamicBytes, nullptr});
        mHandedOut = std::make_unique<std::atomic<bool>[]>(mSlots.size());
        std::for_each(mHandedOut.get(), mHandedOut.get() + mSlots.size(), [](auto& flag) { flag = true; });
        mBytes = offset + budget.dynamicBytes + kGuardBytes;
        mMemory = std::make_unique<GuardedMemory>(mBytes, 0);
        mShadow.resize(mBytes);
        std::size_t guardBegin = 0;
        for (Slot const& slot : mSlots)
        {
            poisonGuard(base() + guardBegin, slot.offset - guardBegin);
            guardBegin = slot.offset + slot.bytes;
        }
        poisonGuard(base() + guardBegin, mBytes - guardBegin);
    }

    //! A new block: poison every slot handed out since the last poison() (the shadow state knows bytes
    //! written by earlier blocks by their serial).
    void poison()
    {
        for (std::size_t slot = 0; slot < mSlots.size(); ++slot)
        {
            if (mHandedOut[slot].exchange(false, std::memory_order_relaxed))
            {
                fillPattern(base() + mSlots[slot].offset, mSlots[slot].bytes);
            }
        }
    }

    //! Where the variable at `tlsOffset` lives for this block.
    std::byte* address(std::size_t tlsOffset) const
    {
        int const variable = tlsOffset < gVariableAt.size() ? gVariableAt[tlsOffset] : -1;
        if (variable < 0)
        {
            fail(Check::Usage, "TLS offset " + std::to_string(tlsOffset) + " is no __shared__ variable of the layout");
        }
        std::size_t slot = mSlotOf[static_cast<std::size_t>(variable)];
        slot = slot == kDynamicSlot ? mSlots.size() - 1 : slot;
        mHandedOut[slot].store(true, std::memory_order_relaxed); // threads mode: many OS threads ask at once
        return base() + mSlots[slot].offset;
    }

    bool touches(std::uintptr_t address, std::size_t bytes) const { return mMemory->touches(address, bytes); }

    void access(std::uintptr_t address, std::size_t bytes, bool write, ThreadContext const& thread)
    {
        std::size_t const at = address - reinterpret_cast<std::uintptr_t>(base());
        auto const after = std::upper_bound(mSlots.begin(), mSlots.end(), at,
            [](std::size_t offset, Slot const& slot) { return offset < slot.offset; });
        Slot const* const slot = after == mSlots.begin() ? nullptr : &*(after - 1);
        auto const where = [&] {
            Slot const& named = slot ? *slot : mSlots.front();
            return describeAccess(bytes, write) + " at byte "
                + std::to_string(static_cast<std::ptrdiff_t>(at) - static_cast<std::ptrdiff_t>(named.offset)) + " of "
                + slotName(named);
        };
        if (slot == nullptr || at + bytes > slot->offset + slot->bytes)
        {
            fail(Check::OutOfBounds, where());
        }
        budget(*slot);
        auto const self = static_cast<std::uint16_t>(thread.thread);
        for (std::size_t i = at; i < at + bytes; ++i)
        {
            ShadowByte& shadow = mShadow[i];
            bool const sameInterval = shadow.interval == thread.block->interval;
            if (!write && shadow.writtenIn != thread.block->serial)
            {
                fail(Check::UninitialisedRead, where() + ": never written in this block");
            }
            std::uint16_t const other = otherThread(shadow, sameInterval, self, write);
            if (other != kNoThread)
            {
                fail(Check::SharedRace, where() + " by thread " + std::to_string(self) + " conflicts with "
                        + (other == kManyThreads ? std::string("reads by several threads")
                                                 : "an access by thread " + std::to_string(other))
                        + " since the last __syncthreads()");
            }
            if (!sameInterval)
            {
                shadow = ShadowByte{shadow.writtenIn, thread.block->interval, kNoThread, kNoThread};
            }
            if (write)
            {
                shadow.writer = self;
                shadow.writtenIn = thread.block->serial;
            }
            else
            {
                shadow.reader = shadow.reader == kNoThread || shadow.reader == self ? self : kManyThreads;
            }
        }
    }

    std::ptrdiff_t damagedGuard() const
    {
        std::size_t guardBegin = 0;
        for (Slot const& slot : mSlots)
        {
            std::ptrdiff_t const damaged = firstDamaged(base() + guardBegin, slot.offset - guardBegin);
            if (damaged >= 0)
            {
                return static_cast<std::ptrdiff_t>(guardBegin) + damaged;
            }
            guardBegin = slot.offset + slot.bytes;
        }
        std::ptrdiff_t const damaged = firstDamaged(base() + guardBegin, mBytes - guardBegin);
        return damaged >= 0 ? static_cast<std::ptrdiff_t>(guardBegin) + damaged : -1;
    }

private:
    static constexpr std::size_t kDynamicSlot = std::numeric_limits<std::size_t>::max();

    struct Slot
    {
        std::size_t offset;
        std::size_t bytes;
        SharedVariable const* variable; //!< nullptr: dynamic shared memory
    };

    struct ShadowByte
    {
        std::uint64_t writtenIn = 0; //!< serial of the block run that last wrote it
        std::uint64_t interval = 0;  //!< barrier interval of writer and reader
        std::uint16_t writer = kNoThread;
        std::uint16_t reader = kNoThread; //!< kManyThreads once two threads read it
    };

    std::byte* base() const { return mMemory->data(); }

    static std::string slotName(Slot const& slot)
    {
        return slot.variable ? "shared variable '" + slot.variable->name + "' (" + std::to_string(slot.bytes) + " bytes)"
                             : "dynamic shared memory (" + std::to_string(slot.bytes) + " bytes)";
    }

    //! Another thread whose access in this interval conflicts with this one, or kNoThread.
    static std::uint16_t otherThread(ShadowByte const& shadow, bool sameInterval, std::uint16_t self, bool write)
    {
        if (!sameInterval)
        {
            return kNoThread;
        }
        if (shadow.writer != kNoThread && shadow.writer != self)
        {
            return shadow.writer;
        }
        return write && shadow.reader != kNoThread && shadow.reader != self ? shadow.reader : kNoThread;
    }

    //! Count a static variable against the launch's shared memory when a block first touches it.
    void budget(Slot const& slot)
    {
        if (slot.variable == nullptr)
        {
            return;
        }
        std::size_t const index = slot.variable - gSharedVariables.data();
        if (mBudget.touched[index])
        {
            return;
        }
        mBudget.touched[index] = true;
        mBudget.staticBytes += slot.bytes;
        if (mBudget.staticBytes + mBudget.dynamicBytes > mBudget.limit)
        {
            fail(Check::SharedMemoryLimit, std::to_string(mBudget.staticBytes) + " bytes of static and "
                    + std::to_string(mBudget.dynamicBytes) + " bytes of dynamic shared memory exceed the "
                    + std::to_string(mBudget.limit) + " bytes this launch may use on " + settings().device.name);
        }
    }

    SharedBudget& mBudget;
    std::vector<Slot> mSlots; //!< by offset; the last one is the dynamic shared memory
    std::vector<std::size_t> mSlotOf; //!< per variable of gSharedVariables
    std::unique_ptr<std::atomic<bool>[]> mHandedOut; //!< per slot: its address was given out since poison()
    std::size_t mBytes = 0;
    std::unique_ptr<GuardedMemory> mMemory;
    std::vector<ShadowByte> mShadow;
};

// --- LaunchMemory ----------------------------------------------------------------------------------------------

namespace
{
std::unique_ptr<SharedBudget> gBudget;
} // namespace

LaunchMemory::LaunchMemory(std::size_t dynamicSharedBytes, std::size_t sharedLimit, void const* params,
    std::size_t paramBytes, int concurrentBlocks)
{
    gBudget = std::make_unique<SharedBudget>(SharedBudget{sharedLimit, dynamicSharedBytes});
    for (int i = 0; i < concurrentBlocks; ++i)
    {
        mArenas.push_back(std::make_unique<SharedArena>(*gBudget));
    }
    gParamsBegin = reinterpret_cast<std::uintptr_t>(params);
    gParamsEnd = gParamsBegin + paramBytes;
}

LaunchMemory::~LaunchMemory()
{
    gParamsBegin = gParamsEnd = 0;
    mArenas.clear();
    gBudget.reset();
}

void LaunchMemory::enter(Block& block, int slot)
{
    block.serial = nextSerial();
    block.interval = nextSerial();
    block.shared = mArenas.at(slot).get();
    block.shared->poison();
}

void LaunchMemory::checkGuards() const
{
    for (GlobalBuffer const* buffer : gGlobals)
    {
        std::ptrdiff_t const damaged = buffer->memory().damagedGuard();
        if (damaged >= 0)
        {
            fail(Check::GuardOverwritten, "byte " + std::to_string(damaged) + " of the guard zones of global buffer '"
                    + buffer->name() + "' changed");
        }
    }
    for (auto const& arena : mArenas)
    {
        std::ptrdiff_t const damaged = arena->damagedGuard();
        if (damaged >= 0)
        {
            fail(Check::GuardOverwritten, "byte " + std::to_string(damaged) + " of the shared memory arena, a guard "
                    "zone, changed");
        }
    }
}

// --- Access hooks ----------------------------------------------------------------------------------------------

namespace
{

void onAccess(std::uintptr_t address, std::size_t bytes, bool write)
{
    ThreadContext const* const thread = tCurrent;
    if (thread == nullptr || !thread->checked)
    {
        return; // host code, or a mode without hooks
    }
    ++gCheckedAccesses;
    if (address >= thread->stackLow && address + bytes <= thread->stackHigh)
    {
        return;
    }
    auto const builtin = reinterpret_cast<std::uintptr_t>(&builtins);
    bool const isBuiltin = address >= builtin && address + bytes <= builtin + sizeof(Builtins);
    bool const isParameter = address >= gParamsBegin && address + bytes <= gParamsEnd;
    if (isBuiltin || isParameter)
    {
        if (write)
        {
            fail(Check::ReadOnlyWrite, describeAccess(bytes, write) + (isBuiltin ? " to a built-in variable"
                                                                                 : " to the kernel's parameters"));
        }
        return;
    }
    SharedArena* const arena = thread->block->shared;
    if (arena->touches(address, bytes))
    {
        arena->access(address, bytes, write, *thread);
        return;
    }
    for (GlobalBuffer* buffer : gGlobals)
    {
        if (buffer->memory().touches(address, bytes))
        {
            buffer->access(address, bytes, write);
            return;
        }
    }
    std::ostringstream text;
    text << describeAccess(bytes, write) << " at " << reinterpret_cast<void const*>(address)
         << ", which is no buffer, shared memory, parameter or stack of this thread";
    fail(Check::WildAccess, text.str());
}

} // namespace

} // namespace emu

// The hooks of GCC's -fsanitize=kernel-address with out-of-line instrumentation, and the renamed
// __tls_get_addr of the kernel library's __shared__ variables.
extern "C"
{

#define EMU_ACCESS_HOOKS(BYTES)                                                                                        \
    void __asan_load##BYTES##_noabort(std::uintptr_t address)                                                          \
    {                                                                                                                  \
        emu::onAccess(address, BYTES, false);                                                                          \
    }                                                                                                                  \
    void __asan_store##BYTES##_noabort(std::uintptr_t address)                                                         \
    {                                                                                                                  \
        emu::onAccess(address, BYTES, true);                                                                           \
    }

EMU_ACCESS_HOOKS(1)
EMU_ACCESS_HOOKS(2)
EMU_ACCESS_HOOKS(4)
EMU_ACCESS_HOOKS(8)
EMU_ACCESS_HOOKS(16)

#undef EMU_ACCESS_HOOKS

void __asan_loadN_noabort(std::uintptr_t address, std::size_t bytes)
{
    emu::onAccess(address, bytes, false);
}

void __asan_storeN_noabort(std::uintptr_t address, std::size_t bytes)
{
    emu::onAccess(address, bytes, true);
}

//! The argument of __tls_get_addr: module and offset of a TLS variable.
struct TlsIndex
{
    unsigned long module;
    unsigned long offset;
};

void* emuSharedAddress(TlsIndex const* index)
{
    emu::ThreadContext const* const thread = emu::tCurrent;
    if (thread == nullptr || thread->block == nullptr)
    {
        emu::fail(emu::Check::Usage, "a __shared__ variable was used outside a kernel");
    }
    return thread->block->shared->address(index->offset);
}

} // extern "C"
