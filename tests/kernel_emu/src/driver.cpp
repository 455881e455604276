/*
 * kernel_emu driver: runs cases of the ECA kernel library (ecaKernel.cu and ecaCApi.cu built for the emulator)
 * and of the TensorRT plugin on the CPU.
 *
 *   emu_driver --kernels LIB.so --layout LIB.layout [--plugin-bridge BRIDGE.so] [--mode fibers|threads]
 *              --inputs IN --outputs OUT  < cases
 *   emu_driver convert --inputs IN --outputs OUT --count N
 *
 * A case is one line of key=value fields:
 *   name, entry (forward: ecaForwardC; single: ecaForwardSingleLaunchC; plugin: EcaPlugin::enqueue),
 *   n c h w k, pad (0 constant, 1 wrap), dtype (0 fp32, 1 fp16, 2 bf16), layout (nchw, nhwc, hwc8),
 *   x_misalign y_misalign (bytes past a 256-byte boundary), device (sm75 ... sm90), orders (comma-separated
 *   seeds, one run each), x_at w_at y_at (byte offsets of x and weight in IN and of y in OUT); single:
 *   per_block grid block shared lanes; plugin: max_n max_h max_w.
 * Every run starts from y and workspace poisoned with another NaN pattern. The driver prints "begin name=..."
 * before a case and after it "name=... status=... launches=... kernels=... grids=... threads=... shared=...
 * deterministic=0|1 unwritten=... accesses=... workspace=... cpu_s=..." (the CPU seconds the case took), and writes
 * y's bytes of the first run at y_at.
 * A failed check ends the process with exit status 3 and its report on stderr.
 *
 * convert: IN holds N float32 and then N uint16; OUT gets their __float2half_rn and __float2bfloat16_rn bits,
 * then __half2float and __bfloat162float of the uint16 as float32 (for the conversion tests).
 */
#include "plugin_case.h"
#include "runtime.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>
#include <map>
#include <optional>
#include <sstream>

namespace
{

using emu::Check;
using emu::fail;

constexpr std::uint16_t kPoisonPatterns[]{0xffff, 0x7fc1}; // NaN in FP32 (as pairs), FP16 and BF16

//! A file mapped into memory.
class MappedFile
{
public:
    MappedFile(std::string const& path, bool writable)
    {
        int const fd = open(path.c_str(), writable ? O_RDWR : O_RDONLY);
        struct stat info
        {
        };
        if (fd < 0 || fstat(fd, &info) != 0)
        {
            fail(Check::Usage, "cannot open " + path);
        }
        mBytes = static_cast<std::size_t>(info.st_size);
        void* const data = mBytes == 0 ? nullptr
                                       : mmap(nullptr, mBytes, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                                           MAP_SHARED, fd, 0);
        close(fd);
        if (data == MAP_FAILED)
        {
            fail(Check::Usage, "cannot map " + path);
        }
        mData = static_cast<std::byte*>(data);
    }
    ~MappedFile()
    {
        if (mData != nullptr)
        {
            munmap(mData, mBytes);
        }
    }
    MappedFile(MappedFile const&) = delete;
    MappedFile& operator=(MappedFile const&) = delete;

    std::byte* at(std::size_t offset, std::size_t bytes) const
    {
        if (offset + bytes > mBytes)
        {
            fail(Check::Usage, "a case reaches past the end of its data file");
        }
        return mData + offset;
    }

private:
    std::byte* mData = nullptr;
    std::size_t mBytes = 0;
};

//! key=value fields of one line.
class Fields
{
public:
    explicit Fields(std::string const& line)
    {
        std::istringstream words(line);
        std::string word;
        while (words >> word)
        {
            std::size_t const equals = word.find('=');
            if (equals == std::string::npos)
            {
                fail(Check::Usage, "'" + word + "' is not key=value");
            }
            mValues[word.substr(0, equals)] = word.substr(equals + 1);
        }
    }

    std::string const& text(std::string const& key) const
    {
        auto const found = mValues.find(key);
        if (found == mValues.end())
        {
            fail(Check::Usage, "missing field '" + key + "'");
        }
        return found->second;
    }

