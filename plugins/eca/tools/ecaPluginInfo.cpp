/*
 * ecaPluginInfo: what a TensorRT plugin library built from this folder offers, as JSON, without a GPU or
 * libnvinfer. It loads the library the way IPluginRegistry::loadLibrary() does (dlopen, setLoggerFinder,
 * getCreators) and talks to it through TensorRT's interfaces only.
 *
 *   ecaPluginInfo LIBRARY
 *       {"library", "creators": [{"name", "version", "namespace", "interface", "fields": [{"name", "type"}]}]}
 *
 *   ecaPluginInfo LIBRARY FIELD=VALUE...
 *       Also creates a plugin with the library's only V3 creator from these fields (build phase), then
 *       re-creates it from the fields it serializes (runtime phase) and clones it, and adds
 *       {"created", "serialized": [{"name", "type", "value"}], "recreated", "cloned", "metadata",
 *        "formats": [{"x": "kHALF/kHWC8", "weight": ["kHALF/kLINEAR"], "y": ["kHALF/kHWC8"]}, ...],
 *        "log": [{"severity", "message"}]}.
 *       VALUE is a string for kCHAR fields and comma-separated numbers for numeric ones.
 *
 * Exit status: 0 success, 1 the plugin could not be created or re-created, 2 bad usage or library.
 */
#include "../ecaPluginSchema.h"
#include "../ecaTensorRTNames.h"

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

using nvinfer1::DataType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;

constexpr int kEXIT_NOT_CREATED{1};
constexpr int kEXIT_USAGE{2};
constexpr char const* kV3_CREATOR_KIND{"PLUGIN CREATOR_V3ONE"};

using GetCreatorsFn = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
using SetLoggerFinderFn = void (*)(nvinfer1::ILoggerFinder*);

std::string json(std::string const& text)
{
    std::ostringstream out;
    out << '"';
    for (char const c : text)
    {
        switch (c)
        {
        case '"': out << "\\\""; break;
        case '\\': out << "\\\\"; break;
        case '\n': out << "\\n"; break;
        case '\t': out << "\\t"; break;
        default:
            if (static_cast<unsigned char>(c) < 0x20)
            {
                char escaped[8];
                std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned>(c));
                out << escaped;
            }
            else
            {
                out << c;
            }
        }
    }
    out << '"';
    return out.str();
}

std::string json(char const* text)
{
    return json(std::string(text != nullptr ? text : ""));
}

//! Field types named as the plugin's _PluginConfig.yaml names them.
std::string fieldTypeName(PluginFieldType type)
{
    switch (type)
    {
    case PluginFieldType::kFLOAT16: return "float16";
    case PluginFieldType::kFLOAT32: return "float32";
    case PluginFieldType::kFLOAT64: return "float64";
    case PluginFieldType::kINT8: return "int8";
    case PluginFieldType::kINT16: return "int16";
    case PluginFieldType::kINT32: return "int32";
    case PluginFieldType::kCHAR: return "char";
    case PluginFieldType::kDIMS: return "dims";
    case PluginFieldType::kUNKNOWN: return "unknown";
    case PluginFieldType::kBF16: return "bfloat16";
    case PluginFieldType::kINT64: return "int64";
    default: return "PluginFieldType(" + std::to_string(static_cast<int32_t>(type)) + ")";
    }
}

//! Keeps what the library logs at INFO and above (VERBOSE traces are for TensorRT's builds), to print it with
//! the results.
class CapturingLogger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override
    {
        if (severity == Severity::kVERBOSE)
        {
            return;
        }
        try
        {
            mMessages.push_back("{\"severity\": " + json(eca::names::severityName(severity)) + ", \"message\": "
                + json(msg) + "}");
        }
        catch (std::exception const&)
        {
            // Out of memory: drop the message.
        }
    }

    std::vector<std::string> const& messages() const
    {
        return mMessages;
    }

private:
    std::vector<std::string> mMessages;
};

class CapturingLoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return &mLogger;
    }

    CapturingLogger const& logger() const
    {
        return mLogger;
    }

private:
    CapturingLogger mLogger;
};

std::string joined(std::vector<std::string> const& items)
{
    std::string text;
    for (std::string const& item : items)
    {
        text += (text.empty() ? "" : ", ") + item;
    }
    return "[" + text + "]";
}

