/*
 * sha256_leaf.cu: the RFC 6962 Merkle leaf hash, SHA-256(0x00 || chunk), for every leaf of a
 * shard at once, on the device that holds the shard. Verification then moves 32 bytes per leaf
 * across the bus instead of the whole shard (.specs/leaf-kernel.md says why and how fast).
 *
 * Compiled to PTX by NVRTC 12.0 (scripts/gen-ptx.sh writes sha256_leaf.ptx beside this file,
 * which the crate embeds; rerun it after any edit here, a test compares the recorded SHA-256).
 * NVRTC has no standard headers there: this file includes nothing and uses only what NVRTC
 * provides built in (uint4, __byte_perm, the CUDA qualifiers). The same file also compiles as
 * plain C under tests/kernel_shim/shim.c, which defines the qualifiers away, supplies uint4 and
 * __byte_perm (tests/kernel_shim/cuda_host.h), and runs the kernel body once per thread index in
 * a loop; tests/it/leaf_kernel_host.rs checks it against the `sha2` crate, and the fake CUDA
 * driver (tests/fake_cuda) runs that build for launches. Keep both builds working (no C++-only
 * syntax outside the VR_ macros below).
 *
 * ---------------------------------------------------------------------------------------------
 * LAUNCH CONTRACT
 *
 * extern "C" __global__ void vr_sha256_leaves(
 *     const unsigned char*      data,        device pointer to the shard's first byte
 *     unsigned long long        len,         shard length in bytes
 *     unsigned long long        chunk_size,  Merkle leaf size in bytes (the seal's chunk_size)
 *     const unsigned long long* indices,     device array of n leaf indices, or 0 (NULL) for
 *                                            "thread i hashes leaf i"
 *     unsigned long long        n,           number of leaf hashes to produce (threads that do
 *                                            work); for the NULL path, the shard's leaf count
 *                                            ceil(len / chunk_size)
 *     unsigned char*            out)         device buffer of n * 32 bytes; the hash for slot i
 *                                            (leaf i, or leaf indices[i]) goes to out + 32 * i
 *
 *   Grid: one thread per slot, 1-D. Thread index t = blockIdx.x * blockDim.x + threadIdx.x;
 *   threads with t >= n return at once, so round the grid up freely:
 *   gridDim.x = ceil(n / blockDim.x). Block size: 128 (one warp per scheduler of an SM) is the
 *   suggestion. With few, long leaves (16 GiB of 1 MiB chunks is 16384 threads = 128 blocks of
 *   128 on a 132-SM H200) a bigger block would stack warps on a few SMs and leave others idle;
 *   with many leaves any of 128/256 fills the device. Measure 64/128/256.
 *   No shared memory, no dynamic shared memory, stream of the caller's choice.
 *
 *   A slot whose leaf index is past the end of the shard (index * chunk_size >= len, or
 *   chunk_size == 0) gets 32 zero bytes, never a read out of bounds. The host validates
 *   indices anyway; a zero "hash" simply never matches a sealed leaf.
 *
 *   Alignment: a chunk is read with 16-byte loads (uint4) when its first byte is 16-byte
 *   aligned, which holds for every chunk when the base comes from cuMemAlloc (256-byte aligned)
 *   and chunk_size is a multiple of 16 (the crate's 4 KiB .. 64 MiB powers of two are). Any
 *   other chunk start is detected per leaf and read with byte loads: correct, only slower.
 *   `out` has no alignment requirement (32 byte stores per leaf).
 *
 * extern "C" __global__ void vr_xor_byte(
 *     unsigned char*     data,    device pointer to the allocation
 *     unsigned long long offset,  byte offset, < the allocation's length (the host checks)
 *     unsigned char      mask)    XOR mask (fault injection FlipBits)
 *
 *   Launch <<<1, 1>>>. Only thread 0 writes, so a bigger launch still flips the byte once.
 * ---------------------------------------------------------------------------------------------
 *
 * How a leaf is hashed. SHA-256 reads its message as big-endian 32-bit words. The message is
 * one 0x00 byte followed by the chunk, so message word j holds chunk bytes 4j-1 .. 4j+2: each
 * word straddles two aligned chunk words. Rather than copy bytes one at a time, a 64-byte
 * message block is built from four aligned uint4 loads (little-endian words raw[0..15]) and
 * the last raw word of the block before (`prev`, initially 0, whose top byte is then the 0x00
 * prefix): m[j] = __byte_perm(raw[j], raw[j-1], 0x7012), one byte-permute that both shifts by
 * one byte and converts to big-endian. Blocks are loaded one ahead so the next block's memory
 * reads are in flight while the current one is compressed. What is left after the last whole
 * 64-byte group of the chunk (fewer than 64 bytes, the padding and the bit length) is
 * assembled byte by byte into one or two final blocks.
 */

