/*
 * EcaAttention TensorRT plugin: IPluginV3 (core, build and runtime capabilities) and its creator.
 */
#include "ecaPlugin.h"
#include "ecaPluginSchema.h"
#include "ecaTensorRTNames.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <sstream>

#include <strings.h>

namespace eca
{
namespace plugin
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;

constexpr int32_t kSUCCESS{0};
constexpr char const* kLOG_LEVEL_ENV{"ECA_PLUGIN_LOG"};
constexpr int32_t kFAILURE{-1};

//! Rank of x and y (N, C, H, W) and of weight (1, 1, kernel_size).
constexpr int32_t kX_RANK{4};
constexpr int32_t kWEIGHT_RANK{3};

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

//! Most verbose severity written to stderr when TensorRT gives the plugin no logger (TensorRT-RTX's finder
//! returns none): $ECA_PLUGIN_LOG = error, warning (default), info or verbose.
ILogger::Severity stderrThreshold() noexcept
{
    char const* const level = std::getenv(kLOG_LEVEL_ENV);
    for (auto severity : {ILogger::Severity::kERROR, ILogger::Severity::kWARNING, ILogger::Severity::kINFO,
             ILogger::Severity::kVERBOSE})
    {
        if (level != nullptr && strcasecmp(level, names::severityName(severity).c_str()) == 0)
        {
            return severity;
        }
    }
    return ILogger::Severity::kWARNING;
}

//! Log "EcaAttention: <parts...>" through TensorRT's logger, or to stderr up to stderrThreshold() when there is none.
template <typename... Parts>
void logMessage(ILogger::Severity severity, Parts const&... parts) noexcept
{
    try
    {
        std::ostringstream message;
        message << schema::kPLUGIN_NAME << ": ";
        (message << ... << parts);
        nvinfer1::ILoggerFinder* const finder = gLoggerFinder.load();
        ILogger* const logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, message.str().c_str());
        }
        else if (severity <= stderrThreshold())
        {
            std::fprintf(stderr, "[%s] %s\n", names::severityName(severity).c_str(), message.str().c_str());
        }
    }
    catch (std::exception const&)
    {
        // Out of memory while formatting: nothing more can be reported.
    }
}

template <typename... Parts>
void logError(Parts const&... parts) noexcept
{
    logMessage(ILogger::Severity::kERROR, parts...);
}

//! A VERBOSE trace of the answers the plugin gives TensorRT's builder (seen with a verbose TensorRT logger).
template <typename... Parts>
void logVerbose(Parts const&... parts) noexcept
{
    logMessage(ILogger::Severity::kVERBOSE, parts...);
}

//! One (TensorRT type, TensorRT format) pair the plugin accepts for x and y, and what it means to the kernel.
struct SupportedFormat
{
    DataType trtType;
    TensorFormat trtFormat;
    eca::DataType type;
    Layout layout;
    int32_t channelAlignment; //!< channels-last: pixel stride = C rounded up to this
};

//! TensorRT allows kHWC for FP32 only and kHWC8 for FP16/BF16 only; the kernel handles any pixel stride.
constexpr SupportedFormat kSUPPORTED_FORMATS[]{
    {DataType::kFLOAT, TensorFormat::kLINEAR, eca::DataType::kFLOAT, Layout::kNCHW, 1},
    {DataType::kFLOAT, TensorFormat::kHWC, eca::DataType::kFLOAT, Layout::kCHANNELS_LAST, 1},
    {DataType::kHALF, TensorFormat::kLINEAR, eca::DataType::kHALF, Layout::kNCHW, 1},
    {DataType::kHALF, TensorFormat::kHWC8, eca::DataType::kHALF, Layout::kCHANNELS_LAST, 8},
    {DataType::kBF16, TensorFormat::kLINEAR, eca::DataType::kBF16, Layout::kNCHW, 1},
    {DataType::kBF16, TensorFormat::kHWC8, eca::DataType::kBF16, Layout::kCHANNELS_LAST, 8},
};

SupportedFormat const* findFormat(DataType type, TensorFormat format) noexcept
{
    for (SupportedFormat const& supported : kSUPPORTED_FORMATS)
    {
        if (supported.trtType == type && supported.trtFormat == format)
        {
            return &supported;
        }
    }
    return nullptr;
}