    long long number(std::string const& key) const { return std::stoll(text(key)); }
    int integer(std::string const& key) const { return static_cast<int>(number(key)); }
    std::size_t size(std::string const& key) const { return static_cast<std::size_t>(number(key)); }

private:
    std::map<std::string, std::string> mValues;
};

template <typename Function>
Function symbol(void* library, char const* name)
{
    void* const address = dlsym(library, name);
    if (address == nullptr)
    {
        fail(Check::Usage, std::string("missing symbol ") + name);
    }
    return reinterpret_cast<Function>(address);
}

void* openLibrary(std::string const& path)
{
    void* const library = dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (library == nullptr)
    {
        fail(Check::Usage, std::string("cannot load ") + dlerror());
    }
    return library;
}

//! The entry points a case can call.
struct Library
{
    using WorkspaceSize = std::size_t (*)(int, int, int, int, int, int, int, int, int);
    using Forward = int (*)(int, int, int, int, int, int, int, int, int, void const*, void const*, void*, void*, void*);
    using ForwardSingleLaunch
        = int (*)(int, int, int, int, int, int, int, int, int, int, int, int, void const*, void const*, void*, void*);
    using PluginWorkspaceSize = long long (*)(EmuPluginCase const*);
    using PluginEnqueue = int (*)(EmuPluginCase const*, void const*, void const*, void*, void*);

    WorkspaceSize workspaceSize;
    Forward forward;
    ForwardSingleLaunch forwardSingleLaunch;
    PluginWorkspaceSize pluginWorkspaceSize = nullptr;
    PluginEnqueue pluginEnqueue = nullptr;
};

//! One case: its shape, buffers and how to call it.
class Case
{
public:
    Case(Fields const& fields, Library const& library)
        : mFields(fields)
        , mLibrary(library)
        , mEntry(fields.text("entry"))
        , mLayout(fields.text("layout"))
        , mN(fields.integer("n"))
        , mC(fields.integer("c"))
        , mH(fields.integer("h"))
        , mW(fields.integer("w"))
        , mK(fields.integer("k"))
        , mPad(fields.integer("pad"))
        , mDtype(fields.integer("dtype"))
    {
        if (mLayout != "nchw" && mLayout != "nhwc" && mLayout != "hwc8")
        {
            fail(Check::Usage, "unknown layout " + mLayout);
        }
        if ((mEntry == "plugin" && library.pluginEnqueue == nullptr)
            || (mEntry != "forward" && mEntry != "single" && mEntry != "plugin"))
        {
            fail(Check::Usage, "entry '" + mEntry + "' unknown or without --plugin-bridge");
        }
    }

    std::size_t elementBytes() const { return mDtype == 0 ? 4 : 2; }
    int pixelStride() const { return mLayout == "hwc8" ? (mC + 7) / 8 * 8 : mC; }
    std::size_t tensorBytes() const
    {
        return static_cast<std::size_t>(mN) * mH * mW * static_cast<std::size_t>(pixelStride()) * elementBytes();
    }
    std::size_t weightBytes() const { return static_cast<std::size_t>(mK) * elementBytes(); }

    //! Workspace bytes the entry point asks for (-1: the plugin refused to configure).
    long long workspaceBytes() const
    {
        if (mEntry == "forward")
        {
            return static_cast<long long>(mLibrary.workspaceSize(mN, mC, mH, mW, mK, mPad, mDtype, channelsLast(), cStride()));
        }
        if (mEntry == "plugin")
        {
            EmuPluginCase const plugin = pluginCase();
            return mLibrary.pluginWorkspaceSize(&plugin);
        }
        return 0;
    }

    int call(void const* x, void const* weight, void* y, void* workspace) const
    {
        if (mEntry == "forward")
        {
            return mLibrary.forward(
                mN, mC, mH, mW, mK, mPad, mDtype, channelsLast(), cStride(), x, weight, y, workspace, nullptr);
        }
        if (mEntry == "single")
        {
            return mLibrary.forwardSingleLaunch(mN, mC, mH, mW, mK, mPad, mDtype, mFields.integer("per_block"),
                mFields.integer("grid"), mFields.integer("block"), mFields.integer("shared"), mFields.integer("lanes"), x,
                weight, y, nullptr);
        }
        EmuPluginCase const plugin = pluginCase();
        return mLibrary.pluginEnqueue(&plugin, x, weight, y, workspace);
    }

private:
    int channelsLast() const { return mLayout == "nchw" ? 0 : 1; }
    int cStride() const { return mLayout == "hwc8" ? pixelStride() : 0; }

