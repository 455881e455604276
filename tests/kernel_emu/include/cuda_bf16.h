/*
 * kernel_emu: __nv_bfloat16 for g++, bit-exact with CUDA's conversions (round to nearest even).
 */
#pragma once

#include "emu_bits.h"

#include <cstdint>

struct __nv_bfloat16
{
    std::uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 value)
{
    return emu::floatOf(static_cast<std::uint32_t>(value.bits) << 16);
}

inline __nv_bfloat16 __float2bfloat16_rn(float value)
{
    std::uint32_t const bits = emu::bitsOf(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
    {
        return __nv_bfloat16{static_cast<std::uint16_t>((bits >> 16) | 0x40u)}; // NaN stays NaN (quiet)
    }
    std::uint32_t const roundingBias = 0x7fffu + ((bits >> 16) & 1u);
    return __nv_bfloat16{static_cast<std::uint16_t>((bits + roundingBias) >> 16)};
}