#ifdef __cplusplus
#define VR_EXTERN_C extern "C"
#else
#define VR_EXTERN_C
#endif

/* Global thread index; the host shim defines it as its loop variable. */
#ifndef VR_THREAD_INDEX
#define VR_THREAD_INDEX \
    ((unsigned long long)blockIdx.x * (unsigned long long)blockDim.x + (unsigned long long)threadIdx.x)
#endif

/* Loop unrolling hints; a C compiler does not know the pragma, so the shim defines these away. */
#ifndef VR_UNROLL
#define VR_UNROLL _Pragma("unroll")
#endif
#ifndef VR_NO_UNROLL
#define VR_NO_UNROLL _Pragma("unroll 1")
#endif

/* SHA-256 round constants (FIPS 180-4, 4.2.2). Read with compile-time indices only, so they
 * become constant-bank operands of the additions, not loads. */
static __constant__ const unsigned int vr_sha256_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

/* Rotate right by a compile-time amount in 1..31 (one funnel shift on the device). */
static __device__ __forceinline__ unsigned int vr_rotr(unsigned int x, unsigned int n)
{
    return (x >> n) | (x << (32u - n));
}

/* One SHA-256 compression of the 16 big-endian message words `m` into `st`. Fully unrolled:
 * the message schedule lives in a 16-word ring indexed by constants, so it stays in registers. */