std::string creatorJson(nvinfer1::IPluginCreatorV3One& creator)
{
    std::vector<std::string> fields;
    nvinfer1::PluginFieldCollection const* const collection = creator.getFieldNames();
    for (int32_t i = 0; collection != nullptr && i < collection->nbFields; ++i)
    {
        PluginField const& field = collection->fields[i];
        fields.push_back(
            "{\"name\": " + json(field.name) + ", \"type\": " + json(fieldTypeName(field.type)) + "}");
    }
    return "{\"name\": " + json(creator.getPluginName()) + ", \"version\": " + json(creator.getPluginVersion())
        + ", \"namespace\": " + json(creator.getPluginNamespace()) + ", \"interface\": " + json(kV3_CREATOR_KIND)
        + ", \"fields\": " + joined(fields) + "}";
}

//! The value of one serialized field as JSON: a string for kCHAR, a list of numbers otherwise.
std::string fieldValueJson(PluginField const& field)
{
    if (field.type == PluginFieldType::kCHAR)
    {
        char const* const chars = static_cast<char const*>(field.data);
        return json(std::string(chars, std::find(chars, chars + field.length, '\0')));
    }
    std::vector<std::string> values;
    for (int32_t i = 0; i < field.length; ++i)
    {
        switch (field.type)
        {
        case PluginFieldType::kINT32:
            values.push_back(std::to_string(static_cast<int32_t const*>(field.data)[i]));
            break;
        case PluginFieldType::kFLOAT32:
            values.push_back(std::to_string(static_cast<float const*>(field.data)[i]));
            break;
        default:
            return json("<" + std::to_string(field.length) + " values of type " + fieldTypeName(field.type) + ">");
        }
    }
    return joined(values);
}

std::string serializedJson(nvinfer1::PluginFieldCollection const* collection)
{
    std::vector<std::string> fields;
    for (int32_t i = 0; collection != nullptr && i < collection->nbFields; ++i)
    {
        PluginField const& field = collection->fields[i];
        fields.push_back("{\"name\": " + json(field.name) + ", \"type\": " + json(fieldTypeName(field.type))
            + ", \"value\": " + fieldValueJson(field) + "}");
    }
    return joined(fields);
}

//! Field values from FIELD=VALUE arguments, typed after the creator's field list; owns the data the fields point to.
class FieldValues
{
public:
    FieldValues(FieldValues const&) = delete; // the fields point into this object
    FieldValues& operator=(FieldValues const&) = delete;

    FieldValues(nvinfer1::IPluginCreatorV3One& creator, std::vector<std::string> const& assignments)
    {
        nvinfer1::PluginFieldCollection const* const known = creator.getFieldNames();
        for (std::string const& assignment : assignments)
        {
            size_t const equals = assignment.find('=');
            if (equals == std::string::npos)
            {
                throw std::invalid_argument("expected FIELD=VALUE, got '" + assignment + "'");
            }
            std::string const name = assignment.substr(0, equals);
            PluginField const* field = nullptr;
            for (int32_t i = 0; known != nullptr && i < known->nbFields; ++i)
            {
                if (known->fields[i].name != nullptr && name == known->fields[i].name)
                {
                    field = &known->fields[i];
                }
            }
            if (field == nullptr)
            {
                throw std::invalid_argument("the creator has no field '" + name + "'");
            }
            mValues.push_back(Value{name, field->type, encode(field->type, assignment.substr(equals + 1))});
        }
        for (Value const& value : mValues)
        {
            int32_t const elementSize = value.type == PluginFieldType::kCHAR ? 1 : 4;
            mFields.emplace_back(value.name.c_str(), value.bytes.data(), value.type,
                static_cast<int32_t>(value.bytes.size()) / elementSize);
        }
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }

    nvinfer1::PluginFieldCollection const* collection() const
    {
        return &mCollection;
    }

private:
    struct Value
    {
        std::string name;
        PluginFieldType type;
        std::vector<char> bytes;
    };

    //! kCHAR: the string with its terminator; kINT32 and kFLOAT32: comma-separated numbers.
    static std::vector<char> encode(PluginFieldType type, std::string const& value)
    {
        if (type == PluginFieldType::kCHAR)
        {
            return std::vector<char>(value.c_str(), value.c_str() + value.size() + 1);
        }
        if (type != PluginFieldType::kINT32 && type != PluginFieldType::kFLOAT32)
        {
            throw std::invalid_argument("fields of type " + fieldTypeName(type) + " cannot be given here");
        }
        std::vector<char> bytes;
        std::stringstream items(value);
        for (std::string item; std::getline(items, item, ',');)
        {
            size_t used = 0;
            try
            {
                if (type == PluginFieldType::kINT32)
                {
                    int32_t const number = std::stoi(item, &used);
                    append(bytes, &number, sizeof(number));
                }
                else
                {
                    float const number = std::stof(item, &used);
                    append(bytes, &number, sizeof(number));
                }
            }
            catch (std::logic_error const&) // std::invalid_argument or std::out_of_range
            {
                used = 0;
            }
            if (used == 0 || used != item.size())
            {
                throw std::invalid_argument("'" + item + "' is not a valid " + fieldTypeName(type));
            }
        }
        return bytes;
    }