bool isSupportedType(DataType type) noexcept
{
    for (SupportedFormat const& supported : kSUPPORTED_FORMATS)
    {
        if (supported.trtType == type)
        {
            return true;
        }
    }
    return false;
}

//! Pad modes by their schema names.
struct PadModeName
{
    char const* name;
    PadMode mode;
};

constexpr PadModeName kPAD_MODES[]{
    {schema::kPAD_MODE_CONSTANT, PadMode::kCONSTANT},
    {schema::kPAD_MODE_WRAP, PadMode::kWRAP},
};

std::optional<PadMode> parsePadMode(std::string const& name) noexcept
{
    for (PadModeName const& entry : kPAD_MODES)
    {
        if (name == entry.name)
        {
            return entry.mode;
        }
    }
    return std::nullopt;
}

char const* padModeName(PadMode mode) noexcept
{
    for (PadModeName const& entry : kPAD_MODES)
    {
        if (entry.mode == mode)
        {
            return entry.name;
        }
    }
    return "";
}

bool hasIoCounts(int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs == schema::kNB_INPUTS && nbOutputs == schema::kNB_OUTPUTS)
    {
        return true;
    }
    logError("expected ", schema::kNB_INPUTS, " inputs and ", schema::kNB_OUTPUTS, " output, got ", nbInputs,
        " and ", nbOutputs);
    return false;
}

//! Writes dims as "[d0, d1, ...]" to a log message.
struct DimsText
{
    Dims const& dims;
};

std::ostream& operator<<(std::ostream& out, DimsText const& text)
{
    out << '[';
    for (int32_t i = 0; i < text.dims.nbDims; ++i)
    {
        out << (i == 0 ? "" : ", ") << text.dims.d[i];
    }
    return out << ']';
}

//! Whether the (possibly partly unknown, -1) dims of `weight` can be [1, 1, kernelSize]; logs why not.
bool checkWeightDims(Dims const& dims, int32_t kernelSize) noexcept
{
    int64_t const expected[kWEIGHT_RANK]{1, 1, kernelSize};
    bool matches = dims.nbDims == kWEIGHT_RANK;
    for (int32_t i = 0; matches && i < kWEIGHT_RANK; ++i)
    {
        matches = dims.d[i] < 0 || dims.d[i] == expected[i];
    }
    if (!matches)
    {
        logError("input '", schema::kINPUT_NAMES[schema::kINPUT_WEIGHT], "' must have shape [1, 1, ",
            schema::kFIELD_KERNEL_SIZE, "] = [1, 1, ", kernelSize, "], got ", DimsText{dims});
    }
    return matches;
}

//! Kernel parameters for x of `dims`, `type` and `format`; logs and returns false for what the kernel cannot run.
bool toEcaParams(Dims const& dims, DataType type, TensorFormat format, int32_t kernelSize, PadMode padMode,
    EcaParams& params) noexcept
{
    SupportedFormat const* const supported = findFormat(type, format);
    if (supported == nullptr)
    {
        logError("unsupported type/format of input '", schema::kINPUT_NAMES[schema::kINPUT_X], "': ",
            names::typeFormatName(type, format));
        return false;
    }
    if (dims.nbDims != kX_RANK)
    {
        logError("input '", schema::kINPUT_NAMES[schema::kINPUT_X], "' must be 4-D (N, C, H, W), got ", dims.nbDims,
            "-D");
        return false;
    }
    int64_t const alignment = supported->channelAlignment;
    int64_t const pixelStride = (dims.d[1] + alignment - 1) / alignment * alignment;
    bool inRange = pixelStride <= std::numeric_limits<int32_t>::max();
    for (int32_t i = 0; i < kX_RANK; ++i)
    {
        inRange = inRange && dims.d[i] >= 0 && dims.d[i] <= std::numeric_limits<int32_t>::max();
    }
    if (!inRange)
    {
        logError("input '", schema::kINPUT_NAMES[schema::kINPUT_X], "' has shape ", DimsText{dims},
            "; every dimension (and C padded to the vector size) must be below 2^31");
        return false;
    }
    params.n = static_cast<int32_t>(dims.d[0]);
    params.c = static_cast<int32_t>(dims.d[1]);
    params.h = static_cast<int32_t>(dims.d[2]);
    params.w = static_cast<int32_t>(dims.d[3]);
    params.kernelSize = kernelSize;
    params.padMode = padMode;
    params.dataType = supported->type;
    params.layout = supported->layout;
    params.pixelStride = supported->layout == Layout::kNCHW ? 0 : static_cast<int32_t>(pixelStride);
    return true;
}