static __device__ __forceinline__ void vr_sha256_compress(unsigned int st[8], const unsigned int m[16])
{
    unsigned int w[16];
    VR_UNROLL
    for (int i = 0; i < 16; ++i) {
        w[i] = m[i];
    }
    unsigned int a = st[0], b = st[1], c = st[2], d = st[3];
    unsigned int e = st[4], f = st[5], g = st[6], h = st[7];
    VR_UNROLL
    for (int i = 0; i < 64; ++i) {
        if (i >= 16) {
            const unsigned int w15 = w[(i - 15) & 15];
            const unsigned int w2 = w[(i - 2) & 15];
            const unsigned int s0 = vr_rotr(w15, 7u) ^ vr_rotr(w15, 18u) ^ (w15 >> 3);
            const unsigned int s1 = vr_rotr(w2, 17u) ^ vr_rotr(w2, 19u) ^ (w2 >> 10);
            w[i & 15] += s0 + w[(i - 7) & 15] + s1;
        }
        const unsigned int big_s1 = vr_rotr(e, 6u) ^ vr_rotr(e, 11u) ^ vr_rotr(e, 25u);
        const unsigned int ch = (e & f) ^ (~e & g);
        const unsigned int t1 = h + big_s1 + ch + vr_sha256_k[i] + w[i & 15];
        const unsigned int big_s0 = vr_rotr(a, 2u) ^ vr_rotr(a, 13u) ^ vr_rotr(a, 22u);
        const unsigned int maj = (a & b) ^ (a & c) ^ (b & c);
        const unsigned int t2 = big_s0 + maj;
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
    st[4] += e;
    st[5] += f;
    st[6] += g;
    st[7] += h;
}

/* Little-endian 32-bit word from four bytes (the unaligned fallback of vr_load64). */
static __device__ __forceinline__ unsigned int vr_le32(const unsigned char* p)
{
    return (unsigned int)p[0] | ((unsigned int)p[1] << 8) | ((unsigned int)p[2] << 16) |
           ((unsigned int)p[3] << 24);
}

/* The 64 bytes at p as sixteen little-endian words in q[0..3]: four 16-byte loads when p is
 * 16-byte aligned, byte loads otherwise. The flag is the same for every group of a leaf, so the
 * branch is taken once per group, around all four loads. */
static __device__ __forceinline__ void vr_load64(const unsigned char* __restrict__ p, int aligned, uint4 q[4])
{
    if (aligned) {
        const uint4* __restrict__ v = (const uint4*)p;
        VR_UNROLL
        for (int i = 0; i < 4; ++i) {
            q[i] = v[i];
        }
    } else {
        VR_UNROLL
        for (int i = 0; i < 4; ++i) {
            q[i].x = vr_le32(p + 16 * i);
            q[i].y = vr_le32(p + 16 * i + 4);
            q[i].z = vr_le32(p + 16 * i + 8);
            q[i].w = vr_le32(p + 16 * i + 12);
        }
    }
}

/* Big-endian message word whose top byte is the top (last) byte of little-endian word `before`
 * and whose other three bytes are the first three bytes of little-endian word `word`. */
static __device__ __forceinline__ unsigned int vr_shifted_be(unsigned int word, unsigned int before)
{
    return __byte_perm(word, before, 0x7012u);
}

/* SHA-256(0x00 || data[leaf * chunk_size .. min(len, (leaf + 1) * chunk_size))) to out[0..32];
 * 32 zero bytes when the leaf is past the end of the shard. */
static __device__ __forceinline__ void vr_leaf_hash(const unsigned char* __restrict__ data,
                                                    unsigned long long len,
                                                    unsigned long long chunk_size,
                                                    unsigned long long leaf,
                                                    unsigned char* __restrict__ out)
{
    /* Same rule as seal::merkle::chunk_range: a leaf exists when its first byte does. Written
     * without overflow: leaf < ceil(len / chunk_size) <=> leaf * chunk_size < len. */
    const unsigned long long leaves =
        chunk_size == 0ull ? 0ull : len / chunk_size + (len % chunk_size != 0ull ? 1ull : 0ull);
    if (leaf >= leaves) {
        VR_UNROLL
        for (int i = 0; i < 32; ++i) {
            out[i] = 0u;
        }
        return;
    }
    const unsigned long long start = leaf * chunk_size;
    const unsigned long long rest = len - start;
    const unsigned long long clen = rest < chunk_size ? rest : chunk_size;
    const unsigned char* __restrict__ p = data + start;
    const int aligned = (((unsigned long long)p) & 15ull) == 0ull;

    unsigned int st[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                          0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    unsigned int m[16];

    /* Whole 64-byte groups of the chunk. Message block k covers chunk bytes 64k-1 .. 64k+62,
     * loaded as 64k .. 64k+63 plus the byte carried in `prev`. */
    const unsigned long long groups = clen / 64ull;
    unsigned int prev = 0u; /* top byte = the next message byte: the 0x00 prefix at first */
    uint4 next[4] = {{0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}, {0u, 0u, 0u, 0u}};
    if (groups > 0ull) {
        vr_load64(p, aligned, next);
    }
    VR_NO_UNROLL
    for (unsigned long long k = 0ull; k < groups; ++k) {
        const uint4 c0 = next[0], c1 = next[1], c2 = next[2], c3 = next[3];
        if (k + 1ull < groups) {
            /* The next group's loads go out before this group's 64 rounds. */
            vr_load64(p + 64ull * (k + 1ull), aligned, next);
        }
        m[0] = vr_shifted_be(c0.x, prev);
        m[1] = vr_shifted_be(c0.y, c0.x);
        m[2] = vr_shifted_be(c0.z, c0.y);
        m[3] = vr_shifted_be(c0.w, c0.z);
        m[4] = vr_shifted_be(c1.x, c0.w);
        m[5] = vr_shifted_be(c1.y, c1.x);
        m[6] = vr_shifted_be(c1.z, c1.y);
        m[7] = vr_shifted_be(c1.w, c1.z);
        m[8] = vr_shifted_be(c2.x, c1.w);
        m[9] = vr_shifted_be(c2.y, c2.x);
        m[10] = vr_shifted_be(c2.z, c2.y);
        m[11] = vr_shifted_be(c2.w, c2.z);
        m[12] = vr_shifted_be(c3.x, c2.w);
        m[13] = vr_shifted_be(c3.y, c3.x);
        m[14] = vr_shifted_be(c3.z, c3.y);
        m[15] = vr_shifted_be(c3.w, c3.z);
        prev = c3.w;
        vr_sha256_compress(st, m);
    }

    /* The tail: the carried byte, the r < 64 chunk bytes after the last whole group, 0x80,
     * zeros, and the message length in bits (1 + clen bytes) as a big-endian u64 in the last
     * two words. That is one block when 1 + r + 1 + 8 <= 64, else two. Tail position `pos`
     * (0 = the carried byte) is chunk byte tail[pos - 1]; bytes are only read when pos <= r. */
    const unsigned char* tail = p + 64ull * groups;
    const unsigned int r = (unsigned int)(clen - 64ull * groups);
    const unsigned int carried = prev >> 24;
    const unsigned long long bits = (clen + 1ull) * 8ull;
    const unsigned int tail_blocks = r + 10u <= 64u ? 1u : 2u;
    VR_NO_UNROLL
    for (unsigned int tb = 0u; tb < tail_blocks; ++tb) {
        VR_UNROLL
        for (int wi = 0; wi < 16; ++wi) {
            unsigned int word = 0u;
            VR_UNROLL
            for (int bi = 0; bi < 4; ++bi) {
                const unsigned int pos = 64u * tb + 4u * (unsigned int)wi + (unsigned int)bi;
                unsigned int byte = 0u;
                if (pos == 0u) {
                    byte = carried;
                } else if (pos <= r) {
                    byte = tail[pos - 1u];
                } else if (pos == r + 1u) {
                    byte = 0x80u;
                }
                word = (word << 8) | byte;
            }
            m[wi] = word;
        }
        if (tb + 1u == tail_blocks) {
            m[14] = (unsigned int)(bits >> 32);
            m[15] = (unsigned int)bits;
        }
        vr_sha256_compress(st, m);
    }

    VR_UNROLL
    for (int i = 0; i < 8; ++i) {
        out[4 * i] = (unsigned char)(st[i] >> 24);
        out[4 * i + 1] = (unsigned char)(st[i] >> 16);
        out[4 * i + 2] = (unsigned char)(st[i] >> 8);
        out[4 * i + 3] = (unsigned char)st[i];
    }
}

/* One thread per output slot; see the launch contract at the top of this file. */
VR_EXTERN_C __global__ void vr_sha256_leaves(const unsigned char* __restrict__ data,
                                             unsigned long long len,
                                             unsigned long long chunk_size,
                                             const unsigned long long* __restrict__ indices,
                                             unsigned long long n,
                                             unsigned char* __restrict__ out)
{
    const unsigned long long t = VR_THREAD_INDEX;
    if (t >= n) {
        return;
    }
    const unsigned long long leaf = indices ? indices[t] : t;
    vr_leaf_hash(data, len, chunk_size, leaf, out + 32ull * t);
}

/* Fault injection (FlipBits): data[offset] ^= mask, by thread 0 only. */
VR_EXTERN_C __global__ void vr_xor_byte(unsigned char* data, unsigned long long offset, unsigned char mask)
{
    if (VR_THREAD_INDEX != 0ull) {
        return;
    }
    data[offset] = (unsigned char)(data[offset] ^ mask);
}
