/*
 * kernel_emu scheduler: runs every thread of every block of a grid.
 *
 * Fibers: the threads of one block are fibers on one OS thread (a small x86-64 stack switch); a thread runs
 * until it reaches __syncthreads(), a warp shuffle or its end, then the next runnable one in the round's
 * order. OS threads: every thread of a wave of blocks runs on its own thread of a reused pool; a block's
 * threads meet at a monitor (a mutex, a condition variable per warp) that ThreadSanitizer does not see,
 * and a barrier tells it the happens-before edges a barrier makes (a shuffle makes none), so TSan reports
 * what a GPU could race on. Both modes apply the same rules (BlockSync), and both run blocks, and in each
 * round threads, in index order for order seed 0 and in seeded random orders otherwise.
 */
#include "runtime.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
extern "C"
{
void AnnotateIgnoreSyncBegin(char const* file, int line);
void AnnotateIgnoreSyncEnd(char const* file, int line);
void AnnotateIgnoreReadsBegin(char const* file, int line);
void AnnotateIgnoreReadsEnd(char const* file, int line);
void AnnotateIgnoreWritesBegin(char const* file, int line);
void AnnotateIgnoreWritesEnd(char const* file, int line);
}
#endif

#if !defined(__x86_64__)
#error "kernel_emu's fibers switch x86-64 stacks only"
#endif

extern "C" void emuSwitchStack(void** saveStackPointer, void* loadStackPointer);
extern "C" void emuFiberStart();
extern "C" [[noreturn]] void emuFiberMain(void* fiber);

// emuSwitchStack saves the callee-saved registers on the current stack, stores its pointer and continues on the
// other stack. A new fiber's stack holds such a frame that returns into emuFiberStart with the fiber in %rbx.
asm(R"(
    .text
    .globl emuSwitchStack
    .type emuSwitchStack, @function
emuSwitchStack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emuSwitchStack, .-emuSwitchStack

    .globl emuFiberStart
    .type emuFiberStart, @function
emuFiberStart:
    movq %rbx, %rdi
    call emuFiberMain@PLT
    ud2
    .size emuFiberStart, .-emuFiberStart
)");

namespace emu
{

constexpr int kWarpSize = 32;
constexpr int kMaxConcurrentThreads = 1024; //!< threads mode: blocks run in waves of at most this many threads

//! Where a thread waits: the source location of a barrier or shuffle.
struct Site
{
    char const* file = "";
    int line = 0;

    bool operator==(Site const& other) const
    {
        return line == other.line && (file == other.file || std::strcmp(file, other.file) == 0);
    }

    std::string text() const { return std::string(file) + ":" + std::to_string(line); }
};

//! Meets the threads of a block at barriers and shuffles; one implementation per mode.
class BlockRun
{
public:
    virtual ~BlockRun() = default;
    virtual void barrier(ThreadContext& thread, Site site) = 0;
    virtual std::uint64_t shuffle(ThreadContext& thread, Site site, unsigned mask, std::uint64_t value, int laneMask) = 0;
};

namespace
{

/*
 * Where every thread of a block stands, and the rules: all threads of the block meet at the same barrier
 * (none may have exited, none may wait elsewhere); all lanes a shuffle's mask names meet at the same
 * shuffle with the same mask (one shuffle per warp at a time) and read from a lane of the mask. A broken
 * rule fails at once. Per warp, bit masks of lanes that exited, wait at a barrier or wait at a shuffle.
 */
class BlockSync
{
public:
    enum class State
    {
        Running,
        AtBarrier,
        AtShuffle,
        Exited,
    };

    explicit BlockSync(int threads)
        : mThreads(static_cast<std::size_t>(threads))
        , mWarps(static_cast<std::size_t>((threads + kWarpSize - 1) / kWarpSize))
    {
    }

    State state(int thread) const { return mThreads[thread].state; }
    bool finished() const { return mExited == static_cast<int>(mThreads.size()); }
    std::uint64_t shuffled(int thread) const { return mThreads[thread].result; }