int64_t volume(Dims const& dims) noexcept
{
    int64_t count = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        count *= dims.d[i];
    }
    return count;
}

std::string metadata(int32_t kernelSize, PadMode padMode)
{
    std::ostringstream text;
    text << schema::kFIELD_KERNEL_SIZE << '=' << kernelSize << ',' << schema::kFIELD_PAD_MODE << '='
         << padModeName(padMode);
    return text.str();
}

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    nvinfer1::ILoggerFinder* unset = nullptr;
    if (finder != nullptr)
    {
        gLoggerFinder.compare_exchange_strong(unset, finder);
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// EcaPlugin

EcaPlugin::EcaPlugin(int32_t kernelSize, PadMode padMode)
    : mKernelSize(kernelSize)
    , mPadMode(padMode)
    , mMetadata(metadata(kernelSize, padMode))
{
}

EcaPlugin::EcaPlugin(EcaPlugin const& other)
    : EcaPlugin(other.mKernelSize, other.mPadMode)
{
}

nvinfer1::IPluginCapability* EcaPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

EcaPlugin* EcaPlugin::clone() noexcept
{
    try
    {
        return new EcaPlugin(*this);
    }
    catch (std::exception const& error)
    {
        logError("clone failed: ", error.what());
    }
    return nullptr;
}

char const* EcaPlugin::getPluginName() const noexcept
{
    return schema::kPLUGIN_NAME;
}

char const* EcaPlugin::getPluginVersion() const noexcept
{
    return schema::kPLUGIN_VERSION;
}

char const* EcaPlugin::getPluginNamespace() const noexcept
{
    return schema::kPLUGIN_NAMESPACE;
}

int32_t EcaPlugin::getNbOutputs() const noexcept
{
    return schema::kNB_OUTPUTS;
}

int32_t EcaPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || !hasIoCounts(nbInputs, nbOutputs))
    {
        return kFAILURE;
    }
    DataType const type = inputTypes[schema::kINPUT_X];
    if (!isSupportedType(type))
    {
        logError("input '", schema::kINPUT_NAMES[schema::kINPUT_X], "' must be FP32, FP16 or BF16, got ",
            names::dataTypeName(type));
        return kFAILURE;
    }
    outputTypes[schema::kOUTPUT_Y] = type;
    return kSUCCESS;
}

int32_t EcaPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || !hasIoCounts(nbInputs, nbOutputs))
    {
        return kFAILURE;
    }
    nvinfer1::DimsExprs const& x = inputs[schema::kINPUT_X];
    if (x.nbDims != kX_RANK)
    {
        logError("input '", schema::kINPUT_NAMES[schema::kINPUT_X], "' must be 4-D (N, C, H, W), got ", x.nbDims,
            "-D");
        return kFAILURE;
    }
    nvinfer1::DimsExprs const& weight = inputs[schema::kINPUT_WEIGHT];
    Dims weightDims{};
    weightDims.nbDims = weight.nbDims;
    for (int32_t i = 0; i < weight.nbDims && i < Dims::MAX_DIMS; ++i)
    {
        weightDims.d[i] = weight.d[i]->isConstant() ? weight.d[i]->getConstantValue() : -1;
    }
    if (!checkWeightDims(weightDims, mKernelSize))
    {
        return kFAILURE;
    }
    outputs[schema::kOUTPUT_Y] = x;
    return kSUCCESS;
}

