"""XXH3-64 in pure Python (stdlib only), bit-exact with the reference C implementation.

Why it exists: NVIDIA Dynamo's KV router hashes blocks with ``xxh3_64_with_seed(…, 1337)``;
to produce the same block hashes without a compiled dependency we implement the
algorithm from the public xxHash specification (scalar code path). All arithmetic is
modulo 2**64. When the optional ``xxhash`` package is importable, :func:`xxh3_64`
delegates to it (same results, ~8x faster per block); the pure code stays the
reference and is tested against Dynamo's ``compute_block_hash_for_seq`` when present.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable

_M64 = (1 << 64) - 1
_P32_1 = 0x9E3779B1
_P32_2 = 0x85EBCA77
_P32_3 = 0xC2B2AE3D
_P64_1 = 0x9E3779B185EBCA87
_P64_2 = 0xC2B2AE3D27D4EB4F
_P64_3 = 0x165667B19E3779F9
_P64_4 = 0x85EBCA77C2B2AE63
_P64_5 = 0x27D4EB2F165667C5
_PMX1 = 0x165667919E3779F9
_PMX2 = 0x9FB21C651E98DF25

#: The 192-byte default secret of XXH3 (from the public specification).
_K_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_STRIPE = 64
_ACC_INIT = (_P32_3, _P64_1, _P64_2, _P64_3, _P64_4, _P32_2, _P64_5, _P32_1)
_LE64 = struct.Struct("<Q")
_LE32 = struct.Struct("<I")


def _r64(buf: bytes, at: int) -> int:
    return int(_LE64.unpack_from(buf, at)[0])


def _r32(buf: bytes, at: int) -> int:
    return int(_LE32.unpack_from(buf, at)[0])


def _fold(lhs: int, rhs: int) -> int:
    """128-bit product of two u64, folded to 64 bits (low xor high)."""
    product = lhs * rhs
    return (product ^ (product >> 64)) & _M64


def _avalanche(h: int) -> int:
    h ^= h >> 37
    h = (h * _PMX1) & _M64
    return h ^ (h >> 32)


def _xxh64_avalanche(h: int) -> int:
    h ^= h >> 33
    h = (h * _P64_2) & _M64
    h ^= h >> 29
    h = (h * _P64_3) & _M64
    return h ^ (h >> 32)


def _rrmxmx(h: int, length: int) -> int:
    rot49 = ((h << 49) | (h >> 15)) & _M64
    rot24 = ((h << 24) | (h >> 40)) & _M64
    h ^= rot49 ^ rot24
    h = (h * _PMX2) & _M64
    h ^= (h >> 35) + length
    h = (h * _PMX2) & _M64
    return h ^ (h >> 28)


def _mix16(data: bytes, at: int, secret: bytes, s_at: int, seed: int) -> int:
    lo = _r64(data, at) ^ ((_r64(secret, s_at) + seed) & _M64)
    hi = _r64(data, at + 8) ^ ((_r64(secret, s_at + 8) - seed) & _M64)
    return _fold(lo, hi)


def _len_0to3(data: bytes, seed: int) -> int:
    n = len(data)
    if n == 0:
        return _xxh64_avalanche(seed ^ _r64(_K_SECRET, 56) ^ _r64(_K_SECRET, 64))
    combined = (data[0] << 16) | (data[n >> 1] << 24) | data[n - 1] | (n << 8)
    bitflip = ((_r32(_K_SECRET, 0) ^ _r32(_K_SECRET, 4)) + seed) & _M64
    return _xxh64_avalanche(combined ^ bitflip)


def _len_4to8(data: bytes, seed: int) -> int:
    n = len(data)
    low32 = seed & 0xFFFFFFFF
    seed ^= int.from_bytes(low32.to_bytes(4, "little"), "big") << 32
    input64 = _r32(data, n - 4) + (_r32(data, 0) << 32)
    bitflip = ((_r64(_K_SECRET, 8) ^ _r64(_K_SECRET, 16)) - seed) & _M64
    return _rrmxmx(input64 ^ bitflip, n)


def _len_9to16(data: bytes, seed: int) -> int:
    n = len(data)
    flip1 = ((_r64(_K_SECRET, 24) ^ _r64(_K_SECRET, 32)) + seed) & _M64
    flip2 = ((_r64(_K_SECRET, 40) ^ _r64(_K_SECRET, 48)) - seed) & _M64
    lo = _r64(data, 0) ^ flip1
    hi = _r64(data, n - 8) ^ flip2
    swapped = int.from_bytes(lo.to_bytes(8, "little"), "big")
    return _avalanche((n + swapped + hi + _fold(lo, hi)) & _M64)


def _len_17to128(data: bytes, seed: int) -> int:
    n = len(data)
    acc = (n * _P64_1) & _M64
    # Pairs (front offset, secret offset) used from the outside in, as in the reference.
    rounds = 1 + (n > 32) + (n > 64) + (n > 96)
    for i in range(rounds):
        acc += _mix16(data, 16 * i, _K_SECRET, 32 * i, seed)
        acc += _mix16(data, n - 16 * (i + 1), _K_SECRET, 32 * i + 16, seed)
    return _avalanche(acc & _M64)


def _len_129to240(data: bytes, seed: int) -> int:
    n = len(data)
    acc = (n * _P64_1) & _M64
    for i in range(8):
        acc += _mix16(data, 16 * i, _K_SECRET, 16 * i, seed)
    acc = _avalanche(acc & _M64)
    for i in range(8, n // 16):
        acc += _mix16(data, 16 * i, _K_SECRET, 16 * (i - 8) + 3, seed)
    acc += _mix16(data, n - 16, _K_SECRET, 136 - 17, seed)
    return _avalanche(acc & _M64)


def _custom_secret(seed: int) -> bytes:
    out = bytearray(len(_K_SECRET))
    for i in range(0, len(_K_SECRET), 16):
        _LE64.pack_into(out, i, (_r64(_K_SECRET, i) + seed) & _M64)
        _LE64.pack_into(out, i + 8, (_r64(_K_SECRET, i + 8) - seed) & _M64)
    return bytes(out)


def _accumulate_512(acc: list[int], data: bytes, at: int, secret: bytes, s_at: int) -> None:
    for lane in range(8):
        value = _r64(data, at + 8 * lane)
        key = value ^ _r64(secret, s_at + 8 * lane)
        acc[lane ^ 1] = (acc[lane ^ 1] + value) & _M64
        acc[lane] = (acc[lane] + (key & 0xFFFFFFFF) * (key >> 32)) & _M64


def _scramble(acc: list[int], secret: bytes, s_at: int) -> None:
    for lane in range(8):
        value = acc[lane]
        value ^= value >> 47
        value ^= _r64(secret, s_at + 8 * lane)
        acc[lane] = (value * _P32_1) & _M64


def _merge(acc: list[int], secret: bytes, s_at: int, start: int) -> int:
    result = start
    for i in range(4):
        result += _fold(acc[2 * i] ^ _r64(secret, s_at + 16 * i),
                        acc[2 * i + 1] ^ _r64(secret, s_at + 16 * i + 8))
    return _avalanche(result & _M64)


def _long(data: bytes, seed: int) -> int:
    secret = _custom_secret(seed) if seed else _K_SECRET
    n = len(data)
    acc = list(_ACC_INIT)
    stripes_per_block = (len(secret) - _STRIPE) // 8
    block_len = _STRIPE * stripes_per_block
    blocks = (n - 1) // block_len
    for b in range(blocks):
        for s in range(stripes_per_block):
            _accumulate_512(acc, data, b * block_len + s * _STRIPE, secret, 8 * s)
        _scramble(acc, secret, len(secret) - _STRIPE)
    tail_stripes = ((n - 1) - block_len * blocks) // _STRIPE
    for s in range(tail_stripes):
        _accumulate_512(acc, data, blocks * block_len + s * _STRIPE, secret, 8 * s)
    _accumulate_512(acc, data, n - _STRIPE, secret, len(secret) - _STRIPE - 7)
    return _merge(acc, secret, 11, (n * _P64_1) & _M64)


def xxh3_64_pure(data: bytes, seed: int = 0) -> int:
    """XXH3-64 of ``data`` with a 64-bit ``seed``, computed in pure Python."""
    seed &= _M64
    n = len(data)
    if n <= 3:
        return _len_0to3(data, seed)
    if n <= 8:
        return _len_4to8(data, seed)
    if n <= 16:
        return _len_9to16(data, seed)
    if n <= 128:
        return _len_17to128(data, seed)
    if n <= 240:
        return _len_129to240(data, seed)
    return _long(data, seed)


def _load_accelerator() -> Callable[[bytes, int], int] | None:
    """Return ``xxhash.xxh3_64_intdigest`` when the optional package is installed."""
    try:
        module = importlib.import_module("xxhash")
    except ImportError:
        return None
    function = getattr(module, "xxh3_64_intdigest", None)
    return function if callable(function) else None


_ACCELERATED = _load_accelerator()


def xxh3_64(data: bytes, seed: int = 0) -> int:
    """XXH3-64 of ``data``: the ``xxhash`` package when installed, else pure Python."""
    if _ACCELERATED is not None:
        return int(_ACCELERATED(data, seed & _M64))
    return xxh3_64_pure(data, seed)


def accelerated() -> bool:
    """Whether :func:`xxh3_64` uses the compiled ``xxhash`` package."""
    return _ACCELERATED is not None
