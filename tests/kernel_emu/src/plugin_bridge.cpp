/*
 * kernel_emu plugin bridge: EcaPlugin (plugins/eca/ecaPlugin.cpp, built with TensorRT's headers and the
 * emulator's CUDA headers) driven as TensorRT drives it, so the code between TensorRT and eca::ecaForward
 * runs on the CPU.
 *
 * Build, as TensorRT(-RTX)'s builder: the creator makes the plugin from its fields; it is asked for output
 * types, every format combination and configurePlugin / getWorkspaceSize with DynamicPluginTensorDesc whose
 * N, H and W are dynamic (-1) between 1 and the profile's largest shape. Run, as an execution context: a new
 * plugin from the fields getFieldsToSerialize() returns, attachToContext(), onShapeChange() and enqueue()
 * with the case's own shape and a workspace of the size the build asked for.
 */
#include "ecaPlugin.h"
#include "ecaPluginSchema.h"
#include "plugin_case.h"

#include <cstring>
#include <memory>

namespace
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IPluginV3;
using nvinfer1::IPluginV3OneBuild;
using nvinfer1::IPluginV3OneRuntime;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;
using nvinfer1::TensorRTPhase;

constexpr int32_t kSuccess = 0;
constexpr int32_t kInputs = 2;
constexpr int32_t kOutputs = 1;
constexpr char const* kLayerName = "eca_emu";

DataType typeOf(EmuPluginCase const& plugin)
{
    constexpr DataType kTypes[]{DataType::kFLOAT, DataType::kHALF, DataType::kBF16};
    return kTypes[plugin.dataType];
}

TensorFormat formatOf(EmuPluginCase const& plugin)
{
    if (plugin.channelsLast == 0)
    {
        return TensorFormat::kLINEAR;
    }
    return plugin.dataType == 0 ? TensorFormat::kHWC : TensorFormat::kHWC8;
}

Dims dimsOf(int64_t n, int64_t c, int64_t h, int64_t w)
{
    Dims dims{};
    dims.nbDims = 4;
    dims.d[0] = n;
    dims.d[1] = c;
    dims.d[2] = h;
    dims.d[3] = w;
    return dims;
}

Dims weightDims(EmuPluginCase const& plugin)
{
    Dims dims{};
    dims.nbDims = 3;
    dims.d[0] = 1;
    dims.d[1] = 1;
    dims.d[2] = plugin.kernelSize;
    return dims;
}

struct PluginDeleter
{
    void operator()(IPluginV3* plugin) const { delete plugin; }
};

using PluginPointer = std::unique_ptr<IPluginV3, PluginDeleter>;

PluginPointer create(PluginFieldCollection const& fields, TensorRTPhase phase)
{
    eca::plugin::EcaPluginCreator creator;
    return PluginPointer(creator.createPlugin(kLayerName, &fields, phase));
}

//! A build-phase plugin made from the case's fields, as the ONNX parser makes it.
PluginPointer createForBuild(EmuPluginCase const& plugin)
{
    int32_t const kernelSize = plugin.kernelSize;
    PluginField const fields[]{
        PluginField(eca::schema::kFIELD_KERNEL_SIZE, &kernelSize, PluginFieldType::kINT32, 1),
        PluginField(eca::schema::kFIELD_PAD_MODE, plugin.padMode, PluginFieldType::kCHAR,
            static_cast<int32_t>(std::strlen(plugin.padMode) + 1)),
    };
    PluginFieldCollection const collection{2, fields};
    return create(collection, TensorRTPhase::kBUILD);
}

template <typename Capability>
Capability* capability(IPluginV3& plugin, PluginCapabilityType type)
{
    return static_cast<Capability*>(plugin.getCapabilityInterface(type));
}

//! x, weight and y as the builder describes them: N, H and W dynamic up to the profile's largest shape.
struct BuildDescs
{
    DynamicPluginTensorDesc inOut[kInputs + kOutputs];

    explicit BuildDescs(EmuPluginCase const& plugin)
    {
        DataType const type = typeOf(plugin);
        DynamicPluginTensorDesc x{};
        x.desc = PluginTensorDesc{dimsOf(-1, plugin.c, -1, -1), type, formatOf(plugin), -1.F};
        x.min = dimsOf(1, plugin.c, 1, 1);
        x.opt = dimsOf(plugin.n, plugin.c, plugin.h, plugin.w);
        x.max = dimsOf(plugin.maxN, plugin.c, plugin.maxH, plugin.maxW);
        DynamicPluginTensorDesc weight{};
        weight.desc = PluginTensorDesc{weightDims(plugin), type, TensorFormat::kLINEAR, -1.F};
        weight.min = weight.opt = weight.max = weight.desc.dims;
        inOut[0] = x;
        inOut[1] = weight;
        inOut[2] = x;
    }
};

} // namespace

extern "C" long long emuPluginWorkspaceSize(EmuPluginCase const* plugin)
{
    PluginPointer const built = createForBuild(*plugin);
    auto* const build = built ? capability<IPluginV3OneBuild>(*built, PluginCapabilityType::kBUILD) : nullptr;
    if (build == nullptr)
    {
        return -1;
    }
    DataType const inputTypes[kInputs]{typeOf(*plugin), typeOf(*plugin)};
    DataType outputType{};
    BuildDescs const descs(*plugin);
    bool ok = build->getNbOutputs() == kOutputs
        && build->getOutputDataTypes(&outputType, kOutputs, inputTypes, kInputs) == kSuccess
        && outputType == typeOf(*plugin);
    for (int32_t pos = 0; ok && pos < kInputs + kOutputs; ++pos)
    {
        ok = build->supportsFormatCombination(pos, descs.inOut, kInputs, kOutputs);
    }
    ok = ok && build->configurePlugin(descs.inOut, kInputs, descs.inOut + kInputs, kOutputs) == kSuccess;
    return ok ? static_cast<long long>(build->getWorkspaceSize(descs.inOut, kInputs, descs.inOut + kInputs, kOutputs))
              : -1;
}

extern "C" int emuPluginEnqueue(EmuPluginCase const* plugin, void const* x, void const* weight, void* y, void* workspace)
{
    PluginPointer const built = createForBuild(*plugin);
    auto* const serializer = built ? capability<IPluginV3OneRuntime>(*built, PluginCapabilityType::kRUNTIME) : nullptr;
    PluginPointer const deserialized
        = serializer ? create(*serializer->getFieldsToSerialize(), TensorRTPhase::kRUNTIME) : nullptr;
    auto* const runtime
        = deserialized ? capability<IPluginV3OneRuntime>(*deserialized, PluginCapabilityType::kRUNTIME) : nullptr;
    PluginPointer const attached(runtime ? runtime->attachToContext(nullptr) : nullptr);
    auto* const context = attached ? capability<IPluginV3OneRuntime>(*attached, PluginCapabilityType::kRUNTIME) : nullptr;
    if (context == nullptr)
    {
        return -1;
    }
    DataType const type = typeOf(*plugin);
    PluginTensorDesc const xDesc{dimsOf(plugin->n, plugin->c, plugin->h, plugin->w), type, formatOf(*plugin), -1.F};
    PluginTensorDesc const inputs[kInputs]{xDesc, PluginTensorDesc{weightDims(*plugin), type, TensorFormat::kLINEAR, -1.F}};
    void const* const inputData[kInputs]{x, weight};
    void* const outputData[kOutputs]{y};
    if (context->onShapeChange(inputs, kInputs, &xDesc, kOutputs) != kSuccess)
    {
        return -1;
    }
    return context->enqueue(inputs, &xDesc, inputData, outputData, workspace, nullptr);
}
