/*
 * kernel_emu: a float's bits and back, for the half and bfloat16 conversions.
 */
#pragma once

#include <cstdint>
#include <cstring>

namespace emu
{

inline std::uint32_t bitsOf(float value)
{
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    return bits;
}

inline float floatOf(std::uint32_t bits)
{
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

} // namespace emu