    EmuPluginCase pluginCase() const
    {
        return EmuPluginCase{mN, mC, mH, mW, mK, mPad == 0 ? "constant" : "wrap", mDtype, channelsLast(),
            mFields.integer("max_n"), mFields.integer("max_h"), mFields.integer("max_w")};
    }

    Fields const& mFields;
    Library const& mLibrary;
    std::string mEntry;
    std::string mLayout;
    int mN, mC, mH, mW, mK, mPad, mDtype;
};

std::vector<std::uint64_t> seeds(std::string const& text)
{
    std::vector<std::uint64_t> values;
    std::istringstream list(text);
    std::string item;
    while (std::getline(list, item, ','))
    {
        values.push_back(std::stoull(item));
    }
    if (values.empty())
    {
        fail(Check::Usage, "a case needs at least one order seed");
    }
    return values;
}

//! CPU seconds this process has used, every thread counted (the threads mode runs a case on many).
double cpuSeconds()
{
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + 1e-6 * static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

//! "a;b;c" of one field of every launch.
template <typename Field>
std::string joined(std::vector<emu::LaunchRecord> const& log, Field field)
{
    std::ostringstream text;
    for (std::size_t i = 0; i < log.size(); ++i)
    {
        text << (i == 0 ? "" : ";") << field(log[i]);
    }
    return log.empty() ? "-" : text.str();
}

void runCase(std::string const& line, Library const& library, MappedFile const& inputs, MappedFile const& outputs)
{
    double const cpuAtStart = cpuSeconds();
    Fields const fields(line);
    Case const thisCase(fields, library);
    emu::resetDevice();
    emu::Settings& settings = emu::settings();
    settings.caseName = fields.text("name");
    settings.device = emu::deviceNamed(fields.text("device"));
    std::cout << "begin name=" << settings.caseName << std::endl;

    std::size_t const bytes = thisCase.tensorBytes();
    emu::GlobalBuffer x("x", bytes, fields.size("x_misalign"), true);
    x.upload(inputs.at(fields.size("x_at"), bytes));
    emu::GlobalBuffer weight("weight", thisCase.weightBytes(), 0, true);
    weight.upload(inputs.at(fields.size("w_at"), thisCase.weightBytes()));
    emu::GlobalBuffer y("y", bytes, fields.size("y_misalign"), false);
    long long const workspaceBytes = thisCase.workspaceBytes();
    std::optional<emu::GlobalBuffer> workspace;
    if (workspaceBytes > 0)
    {
        workspace.emplace("workspace", static_cast<std::size_t>(workspaceBytes), 0, false);
    }

    std::vector<std::byte> firstY;
    std::vector<emu::LaunchRecord> firstLog;
    int firstStatus = 0;
    std::ptrdiff_t unwritten = -1;
    bool deterministic = true;
    std::vector<std::uint64_t> const orders = seeds(fields.text("orders"));
    for (std::size_t run = 0; run < orders.size(); ++run)
    {
        settings.orderSeed = orders[run];
        settings.poisonPattern = kPoisonPatterns[run % 2];
        y.poison();
        if (workspace)
        {
            workspace->poison();
        }
        emu::launchLog().clear();
        int const status = workspaceBytes < 0 ? static_cast<int>(cudaErrorInvalidValue)
                                              : thisCase.call(x.data(), weight.data(), y.data(),
                                                  workspace ? workspace->data() : nullptr);
        std::vector<std::byte> const result(y.data(), y.data() + bytes);
        if (run == 0)
        {
            firstY = result;
            firstLog = emu::launchLog();
            firstStatus = status;
            unwritten = y.firstNotWrittenOnce();
        }
        else
        {
            deterministic = deterministic && status == firstStatus && result == firstY;
        }
    }
    std::copy(firstY.begin(), firstY.end(), outputs.at(fields.size("y_at"), bytes));
    std::cout << "name=" << settings.caseName << " status=" << firstStatus << " launches=" << firstLog.size()
              << " kernels=" << joined(firstLog, [](auto const& r) { return r.kernel; })
              << " grids=" << joined(firstLog,
                     [](auto const& r) {
                         return std::to_string(r.grid.x) + "x" + std::to_string(r.grid.y) + "x" + std::to_string(r.grid.z);
                     })
              << " threads=" << joined(firstLog, [](auto const& r) { return r.block.x * r.block.y * r.block.z; })
              << " shared=" << joined(firstLog, [](auto const& r) { return r.sharedBytes; })
              << " errors=" << joined(firstLog, [](auto const& r) { return static_cast<int>(r.error); })
              << " deterministic=" << deterministic << " unwritten=" << unwritten
              << " accesses=" << emu::takeCheckedAccesses() << " workspace=" << workspaceBytes
              << " cpu_s=" << cpuSeconds() - cpuAtStart << std::endl;
}

//! The conversion test: see the file comment.
void convert(MappedFile const& inputs, MappedFile const& outputs, std::size_t count)
{
    auto const* floats = reinterpret_cast<float const*>(inputs.at(0, count * 4));
    auto const* halves = reinterpret_cast<std::uint16_t const*>(inputs.at(count * 4, count * 2));
    auto* toHalf = reinterpret_cast<std::uint16_t*>(outputs.at(0, count * 2));
    auto* toBf16 = reinterpret_cast<std::uint16_t*>(outputs.at(count * 2, count * 2));
    auto* fromHalf = reinterpret_cast<float*>(outputs.at(count * 4, count * 4));
    auto* fromBf16 = reinterpret_cast<float*>(outputs.at(count * 8, count * 4));
    for (std::size_t i = 0; i < count; ++i)
    {
        toHalf[i] = __float2half_rn(floats[i]).bits;
        toBf16[i] = __float2bfloat16_rn(floats[i]).bits;
        fromHalf[i] = __half2float(__half{halves[i]});
        fromBf16[i] = __bfloat162float(__nv_bfloat16{halves[i]});
    }
}

std::map<std::string, std::string> options(int argc, char** argv, int first)
{
    std::map<std::string, std::string> values;
    for (int i = first; i + 1 < argc; i += 2)
    {
        values[argv[i]] = argv[i + 1];
    }
    return values;
}

std::string required(std::map<std::string, std::string> const& values, std::string const& key)
{
    auto const found = values.find(key);
    if (found == values.end())
    {
        fail(Check::Usage, "missing option " + key);
    }
    return found->second;
}

} // namespace

int main(int argc, char** argv)
{
    bool const converting = argc > 1 && std::string(argv[1]) == "convert";
    std::map<std::string, std::string> const args = options(argc, argv, converting ? 2 : 1);
    MappedFile const inputs(required(args, "--inputs"), false);
    MappedFile const outputs(required(args, "--outputs"), true);
    if (converting)
    {
        convert(inputs, outputs, static_cast<std::size_t>(std::stoull(required(args, "--count"))));
        return 0;
    }
    void* const kernels = openLibrary(required(args, "--kernels"));
    emu::loadSharedLayout(required(args, "--layout"));
    Library library{symbol<Library::WorkspaceSize>(kernels, "ecaWorkspaceSizeC"),
        symbol<Library::Forward>(kernels, "ecaForwardC"),
        symbol<Library::ForwardSingleLaunch>(kernels, "ecaForwardSingleLaunchC")};
    if (args.count("--plugin-bridge") != 0)
    {
        void* const bridge = openLibrary(args.at("--plugin-bridge"));
        library.pluginWorkspaceSize = symbol<Library::PluginWorkspaceSize>(bridge, "emuPluginWorkspaceSize");
        library.pluginEnqueue = symbol<Library::PluginEnqueue>(bridge, "emuPluginEnqueue");
    }
    std::string const mode = args.count("--mode") != 0 ? args.at("--mode") : "fibers";
    if (mode != "fibers" && mode != "threads")
    {
        fail(Check::Usage, "--mode is fibers or threads");
    }
    emu::settings().mode = mode == "fibers" ? emu::Mode::Fibers : emu::Mode::Threads;
    std::string line;
    while (std::getline(std::cin, line))
    {
        if (!line.empty())
        {
            runCase(line, library, inputs, outputs);
        }
    }
    return 0;
}
