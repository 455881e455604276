/*
 * Load-time registration for libeca_plugin_autoreg.so, the library for hosts that only dlopen() or
 * LD_PRELOAD a plugin library and never call IPluginRegistry::loadLibrary(): Triton's TensorRT backend
 * (`--backend-config=tensorrt,plugins=...`), DeepStream's `custom-lib-path`, `trtexec --staticPlugins`,
 * or an application linking the library. Its static initializer registers the creator with TensorRT's
 * global registry, so this library links libnvinfer (getPluginRegistry, getLogger). It exports no
 * getCreators(): loading it through loadLibrary() would register the creator twice.
 */
#include "ecaPlugin.h"

#include <string>

namespace
{

//! TensorRT's global logger: the one the registry and other standalone functions use.
class GlobalLoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return getLogger();
    }
};

struct Registration
{
    Registration()
    {
        static GlobalLoggerFinder sLoggerFinder;
        static eca::plugin::EcaPluginCreator sCreator;
        eca::plugin::setLoggerFinder(&sLoggerFinder);
        nvinfer1::IPluginRegistry* const registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(sCreator, sCreator.getPluginNamespace()))
        {
            nvinfer1::ILogger* const logger = getLogger();
            if (logger != nullptr)
            {
                std::string const message = std::string("Could not register plugin creator ")
                    + sCreator.getPluginNamespace() + "::" + sCreator.getPluginName() + " version "
                    + sCreator.getPluginVersion() + " (is another EcaAttention library loaded?)";
                logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
            }
        }
    }
};

Registration const gRegistration;

} // namespace