    static void append(std::vector<char>& bytes, void const* value, size_t size)
    {
        char const* const first = static_cast<char const*>(value);
        bytes.insert(bytes.end(), first, first + size);
    }

    std::vector<Value> mValues;
    std::vector<PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

void setDims(nvinfer1::DynamicPluginTensorDesc& tensor, std::vector<int64_t> const& dims)
{
    tensor.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    std::copy(dims.begin(), dims.end(), tensor.desc.dims.d);
}

//! The (type, format) pairs the plugin accepts for x, and for each the pairs it then accepts for weight and y,
//! asked the way the builder asks: x [N, 16, H, W] with N, H, W dynamic, weight [1, 1, k].
std::string formatsJson(nvinfer1::IPluginV3OneBuild& build)
{
    using namespace eca::schema;
    int32_t const yPos = kNB_INPUTS + kOUTPUT_Y;
    nvinfer1::DynamicPluginTensorDesc inOut[kNB_INPUTS + kNB_OUTPUTS]{};
    setDims(inOut[kINPUT_X], {-1, 16, -1, -1});
    setDims(inOut[kINPUT_WEIGHT], {1, 1, -1});
    setDims(inOut[yPos], {-1, 16, -1, -1});
    using TypeFormat = std::pair<DataType, TensorFormat>;
    auto const accepted = [&](int32_t pos) {
        std::vector<TypeFormat> pairs;
        for (int32_t t = 0; t < nvinfer1::EnumMax<DataType>(); ++t)
        {
            for (int32_t f = 0; f < nvinfer1::EnumMax<TensorFormat>(); ++f)
            {
                inOut[pos].desc.type = static_cast<DataType>(t);
                inOut[pos].desc.format = static_cast<TensorFormat>(f);
                if (build.supportsFormatCombination(pos, inOut, kNB_INPUTS, kNB_OUTPUTS))
                {
                    pairs.emplace_back(inOut[pos].desc.type, inOut[pos].desc.format);
                }
            }
        }
        return pairs;
    };
    auto const name = [](TypeFormat const& pair) {
        return json(eca::names::typeFormatName(pair.first, pair.second));
    };
    auto const names = [&name](std::vector<TypeFormat> const& pairs) {
        std::vector<std::string> items;
        for (TypeFormat const& pair : pairs)
        {
            items.push_back(name(pair));
        }
        return joined(items);
    };
    std::vector<std::string> combinations;
    for (TypeFormat const& x : accepted(kINPUT_X))
    {
        inOut[kINPUT_X].desc.type = x.first;
        inOut[kINPUT_X].desc.format = x.second;
        std::vector<TypeFormat> const weights = accepted(kINPUT_WEIGHT);
        std::vector<TypeFormat> outputs;
        if (!weights.empty())
        {
            inOut[kINPUT_WEIGHT].desc.type = weights.front().first;
            inOut[kINPUT_WEIGHT].desc.format = weights.front().second;
            outputs = accepted(yPos);
        }
        combinations.push_back("{" + json(kINPUT_NAMES[kINPUT_X]) + ": " + name(x) + ", "
            + json(kINPUT_NAMES[kINPUT_WEIGHT]) + ": " + names(weights) + ", " + json(kOUTPUT_NAMES[kOUTPUT_Y])
            + ": " + names(outputs) + "}");
    }
    return joined(combinations);
}

struct Deleter
{
    void operator()(nvinfer1::IPluginV3* plugin) const
    {
        delete plugin;
    }
};
using PluginPtr = std::unique_ptr<nvinfer1::IPluginV3, Deleter>;

//! Creates a plugin from `assignments`, round-trips it through its serialized fields and appends the results.
int createAndReport(nvinfer1::IPluginCreatorV3One& creator, std::vector<std::string> const& assignments,
    CapturingLoggerFinder const& finder, std::ostream& out)
{
    FieldValues const values(creator, assignments);
    PluginPtr const plugin{creator.createPlugin("ecaPluginInfo", values.collection(), nvinfer1::TensorRTPhase::kBUILD)};
    out << ", \"created\": " << (plugin ? "true" : "false");
    int status = plugin ? 0 : kEXIT_NOT_CREATED;
    if (plugin)
    {
        auto* const build = static_cast<nvinfer1::IPluginV3OneBuild*>(
            plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
        auto* const runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
            plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
        nvinfer1::PluginFieldCollection const* const serialized = runtime->getFieldsToSerialize();
        std::string const serializedText = serializedJson(serialized);
        PluginPtr const recreated{creator.createPlugin("ecaPluginInfo", serialized, nvinfer1::TensorRTPhase::kRUNTIME)};
        bool const roundTrip = recreated
            && serializedJson(static_cast<nvinfer1::IPluginV3OneRuntime*>(
                                  recreated->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))
                                  ->getFieldsToSerialize())
                == serializedText;
        PluginPtr const cloned{plugin->clone()};
        bool const cloneMatches = cloned
            && serializedJson(static_cast<nvinfer1::IPluginV3OneRuntime*>(
                                  cloned->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))
                                  ->getFieldsToSerialize())
                == serializedText;
        char const* const metadata = build->getMetadataString();
        out << ", \"serialized\": " << serializedText << ", \"recreated\": " << (roundTrip ? "true" : "false")
            << ", \"cloned\": " << (cloneMatches ? "true" : "false")
            << ", \"metadata\": " << json(metadata != nullptr ? metadata : "")
            << ", \"formats\": " << formatsJson(*build);
        status = roundTrip && cloneMatches ? 0 : kEXIT_NOT_CREATED;
    }
    out << ", \"log\": " << joined(finder.logger().messages());
    return status;
}