    //! True when this arrival releases the barrier.
    bool arriveAtBarrier(int thread, Site site)
    {
        auto const arrival = [&] { return "thread " + std::to_string(thread) + " reached __syncthreads() at " + site.text(); };
        if (mExited > 0)
        {
            fail(Check::BarrierDivergence, arrival() + " after " + describe(firstIn(State::Exited)));
        }
        if (mAtBarrier > 0 && !(mBarrierSite == site))
        {
            fail(Check::BarrierDivergence, arrival() + " while " + describe(firstIn(State::AtBarrier)));
        }
        leaveWarp(thread, [&] { return "went to __syncthreads() at " + site.text(); });
        mThreads[thread].state = State::AtBarrier;
        mThreads[thread].site = site;
        mWarps[thread / kWarpSize].atBarrier |= 1u << (thread % kWarpSize);
        mBarrierSite = site;
        if (++mAtBarrier < static_cast<int>(mThreads.size()))
        {
            return false;
        }
        for (Thread& each : mThreads)
        {
            each.state = State::Running;
        }
        for (Warp& warp : mWarps)
        {
            warp.atBarrier = 0;
        }
        mAtBarrier = 0;
        return true;
    }

    //! True when this arrival completes the shuffle (every lane of the mask then has its value).
    bool arriveAtShuffle(int thread, Site site, unsigned mask, std::uint64_t value, int laneMask)
    {
        int const lane = thread % kWarpSize;
        int const first = thread - lane;
        int const lanes = std::min(kWarpSize, static_cast<int>(mThreads.size()) - first);
        int const source = lane ^ laneMask;
        Warp& warp = mWarps[first / kWarpSize];
        auto const where = [&] {
            return "lane " + std::to_string(lane) + " of warp " + std::to_string(first / kWarpSize)
                + " at the shuffle at " + site.text() + " with mask " + std::to_string(mask);
        };
        if (lanes < kWarpSize && (mask >> lanes) != 0)
        {
            fail(Check::Shuffle, where() + ": the mask names lanes the block does not have (" + std::to_string(lanes)
                    + " threads in this warp)");
        }
        if ((mask >> lane & 1u) == 0 || source < 0 || source >= kWarpSize || (mask >> source & 1u) == 0)
        {
            fail(Check::Shuffle, where() + ": lane or source lane " + std::to_string(source) + " not in the mask");
        }
        unsigned const away = (warp.exited | warp.atBarrier) & mask;
        if (away != 0)
        {
            fail(Check::Shuffle, where() + ", but " + describe(first + __builtin_ctz(away)));
        }
        if (warp.atShuffle != 0 && !(warp.site == site && warp.mask == mask))
        {
            fail(Check::Shuffle, where() + ", but " + describe(first + __builtin_ctz(warp.atShuffle)));
        }
        mThreads[thread] = Thread{State::AtShuffle, site, value, laneMask, 0};
        warp.atShuffle |= 1u << lane;
        warp.site = site;
        warp.mask = mask;
        if (warp.atShuffle != mask)
        {
            return false;
        }
        for (int other = 0; other < lanes; ++other)
        {
            if (mask >> other & 1u)
            {
                Thread& mate = mThreads[first + other];
                mate.result = mThreads[first + (other ^ mate.laneMask)].value;
                mate.state = State::Running;
            }
        }
        warp.atShuffle = 0;
        return true;
    }

    void exit(int thread)
    {
        if (mAtBarrier > 0)
        {
            fail(Check::BarrierDivergence, "thread " + std::to_string(thread) + " exited while "
                    + describe(firstIn(State::AtBarrier)));
        }
        leaveWarp(thread, [] { return std::string("exited"); });
        mThreads[thread].state = State::Exited;
        mWarps[thread / kWarpSize].exited |= 1u << (thread % kWarpSize);
        ++mExited;
    }

private:
    struct Thread
    {
        State state = State::Running;
        Site site;
        std::uint64_t value = 0;
        int laneMask = 0;
        std::uint64_t result = 0;
    };

