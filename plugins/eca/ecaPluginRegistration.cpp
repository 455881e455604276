/*
 * Entry points of libeca_plugin.so, the library TensorRT loads itself: IPluginRegistry::loadLibrary()
 * (Python `trt.get_plugin_registry().load_library()`), `trtexec --dynamicPlugins`, and the lean runtime of
 * engines built with IBuilderConfig::setPluginsToSerialize(). TensorRT calls setLoggerFinder() and then
 * registers the creators getCreators() returns, so the library registers nothing by itself when loaded and
 * needs no symbol from libnvinfer.
 */
#include "ecaPlugin.h"

#define ECA_PLUGIN_API __attribute__((visibility("default")))

extern "C" ECA_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static eca::plugin::EcaPluginCreator sEcaCreator;
    static nvinfer1::IPluginCreatorInterface* const kCREATORS[]{&sEcaCreator};
    nbCreators = static_cast<int32_t>(sizeof(kCREATORS) / sizeof(kCREATORS[0]));
    return kCREATORS;
}

extern "C" ECA_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    eca::plugin::setLoggerFinder(finder);
}
