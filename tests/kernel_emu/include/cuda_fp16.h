/*
 * kernel_emu: __half for g++, bit-exact with CUDA's conversions (round to nearest even).
 */
#pragma once

#include "emu_bits.h"

#include <cstdint>

struct __half
{
    std::uint16_t bits;
};

inline float __half2float(__half value)
{
    std::uint32_t const sign = static_cast<std::uint32_t>(value.bits & 0x8000u) << 16;
    std::uint32_t exponent = (value.bits >> 10) & 0x1fu;
    std::uint32_t mantissa = value.bits & 0x3ffu;
    std::uint32_t bits = 0;
    if (exponent == 0x1f)
    {
        bits = sign | 0x7f800000u | (mantissa << 13); // infinity or NaN (payload kept)
    }
    else if (exponent != 0)
    {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    }
    else if (mantissa != 0)
    {
        exponent = 113; // subnormal: normalise
        while ((mantissa & 0x400u) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    else
    {
        bits = sign;
    }
    return emu::floatOf(bits);
}

inline __half __float2half_rn(float value)
{
    std::uint32_t const bits = emu::bitsOf(value);
    std::uint16_t const sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
    std::uint32_t const magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u)
    {
        return __half{static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu))}; // NaN stays NaN
    }
    if (magnitude >= 0x477ff000u)
    {
        return __half{static_cast<std::uint16_t>(sign | 0x7c00u)}; // rounds to infinity
    }
    std::int32_t const exponent = static_cast<std::int32_t>(magnitude >> 23) - 127;
    if (exponent < -25)
    {
        return __half{sign}; // below half the smallest subnormal: zero
    }
    std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    int const shift = exponent < -14 ? -exponent - 1 : 13; // subnormals keep fewer bits
    std::uint32_t const kept = mantissa >> shift;
    std::uint32_t const rest = mantissa & ((1u << shift) - 1);
    std::uint32_t const half = 1u << (shift - 1);
    std::uint32_t rounded = kept + (rest > half || (rest == half && (kept & 1u)) ? 1u : 0u);
    std::uint32_t const biased = exponent < -14 ? rounded : (static_cast<std::uint32_t>(exponent + 15) << 10) + (rounded - 0x400u);
    return __half{static_cast<std::uint16_t>(sign | biased)};
}
