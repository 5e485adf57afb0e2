/*
 * cuda_host.h: what src/gpu/cuda/sha256_leaf.cu needs from CUDA, in plain C, so the same kernel
 * source builds with the system C compiler. Shared by the kernel shim (tests/kernel_shim/shim.c)
 * and the fake CUDA driver (tests/fake_cuda/fake_cuda.c), which both run the kernel body once
 * per thread index. Define VR_THREAD_INDEX (the loop variable standing in for the thread index)
 * before including the kernel source.
 *
 * The CUDA qualifiers are defined away, uint4 and __byte_perm get plain C definitions with the
 * device's semantics, and the unrolling pragmas become nothing.
 */
#ifndef VR_CUDA_HOST_H
#define VR_CUDA_HOST_H

#define __global__
#define __device__
#define __constant__
#define __forceinline__ inline
#define __restrict__ restrict
#define VR_UNROLL
#define VR_NO_UNROLL

/* CUDA's uint4: four 32-bit words; a 16-byte load fills x..w from ascending addresses. */
typedef struct {
    unsigned int x, y, z, w;
} uint4;

/* CUDA __byte_perm(x, y, s): byte n of the result is byte (s >> 4n) & 7 of the 8-byte value
 * y:x (x holds bytes 0..3, y bytes 4..7). */
static inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s)
{
    const unsigned long long both = ((unsigned long long)y << 32) | (unsigned long long)x;
    unsigned int result = 0u;
    for (unsigned int n = 0u; n < 4u; ++n) {
        const unsigned int sel = (s >> (4u * n)) & 7u;
        result |= (unsigned int)((both >> (8u * sel)) & 0xffu) << (8u * n);
    }
    return result;
}

#endif
