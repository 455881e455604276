/*
 * Names of TensorRT enums as they are spelled in NvInfer headers ("kHALF", "kHWC8", "WARNING"), for the
 * plugin's log messages and the ecaPluginInfo tool's JSON. Header-only, TensorRT headers only.
 */
#pragma once

#include <NvInferRuntime.h>

#include <sstream>
#include <string>

namespace eca
{
namespace names
{

//! "DataType(12)" for an enumerator this header has no name for. (std::ostringstream, not std::to_string,
//! whose inline digit table would become an exported symbol of the plugin library.)
inline std::string numbered(char const* type, int32_t value)
{
    std::ostringstream text;
    text << type << '(' << value << ')';
    return text.str();
}

inline std::string dataTypeName(nvinfer1::DataType type)
{
    using nvinfer1::DataType;
    switch (type)
    {
    case DataType::kFLOAT: return "kFLOAT";
    case DataType::kHALF: return "kHALF";
    case DataType::kINT8: return "kINT8";
    case DataType::kINT32: return "kINT32";
    case DataType::kBOOL: return "kBOOL";
    case DataType::kUINT8: return "kUINT8";
    case DataType::kFP8: return "kFP8";
    case DataType::kBF16: return "kBF16";
    case DataType::kINT64: return "kINT64";
    default: return numbered("DataType", static_cast<int32_t>(type));
    }
}

inline std::string formatName(nvinfer1::TensorFormat format)
{
    using nvinfer1::TensorFormat;
    switch (format)
    {
    case TensorFormat::kLINEAR: return "kLINEAR";
    case TensorFormat::kCHW2: return "kCHW2";
    case TensorFormat::kHWC8: return "kHWC8";
    case TensorFormat::kCHW4: return "kCHW4";
    case TensorFormat::kCHW16: return "kCHW16";
    case TensorFormat::kCHW32: return "kCHW32";
    case TensorFormat::kDHWC8: return "kDHWC8";
    case TensorFormat::kCDHW32: return "kCDHW32";
    case TensorFormat::kHWC: return "kHWC";
    case TensorFormat::kDLA_LINEAR: return "kDLA_LINEAR";
    case TensorFormat::kDLA_HWC4: return "kDLA_HWC4";
    case TensorFormat::kHWC16: return "kHWC16";
    case TensorFormat::kDHWC: return "kDHWC";
    default: return numbered("TensorFormat", static_cast<int32_t>(format));
    }
}

//! "kHALF/kHWC8": a tensor's type and format together.
inline std::string typeFormatName(nvinfer1::DataType type, nvinfer1::TensorFormat format)
{
    return dataTypeName(type) + "/" + formatName(format);
}

inline std::string severityName(nvinfer1::ILogger::Severity severity)
{
    using Severity = nvinfer1::ILogger::Severity;
    switch (severity)
    {
    case Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case Severity::kERROR: return "ERROR";
    case Severity::kWARNING: return "WARNING";
    case Severity::kINFO: return "INFO";
    case Severity::kVERBOSE: return "VERBOSE";
    }
    return "UNKNOWN";
}

} // namespace names
} // namespace eca
