/*
 * EcaAttention TensorRT plugin (IPluginV3) and its creator (IPluginCreatorV3One).
 *
 *   y = x * sigmoid(conv1d_k(mean_hw(x)))   across channels, k = kernel_size taps from `weight`
 *
 * Inputs: x [N, C, H, W] (FP32, FP16 or BF16) and weight [1, 1, k] of x's type; output y, shaped and
 * typed like x. Fields: kernel_size (kINT32, odd, >= 1) and pad_mode (kCHAR, "constant" or "wrap").
 * Names, version and namespace come from ecaPluginSchema.h, generated from EcaAttention_PluginConfig.yaml.
 * The CUDA work is done by eca::ecaForward (ecaKernel.h), which knows nothing of TensorRT.
 */
#pragma once

#include "ecaKernel.h"

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <string>

namespace eca
{
namespace plugin
{

//! Route the library's log messages to the logger TensorRT's finder returns (the first non-null finder
//! wins). Messages logged while no finder (or no logger) is available go to stderr.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

class EcaPlugin : public nvinfer1::IPluginV3,
                  public nvinfer1::IPluginV3OneCore,
                  public nvinfer1::IPluginV3OneBuild,
                  public nvinfer1::IPluginV3OneRuntime
{
public:
    EcaPlugin(int32_t kernelSize, PadMode padMode);
    EcaPlugin(EcaPlugin const& other);
    EcaPlugin& operator=(EcaPlugin const&) = delete;
    ~EcaPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    EcaPlugin* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    EcaPlugin* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t mKernelSize;
    PadMode mPadMode;
    std::string mMetadata; //!< "kernel_size=K,pad_mode=MODE": metadata and timing-cache ID
    std::array<nvinfer1::PluginField, 2> mSerializedFields{};
    nvinfer1::PluginFieldCollection mSerializedFieldCollection{};
};

class EcaPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    EcaPluginCreator() noexcept;
    ~EcaPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;

    //! Validates the fields; on an invalid or missing one, logs an error and returns nullptr.
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::array<nvinfer1::PluginField, 2> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace eca