    struct Warp
    {
        unsigned exited = 0;
        unsigned atBarrier = 0; //!< lanes at the barrier of the current generation
        unsigned atShuffle = 0;
        Site site;              //!< of the shuffle the lanes in atShuffle wait at
        unsigned mask = 0;
    };

    //! Fail if warp-mates wait at a shuffle whose mask names `thread`, which goes elsewhere; else note where.
    template <typename What>
    void leaveWarp(int thread, What what)
    {
        int const lane = thread % kWarpSize;
        Warp& warp = mWarps[thread / kWarpSize];
        if (warp.atShuffle != 0 && (warp.mask >> lane & 1u))
        {
            fail(Check::Shuffle, "lane " + std::to_string(lane) + " of warp " + std::to_string(thread / kWarpSize) + " "
                    + what() + " while " + describe(thread - lane + __builtin_ctz(warp.atShuffle)));
        }
    }

    int firstIn(State state) const
    {
        auto const found = std::find_if(
            mThreads.begin(), mThreads.end(), [state](Thread const& thread) { return thread.state == state; });
        return static_cast<int>(found - mThreads.begin());
    }

    std::string describe(int thread) const
    {
        Thread const& t = mThreads[thread];
        std::string const who = "thread " + std::to_string(thread);
        switch (t.state)
        {
        case State::Exited: return who + " exited";
        case State::AtBarrier: return who + " waits at __syncthreads() at " + t.site.text();
        case State::AtShuffle: return who + " waits at the shuffle at " + t.site.text();
        case State::Running: break;
        }
        return who + " runs";
    }