bool EcaPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != schema::kNB_INPUTS || nbOutputs != schema::kNB_OUTPUTS || pos < 0
        || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    nvinfer1::PluginTensorDesc const& x = inOut[schema::kINPUT_X].desc;
    if (pos == schema::kINPUT_X)
    {
        bool const supported = desc.dims.nbDims == kX_RANK && findFormat(desc.type, desc.format) != nullptr;
        logVerbose("supportsFormatCombination: input '", schema::kINPUT_NAMES[schema::kINPUT_X], "' ",
            names::typeFormatName(desc.type, desc.format), supported ? " accepted" : " refused");
        return supported;
    }
    if (pos == schema::kINPUT_WEIGHT)
    {
        return desc.type == x.type && desc.format == TensorFormat::kLINEAR;
    }
    return desc.type == x.type && desc.format == x.format; // y
}

int32_t EcaPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || !hasIoCounts(nbInputs, nbOutputs))
    {
        return kFAILURE;
    }
    nvinfer1::DynamicPluginTensorDesc const& x = in[schema::kINPUT_X];
    logVerbose("configurePlugin: input '", schema::kINPUT_NAMES[schema::kINPUT_X], "' ",
        names::typeFormatName(x.desc.type, x.desc.format), " min ", DimsText{x.min}, " max ", DimsText{x.max},
        ", output ", names::typeFormatName(out[schema::kOUTPUT_Y].desc.type, out[schema::kOUTPUT_Y].desc.format));
    return checkWeightDims(in[schema::kINPUT_WEIGHT].desc.dims, mKernelSize) ? kSUCCESS : kFAILURE;
}

size_t EcaPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept
{
    if (inputs == nullptr || !hasIoCounts(nbInputs, nbOutputs))
    {
        return 0;
    }
    // Sized for the largest shape of the profile; the kernel's scratch grows with N and C.
    nvinfer1::DynamicPluginTensorDesc const& x = inputs[schema::kINPUT_X];
    EcaParams params{};
    if (!toEcaParams(x.max, x.desc.type, x.desc.format, mKernelSize, mPadMode, params))
    {
        return 0;
    }
    size_t const bytes = ecaWorkspaceSize(params);
    logVerbose("getWorkspaceSize: ", bytes, " bytes for input '", schema::kINPUT_NAMES[schema::kINPUT_X], "' max ",
        DimsText{x.max});
    return bytes;
}

char const* EcaPlugin::getTimingCacheID() noexcept
{
    return mMetadata.c_str();
}

char const* EcaPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

int32_t EcaPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || !hasIoCounts(nbInputs, nbOutputs))
    {
        return kFAILURE;
    }
    nvinfer1::PluginTensorDesc const& x = in[schema::kINPUT_X];
    EcaParams params{};
    bool const valid = toEcaParams(x.dims, x.type, x.format, mKernelSize, mPadMode, params)
        && checkWeightDims(in[schema::kINPUT_WEIGHT].dims, mKernelSize);
    return valid ? kSUCCESS : kFAILURE;
}

int32_t EcaPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        logError("enqueue called without tensor descriptions or pointers");
        return kFAILURE;
    }
    nvinfer1::PluginTensorDesc const& x = inputDesc[schema::kINPUT_X];
    nvinfer1::PluginTensorDesc const& weight = inputDesc[schema::kINPUT_WEIGHT];
    EcaParams params{};
    if (!toEcaParams(x.dims, x.type, x.format, mKernelSize, mPadMode, params))
    {
        return kFAILURE;
    }
    if (weight.type != x.type || volume(weight.dims) != mKernelSize)
    {
        logError("input '", schema::kINPUT_NAMES[schema::kINPUT_WEIGHT], "' must hold ", schema::kFIELD_KERNEL_SIZE,
            " = ", mKernelSize, " values of the type of '", schema::kINPUT_NAMES[schema::kINPUT_X], "', got ",
            volume(weight.dims), " of ", names::dataTypeName(weight.type));
        return kFAILURE;
    }
    if (volume(x.dims) == 0)
    {
        return kSUCCESS;
    }
    cudaError_t const status = ecaForward(params, inputs[schema::kINPUT_X], inputs[schema::kINPUT_WEIGHT],
        outputs[schema::kOUTPUT_Y], workspace, stream);
    if (status != cudaSuccess)
    {
        logError("ecaForward failed: ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")");
        return kFAILURE;
    }
    return kSUCCESS;
}

