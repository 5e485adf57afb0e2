/*
 * Host shim for src/gpu/cuda/sha256_leaf.cu: builds the CUDA kernel source with the system C
 * compiler so its SHA-256 can be tested on machines without a GPU (tests/it/leaf_kernel_host.rs).
 *
 * The CUDA qualifiers are defined away, uint4 and __byte_perm get plain C definitions with the
 * device's semantics (cuda_host.h, shared with the fake CUDA driver), and the thread index is a
 * variable that main() steps through every value of a rounded-up grid, like a launch would, so
 * the `t >= n` guard runs too.
 *
 * Usage (output on stdout, errors on stderr, exit status 0 only on success):
 *   shim leaves DATA_FILE CHUNK_SIZE BASE_OFFSET all
 *   shim leaves DATA_FILE CHUNK_SIZE BASE_OFFSET list INDEX...
 *       Hashes the leaves of the file's bytes (all of them, or the listed indices) and prints
 *       one lowercase hex hash per output slot, one per line. The bytes are placed BASE_OFFSET
 *       bytes past a 256-byte-aligned address (0 = like cuMemAlloc; 1..15 exercise the
 *       unaligned path). Guard bytes after the n * 32 output bytes must stay untouched.
 *   shim xor DATA_FILE OFFSET MASK
 *       Runs vr_xor_byte over a small grid and prints the resulting bytes as one hex line.
 *
 * Compile: cc -std=c11 -O2 -Wall -Wextra -fno-strict-aliasing shim.c -o shim
 * (-fno-strict-aliasing because the kernel reads byte buffers through uint4, as the device does).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_host.h"

/* The thread index the kernel body sees; main() steps it like a grid. */
static unsigned long long shim_thread_index;
#define VR_THREAD_INDEX shim_thread_index

#include "../../src/gpu/cuda/sha256_leaf.cu"

/* Threads per block of the simulated launch: the grid is rounded up to whole blocks. */
#define SHIM_BLOCK 128ull
#define SHIM_GUARD 64u
#define SHIM_GUARD_BYTE 0xa5u

static void die(const char* what)
{
    fprintf(stderr, "shim: %s\n", what);
    exit(2);
}

static unsigned long long parse_u64(const char* s)
{
    char* end = NULL;
    errno = 0;
    const unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-') {
        fprintf(stderr, "shim: not an unsigned number: %s\n", s);
        exit(2);
    }
    return v;
}

/* Reads the whole file into a buffer placed `offset` bytes past a 256-byte boundary; *base
 * receives the allocation to free. */
static unsigned char* read_file(const char* path, unsigned long long offset, unsigned long long* len, void** base)
{
    FILE* f = fopen(path, "rb");
    if (!f) {
        die("cannot open the data file");
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        die("cannot seek the data file");
    }
    const long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        die("cannot size the data file");
    }
    /* aligned_alloc wants a size that is a multiple of the alignment. */
    const size_t want = (size_t)size + (size_t)offset + 1u;
    const size_t total = (want + 255u) / 256u * 256u;
    *base = aligned_alloc(256u, total);
    if (!*base) {
        die("out of memory");
    }
    unsigned char* data = (unsigned char*)*base + offset;
    if (size > 0 && fread(data, 1u, (size_t)size, f) != (size_t)size) {
        die("short read of the data file");
    }
    fclose(f);
    *len = (unsigned long long)size;
    return data;
}

static int run_leaves(int argc, char** argv)
{
    if (argc < 6) {
        die("usage: shim leaves DATA_FILE CHUNK_SIZE BASE_OFFSET all|list INDEX...");
    }
    const unsigned long long chunk_size = parse_u64(argv[3]);
    const unsigned long long offset = parse_u64(argv[4]);
    if (offset > 255u) {
        die("BASE_OFFSET must be below 256");
    }
    void* base = NULL;
    unsigned long long len = 0;
    const unsigned char* data = read_file(argv[2], offset, &len, &base);

    unsigned long long* indices = NULL;
    unsigned long long n = 0;
    if (strcmp(argv[5], "all") == 0) {
        if (argc != 6) {
            die("`all` takes no indices");
        }
        n = chunk_size == 0u ? 0u : len / chunk_size + (len % chunk_size != 0u ? 1u : 0u);
    } else if (strcmp(argv[5], "list") == 0) {
        n = (unsigned long long)(argc - 6);
        indices = (unsigned long long*)malloc((size_t)n * sizeof *indices);
        if (!indices) {
            die("out of memory");
        }
        for (unsigned long long i = 0; i < n; ++i) {
            indices[i] = parse_u64(argv[6 + i]);
        }
    } else {
        die("expected `all` or `list`");
    }

    const size_t out_len = (size_t)n * 32u;
    unsigned char* out = (unsigned char*)malloc(out_len + SHIM_GUARD);
    if (!out) {
        die("out of memory");
    }
    memset(out, SHIM_GUARD_BYTE, out_len + SHIM_GUARD);

    /* A launch of ceil(n / block) blocks plus one spare block: every thread past n must leave
     * `out` alone. */
    const unsigned long long threads = (n + SHIM_BLOCK - 1u) / SHIM_BLOCK * SHIM_BLOCK + SHIM_BLOCK;
    for (shim_thread_index = 0; shim_thread_index < threads; ++shim_thread_index) {
        vr_sha256_leaves(data, len, chunk_size, indices, n, out);
    }
    for (size_t i = 0; i < SHIM_GUARD; ++i) {
        if (out[out_len + i] != SHIM_GUARD_BYTE) {
            die("a thread wrote past the n * 32 output bytes");
        }
    }

    for (size_t i = 0; i < out_len; ++i) {
        printf("%02x", out[i]);
        if (i % 32u == 31u) {
            putchar('\n');
        }
    }
    free(out);
    free(indices);
    free(base);
    return fflush(stdout) == 0 ? 0 : 2;
}

static int run_xor(int argc, char** argv)
{
    if (argc != 5) {
        die("usage: shim xor DATA_FILE OFFSET MASK");
    }
    const unsigned long long offset = parse_u64(argv[3]);
    const unsigned long long mask = parse_u64(argv[4]);
    if (mask > 255u) {
        die("MASK must be a byte");
    }
    void* base = NULL;
    unsigned long long len = 0;
    unsigned char* data = read_file(argv[2], 0u, &len, &base);
    if (offset >= len) {
        die("OFFSET must be inside the data");
    }
    /* A whole block of threads: only thread 0 may flip the byte. */
    for (shim_thread_index = 0; shim_thread_index < SHIM_BLOCK; ++shim_thread_index) {
        vr_xor_byte(data, offset, (unsigned char)mask);
    }
    for (unsigned long long i = 0; i < len; ++i) {
        printf("%02x", data[i]);
    }
    putchar('\n');
    free(base);
    return fflush(stdout) == 0 ? 0 : 2;
}

int main(int argc, char** argv)
{
    if (argc >= 2 && strcmp(argv[1], "leaves") == 0) {
        return run_leaves(argc, argv);
    }
    if (argc >= 2 && strcmp(argv[1], "xor") == 0) {
        return run_xor(argc, argv);
    }
    die("usage: shim leaves ... | shim xor ...");
    return 2;
}