    std::vector<Thread> mThreads;
    std::vector<Warp> mWarps;
    int mAtBarrier = 0;
    int mExited = 0;
    Site mBarrierSite;
};

//! The block's built-in variables for its thread `thread`.
Builtins builtinsOf(LaunchConfig const& config, uint3 blockIndex, int thread)
{
    dim3 const& b = config.block;
    auto const t = static_cast<unsigned>(thread);
    return Builtins{uint3{t % b.x, t / b.x % b.y, t / (b.x * b.y)}, blockIndex, uint3{b.x, b.y, b.z},
        uint3{config.grid.x, config.grid.y, config.grid.z}};
}

int threadsOf(dim3 block)
{
    return static_cast<int>(block.x * block.y * block.z);
}

//! 0..count-1, shuffled unless the order seed is 0.
std::vector<int> order(int count, std::mt19937_64* random)
{
    std::vector<int> indices(static_cast<std::size_t>(count));
    std::iota(indices.begin(), indices.end(), 0);
    if (random != nullptr)
    {
        std::shuffle(indices.begin(), indices.end(), *random);
    }
    return indices;
}

// --- Fibers ----------------------------------------------------------------------------------------------------

constexpr std::size_t kFiberStackBytes = 256 * 1024;

//! A fiber stack with an inaccessible page below it, so an overflow faults.
class FiberStack
{
public:
    FiberStack()
    {
        mMapping = static_cast<std::byte*>(
            mmap(nullptr, kFiberStackBytes + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (mMapping == MAP_FAILED || mprotect(mMapping, kPage, PROT_NONE) != 0)
        {
            fail(Check::Usage, "cannot map a fiber stack");
        }
    }
    ~FiberStack() { munmap(mMapping, kFiberStackBytes + kPage); }
    FiberStack(FiberStack const&) = delete;
    FiberStack& operator=(FiberStack const&) = delete;

    std::byte* low() const { return mMapping + kPage; }
    std::byte* high() const { return mMapping + kPage + kFiberStackBytes; }

private:
    static constexpr std::size_t kPage = 4096;
    std::byte* mMapping;
};

class FiberBlockRun;

struct Fiber
{
    FiberBlockRun* run = nullptr;
    ThreadContext context;
    Builtins builtins{};
    void* stackPointer = nullptr;
    void* fakeStack = nullptr; //!< AddressSanitizer's, while switched away
};

/*
 * Runs the blocks of a launch one after the other on this OS thread, every thread of a block a fiber.
 * Switches go through switchTo(), which tells AddressSanitizer about the stack change when it is there.
 */
class FiberBlockRun final : public BlockRun
{
public:
    FiberBlockRun(LaunchConfig const& config, void (*body)(void const*), void const* params)
        : mConfig(config)
        , mBody(body)
        , mParams(params)
        , mFibers(static_cast<std::size_t>(threadsOf(config.block)))
    {
        while (stacks().size() < mFibers.size())
        {
            stacks().push_back(std::make_unique<FiberStack>());
        }
    }

    void run(Block& block, std::mt19937_64* random)
    {
        int const threads = threadsOf(mConfig.block);
        BlockSync sync(threads);
        mSync = &sync;
        mBlock = &block;
        for (int t = 0; t < threads; ++t)
        {
            FiberStack const& stack = *stacks()[t];
            Fiber& fiber = mFibers[t];
            fiber.run = this;
            fiber.context = ThreadContext{&block, this, t, reinterpret_cast<std::uintptr_t>(stack.low()),
                reinterpret_cast<std::uintptr_t>(stack.high()), true};
            fiber.builtins = builtinsOf(mConfig, block.index, t);
            auto** frame = reinterpret_cast<void**>(stack.high()) - 9; // 6 registers, return address, padding
            std::fill(frame, frame + 9, nullptr);
            frame[4] = &fiber; // %rbx
            frame[6] = reinterpret_cast<void*>(&emuFiberStart);
            fiber.stackPointer = frame;
            fiber.fakeStack = nullptr;
        }
        std::vector<int> round = order(threads, random);
        while (!sync.finished())
        {
            bool ran = false;
            for (int t : round)
            {
                if (sync.state(t) == BlockSync::State::Running)
                {
                    resume(mFibers[t]);
                    ran = true;
                }
            }
            if (!ran)
            {
                fail(Check::BarrierDivergence, "no thread of the block can continue");
            }
            if (random != nullptr)
            {
                std::shuffle(round.begin(), round.end(), *random);
            }
        }
    }

    void barrier(ThreadContext& thread, Site site) override
    {
        if (mSync->arriveAtBarrier(thread.thread, site))
        {
            mBlock->interval = nextSerial();
        }
        yield(mFibers[thread.thread], false);
    }

    std::uint64_t shuffle(ThreadContext& thread, Site site, unsigned mask, std::uint64_t value, int laneMask) override
    {
        mSync->arriveAtShuffle(thread.thread, site, mask, value, laneMask);
        yield(mFibers[thread.thread], false);
        return mSync->shuffled(thread.thread);
    }

    //! The body of every fiber.
    [[noreturn]] void main(Fiber& fiber)
    {
        finishSwitch(nullptr, &mSchedulerStackBottom, &mSchedulerStackSize);
        mBody(mParams);
        mSync->exit(fiber.context.thread);
        yield(fiber, true);
        __builtin_unreachable();
    }

private:
    static std::vector<std::unique_ptr<FiberStack>>& stacks()
    {
        static std::vector<std::unique_ptr<FiberStack>> pool;
        return pool;
    }

    void resume(Fiber& fiber)
    {
        tCurrent = &fiber.context;
        builtins = fiber.builtins;
        FiberStack const& stack = *stacks()[fiber.context.thread];
        void* schedulerFakeStack = nullptr;
        startSwitch(&schedulerFakeStack, stack.low(), kFiberStackBytes);
        emuSwitchStack(&mSchedulerStackPointer, fiber.stackPointer);
        finishSwitch(schedulerFakeStack, nullptr, nullptr);
        tCurrent = nullptr;
    }

    void yield(Fiber& fiber, bool exiting)
    {
        startSwitch(exiting ? nullptr : &fiber.fakeStack, mSchedulerStackBottom, mSchedulerStackSize);
        emuSwitchStack(&fiber.stackPointer, mSchedulerStackPointer);
        finishSwitch(fiber.fakeStack, &mSchedulerStackBottom, &mSchedulerStackSize);
    }

    static void startSwitch(void** fakeStack, void const* bottom, std::size_t size)
    {
#if defined(__SANITIZE_ADDRESS__)
        __sanitizer_start_switch_fiber(fakeStack, bottom, size);
#else
        static_cast<void>(fakeStack);
        static_cast<void>(bottom);
        static_cast<void>(size);
#endif
    }

    static void finishSwitch(void* fakeStack, void const** bottom, std::size_t* size)
    {
#if defined(__SANITIZE_ADDRESS__)
        __sanitizer_finish_switch_fiber(fakeStack, bottom, size);
#else
        static_cast<void>(fakeStack);
        static_cast<void>(bottom);
        static_cast<void>(size);
#endif
    }

    LaunchConfig const& mConfig;
    void (*mBody)(void const*);
    void const* mParams;
    std::vector<Fiber> mFibers;
    BlockSync* mSync = nullptr;
    Block* mBlock = nullptr;
    void* mSchedulerStackPointer = nullptr;
    void const* mSchedulerStackBottom = nullptr;
    std::size_t mSchedulerStackSize = 0;
};

// --- OS threads ------------------------------------------------------------------------------------------------

//! Within its scope ThreadSanitizer ignores this thread's accesses and synchronisation (the monitor's).
class InvisibleToTsan
{
public:
    InvisibleToTsan()
    {
#if defined(__SANITIZE_THREAD__)
        AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
#endif
    }
    ~InvisibleToTsan()
    {
#if defined(__SANITIZE_THREAD__)
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
        AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
#endif
    }
    InvisibleToTsan(InvisibleToTsan const&) = delete;
    InvisibleToTsan& operator=(InvisibleToTsan const&) = delete;
};

//! A happens-before edge for ThreadSanitizer from every release to every later acquire of `clock`.
void releaseTo(void* clock)
{
#if defined(__SANITIZE_THREAD__)
    __tsan_release(clock);
#else
    static_cast<void>(clock);
#endif
}

void acquireFrom(void* clock)
{
#if defined(__SANITIZE_THREAD__)
    __tsan_acquire(clock);
#else
    static_cast<void>(clock);
#endif
}

/*
 * One block whose threads are OS threads, waiting on a condition variable per warp. A barrier is a
 * happens-before edge from every thread's arrival to every thread's departure; ThreadSanitizer learns it
 * through one clock per barrier generation (two alternate: a thread leaving generation g cannot meet one
 * arriving at g + 2). A shuffle makes no such edge.
 */
class ThreadBlockRun final : public BlockRun
{
public:
    explicit ThreadBlockRun(int threads)
        : mSync(threads)
        , mWakeups(static_cast<std::size_t>((threads + kWarpSize - 1) / kWarpSize))
    {
    }

    void barrier(ThreadContext& thread, Site site) override
    {
        unsigned generation = 0;
        {
            InvisibleToTsan const invisible;
            std::lock_guard<std::mutex> lock(mMutex);
            generation = mGeneration;
        }
        releaseTo(&mClocks[generation % 2]);
        {
            InvisibleToTsan const invisible;
            std::unique_lock<std::mutex> lock(mMutex);
            if (mSync.arriveAtBarrier(thread.thread, site))
            {
                ++mGeneration;
                for (std::condition_variable& wakeup : mWakeups)
                {
                    wakeup.notify_all();
                }
            }
            waitUntilRunning(lock, thread.thread);
        }
        acquireFrom(&mClocks[generation % 2]);
    }

    std::uint64_t shuffle(ThreadContext& thread, Site site, unsigned mask, std::uint64_t value, int laneMask) override
    {
        InvisibleToTsan const invisible;
        std::unique_lock<std::mutex> lock(mMutex);
        if (mSync.arriveAtShuffle(thread.thread, site, mask, value, laneMask))
        {
            mWakeups[thread.thread / kWarpSize].notify_all();
        }
        waitUntilRunning(lock, thread.thread);
        return mSync.shuffled(thread.thread);
    }

    void exit(int thread)
    {
        InvisibleToTsan const invisible;
        std::lock_guard<std::mutex> lock(mMutex);
        mSync.exit(thread);
    }

private:
    void waitUntilRunning(std::unique_lock<std::mutex>& lock, int thread)
    {
        mWakeups[thread / kWarpSize].wait(lock, [&] { return mSync.state(thread) == BlockSync::State::Running; });
    }

    BlockSync mSync;
    std::mutex mMutex;
    std::vector<std::condition_variable> mWakeups; //!< per warp
    unsigned mGeneration = 0;
    char mClocks[2]{};
};

/*
 * OS threads reused from wave to wave, each running one CUDA thread per wave. ThreadSanitizer sees the
 * hand-over only as the edges a launch makes: from the host to every thread, from every thread back to the
 * host; never between two threads.
 */
class WorkerPool
{
public:
    WorkerPool() = default;
    WorkerPool(WorkerPool const&) = delete;
    WorkerPool& operator=(WorkerPool const&) = delete;

    ~WorkerPool()
    {
        {
            std::lock_guard<std::mutex> lock(mMutex);
            mQuit = true;
        }
        for (auto& worker : mWorkers)
        {
            worker->wakeup.notify_one();
            worker->thread.join();
        }
    }

    //! Run every job on its own worker; return when all are done.
    void run(std::vector<std::function<void()>> const& jobs)
    {
        while (mWorkers.size() < jobs.size())
        {
            mWorkers.push_back(std::make_unique<Worker>());
            Worker& worker = *mWorkers.back();
            worker.thread = std::thread([this, &worker] { serve(worker); });
        }
        releaseTo(&mStart);
        {
            InvisibleToTsan const invisible;
            std::unique_lock<std::mutex> lock(mMutex);
            mPending = jobs.size();
            for (std::size_t i = 0; i < jobs.size(); ++i)
            {
                mWorkers[i]->job = &jobs[i];
                mWorkers[i]->wakeup.notify_one();
            }
            mDone.wait(lock, [&] { return mPending == 0; });
        }
        acquireFrom(&mEnd);
    }

private:
    struct Worker
    {
        std::thread thread;
        std::condition_variable wakeup;
        std::function<void()> const* job = nullptr;
    };

    void serve(Worker& self)
    {
        while (true)
        {
            std::function<void()> const* job = nullptr;
            {
                InvisibleToTsan const invisible;
                std::unique_lock<std::mutex> lock(mMutex);
                self.wakeup.wait(lock, [&] { return self.job != nullptr || mQuit; });
                if (self.job == nullptr)
                {
                    return;
                }
                job = self.job;
            }
            acquireFrom(&mStart);
            (*job)();
            releaseTo(&mEnd);
            InvisibleToTsan const invisible;
            std::lock_guard<std::mutex> lock(mMutex);
            self.job = nullptr;
            if (--mPending == 0)
            {
                mDone.notify_one();
            }
        }
    }

    std::mutex mMutex;
    std::condition_variable mDone;
    std::vector<std::unique_ptr<Worker>> mWorkers;
    std::size_t mPending = 0;
    bool mQuit = false;
    char mStart = 0;
    char mEnd = 0;
};

// --- Grids -----------------------------------------------------------------------------------------------------

uint3 blockIndexOf(dim3 grid, std::int64_t linear)
{
    auto const x = static_cast<unsigned>(linear % grid.x);
    std::int64_t const rest = linear / grid.x;
    return uint3{x, static_cast<unsigned>(rest % grid.y), static_cast<unsigned>(rest / grid.y)};
}

std::vector<std::int64_t> blockOrder(dim3 grid, std::mt19937_64* random)
{
    std::vector<std::int64_t> blocks(static_cast<std::size_t>(grid.x) * grid.y * grid.z);
    std::iota(blocks.begin(), blocks.end(), 0);
    if (random != nullptr)
    {
        std::shuffle(blocks.begin(), blocks.end(), *random);
    }
    return blocks;
}

void runFibers(LaunchConfig const& config, LaunchMemory& memory, void (*body)(void const*), void const* params,
    std::mt19937_64* random)
{
    FiberBlockRun run(config, body, params);
    for (std::int64_t linear : blockOrder(config.grid, random))
    {
        Block block;
        block.index = blockIndexOf(config.grid, linear);
        memory.enter(block, 0);
        run.run(block, random);
    }
}

void runThreads(LaunchConfig const& config, LaunchMemory& memory, void (*body)(void const*), void const* params,
    std::mt19937_64* random)
{
    static WorkerPool pool;
    int const threads = threadsOf(config.block);
    int const wave = concurrentBlocks(config.block);
    std::vector<std::int64_t> const blocks = blockOrder(config.grid, random);
    for (std::size_t begin = 0; begin < blocks.size(); begin += static_cast<std::size_t>(wave))
    {
        std::size_t const count = std::min(blocks.size() - begin, static_cast<std::size_t>(wave));
        std::vector<Block> waveBlocks(count);
        std::vector<std::unique_ptr<ThreadBlockRun>> runs;
        for (std::size_t i = 0; i < count; ++i)
        {
            waveBlocks[i].index = blockIndexOf(config.grid, blocks[begin + i]);
            memory.enter(waveBlocks[i], static_cast<int>(i));
            runs.push_back(std::make_unique<ThreadBlockRun>(threads));
        }
        std::vector<std::function<void()>> jobs;
        for (int slot : order(static_cast<int>(count) * threads, random))
        {
            int const b = slot / threads;
            int const t = slot % threads;
            jobs.emplace_back([&, b, t] {
                ThreadContext context{&waveBlocks[b], runs[b].get(), t};
                tCurrent = &context;
                builtins = builtinsOf(config, waveBlocks[b].index, t);
                body(params);
                runs[b]->exit(t);
                tCurrent = nullptr;
            });
        }
        pool.run(jobs);
    }
}

} // namespace

int concurrentBlocks(dim3 block)
{
    return settings().mode == Mode::Fibers ? 1 : std::max(1, kMaxConcurrentThreads / threadsOf(block));
}

void runGrid(LaunchConfig const& config, LaunchMemory& memory, void (*body)(void const*), void const* params)
{
    std::mt19937_64 random(settings().orderSeed);
    std::mt19937_64* const permute = settings().orderSeed == 0 ? nullptr : &random;
    if (settings().mode == Mode::Fibers)
    {
        runFibers(config, memory, body, params, permute);
    }
    else
    {
        runThreads(config, memory, body, params, permute);
    }
}

void syncThreads(char const* file, int line)
{
    ThreadContext* const thread = tCurrent;
    if (thread == nullptr || thread->run == nullptr)
    {
        fail(Check::Usage, "__syncthreads() outside a kernel");
    }
    thread->run->barrier(*thread, Site{file, line});
}

std::uint64_t shuffleXorBits(char const* file, int line, unsigned mask, std::uint64_t bits, int laneMask, int width)
{
    ThreadContext* const thread = tCurrent;
    if (thread == nullptr || thread->run == nullptr || width != kWarpSize)
    {
        fail(Check::Usage, "__shfl_xor_sync() outside a kernel or with a width other than 32");
    }
    return thread->run->shuffle(*thread, Site{file, line}, mask, bits, laneMask);
}

} // namespace emu

//! Where emuFiberStart enters a new fiber.
extern "C" void emuFiberMain(void* fiber)
{
    auto& self = *static_cast<emu::Fiber*>(fiber);
    self.run->main(self);
}