int run(int argc, char** argv)
{
    if (argc < 2 || std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0)
    {
        std::cerr << "usage: " << argv[0] << " PLUGIN_LIBRARY [FIELD=VALUE ...]\n"
                  << "Prints the TensorRT V3 plugin creators of a library as JSON; with FIELD=VALUE, also creates,\n"
                  << "serializes and re-creates a plugin with them.\n";
        return kEXIT_USAGE;
    }
    std::string const library = argv[1];
    void* const handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr)
    {
        std::cerr << "cannot load " << library << ": " << dlerror() << "\n";
        return kEXIT_USAGE;
    }
    auto const getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(handle, "getCreators"));
    auto const setLoggerFinder = reinterpret_cast<SetLoggerFinderFn>(dlsym(handle, "setLoggerFinder"));
    if (getCreators == nullptr)
    {
        std::cerr << library << " exports no getCreators(): not a library for IPluginRegistry::loadLibrary()\n";
        return kEXIT_USAGE;
    }
    static CapturingLoggerFinder sFinder;
    if (setLoggerFinder != nullptr)
    {
        setLoggerFinder(&sFinder);
    }

    int32_t nbCreators = 0;
    nvinfer1::IPluginCreatorInterface* const* const creators = getCreators(nbCreators);
    std::vector<nvinfer1::IPluginCreatorV3One*> v3Creators;
    for (int32_t i = 0; creators != nullptr && i < nbCreators; ++i)
    {
        // Like TensorRT, identify the creator version by its interface info: RTTI does not cross the library.
        if (creators[i] != nullptr && std::strcmp(creators[i]->getInterfaceInfo().kind, kV3_CREATOR_KIND) == 0)
        {
            v3Creators.push_back(static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]));
        }
    }
    std::vector<std::string> described;
    for (nvinfer1::IPluginCreatorV3One* creator : v3Creators)
    {
        described.push_back(creatorJson(*creator));
    }
    std::ostringstream out;
    out << "{\"library\": " << json(library) << ", \"creators\": " << joined(described);
    int status = 0;
    std::vector<std::string> const assignments(argv + 2, argv + argc);
    if (!assignments.empty())
    {
        if (v3Creators.size() != 1)
        {
            std::cerr << library << " has " << v3Creators.size() << " V3 creators; FIELD=VALUE needs exactly one\n";
            return kEXIT_USAGE;
        }
        status = createAndReport(*v3Creators.front(), assignments, sFinder, out);
    }
    out << "}";
    std::cout << out.str() << std::endl;
    return status;
}

} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(argc, argv);
    }
    catch (std::exception const& error)
    {
        std::cerr << "ecaPluginInfo: " << error.what() << "\n";
        return kEXIT_USAGE;
    }
}