EcaPlugin* EcaPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

nvinfer1::PluginFieldCollection const* EcaPlugin::getFieldsToSerialize() noexcept
{
    char const* const padMode = padModeName(mPadMode);
    mSerializedFields[0] = PluginField(schema::kFIELD_KERNEL_SIZE, &mKernelSize, PluginFieldType::kINT32, 1);
    mSerializedFields[1] = PluginField(
        schema::kFIELD_PAD_MODE, padMode, PluginFieldType::kCHAR, static_cast<int32_t>(std::strlen(padMode) + 1));
    mSerializedFieldCollection.nbFields = static_cast<int32_t>(mSerializedFields.size());
    mSerializedFieldCollection.fields = mSerializedFields.data();
    return &mSerializedFieldCollection;
}

// ---------------------------------------------------------------------------------------------------------------------
// EcaPluginCreator

EcaPluginCreator::EcaPluginCreator() noexcept
    : mFields{PluginField(schema::kFIELD_KERNEL_SIZE, nullptr, PluginFieldType::kINT32, 1),
        PluginField(schema::kFIELD_PAD_MODE, nullptr, PluginFieldType::kCHAR, 0)}
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* EcaPluginCreator::getPluginName() const noexcept
{
    return schema::kPLUGIN_NAME;
}

char const* EcaPluginCreator::getPluginVersion() const noexcept
{
    return schema::kPLUGIN_VERSION;
}

char const* EcaPluginCreator::getPluginNamespace() const noexcept
{
    return schema::kPLUGIN_NAMESPACE;
}

nvinfer1::PluginFieldCollection const* EcaPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* EcaPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        std::string const layer = name != nullptr ? name : "";
        if (fc == nullptr || fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            logError("layer '", layer, "': no plugin fields given");
            return nullptr;
        }
        std::optional<int32_t> kernelSize;
        std::optional<PadMode> padMode;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            std::string const fieldName = field.name != nullptr ? field.name : "";
            if (fieldName == schema::kFIELD_KERNEL_SIZE)
            {
                if (field.type != PluginFieldType::kINT32 || field.length != 1 || field.data == nullptr)
                {
                    logError("layer '", layer, "': field '", fieldName, "' must be one kINT32 value");
                    return nullptr;
                }
                int32_t value{};
                std::memcpy(&value, field.data, sizeof(value));
                kernelSize = value;
            }
            else if (fieldName == schema::kFIELD_PAD_MODE)
            {
                if (field.type != PluginFieldType::kCHAR || field.length < 0 || field.data == nullptr)
                {
                    logError("layer '", layer, "': field '", fieldName, "' must be a kCHAR string");
                    return nullptr;
                }
                // Up to the first NUL: the ONNX parser counts the terminator in the length, Python users may not.
                char const* const chars = static_cast<char const*>(field.data);
                std::string const value(chars, std::find(chars, chars + field.length, '\0'));
                padMode = parsePadMode(value);
                if (!padMode)
                {
                    logError("layer '", layer, "': unknown ", fieldName, " '", value, "' (expected '",
                        schema::kPAD_MODE_CONSTANT, "' or '", schema::kPAD_MODE_WRAP, "')");
                    return nullptr;
                }
            }
            else
            {
                logMessage(
                    ILogger::Severity::kWARNING, "layer '", layer, "': ignoring unknown field '", fieldName, "'");
            }
        }
        if (!kernelSize || !padMode)
        {
            logError("layer '", layer, "': missing field '",
                !kernelSize ? schema::kFIELD_KERNEL_SIZE : schema::kFIELD_PAD_MODE, "'");
            return nullptr;
        }
        if (*kernelSize < 1 || *kernelSize % 2 == 0)
        {
            logError("layer '", layer, "': ", schema::kFIELD_KERNEL_SIZE, " must be odd and positive, got ",
                *kernelSize);
            return nullptr;
        }
        return new EcaPlugin(*kernelSize, *padMode);
    }
    catch (std::exception const& error)
    {
        logError("createPlugin failed: ", error.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace eca
