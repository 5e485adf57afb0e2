/*
 * fake_cuda.c: a hostile fake of the CUDA driver library (libcuda.so.1) for tests. Device memory
 * is host memory; the leaf kernel is the host C build of src/gpu/cuda/sha256_leaf.cu. Built by
 * scripts/fake-cuda.sh; what it models, its environment and its limits: .specs/fake-cuda.md.
 *
 * Hostile on purpose, so that a missing synchronisation fails a test here instead of on a GPU:
 *   - Asynchronous copies, memsets, launches and stream-ordered frees are queued on their
 *     stream and run only when that stream, an event recorded after them, or the context is
 *     synchronised (or a stream waiting on such an event is). A pinned buffer reused before
 *     its copy was waited for therefore uploads the new bytes; a pinned result read before the
 *     sync reads stale bytes. Copies from or to pageable memory behave as the real driver
 *     documents (the source is staged at the call; a copy to pageable memory returns when done).
 *   - Fresh device memory holds garbage (0xcd), never zeros.
 *   - Device addresses are not host addresses and are never reused, so a copy or a kernel that
 *     touches freed or foreign memory fails (CUDA_ERROR_ILLEGAL_ADDRESS, sticky) instead of
 *     reading whatever is there.
 *   - Every misuse is counted: a free with work still queued on the memory, a cuMemFree without
 *     a context synchronisation since the memory's last asynchronous use, a call that needs a
 *     context made with none current, memory never freed. They go to stderr at exit, or abort
 *     the process at once with VR_FAKE_CUDA_STRICT=1.
 *
 * One mutex guards all state; kernels run under it, on the synchronising thread.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernel_shim/cuda_host.h"

/* The thread index the kernel body sees while a launch runs. */
static __thread unsigned long long fake_thread_index;
#define VR_THREAD_INDEX fake_thread_index

#include "../../src/gpu/cuda/sha256_leaf.cu"

#define EXPORT __attribute__((visibility("default")))

/* ---------------------------------------------------------------------------------------------
 * The driver API's types and constants (the subset used, with the values of cuda.h).
 */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct fake_ctx* CUcontext;
typedef struct fake_stream* CUstream;
typedef struct fake_event* CUevent;
typedef struct fake_module* CUmodule;
typedef struct fake_function* CUfunction;
typedef struct {
    char bytes[16];
} CUuuid;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
    CUDA_ERROR_ECC_UNCORRECTABLE = 214,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_UNKNOWN = 999,
};

enum {
    CU_POINTER_ATTRIBUTE_CONTEXT = 1,
    CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2,
    CU_POINTER_ATTRIBUTE_IS_MANAGED = 8,
    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9,
};
enum { CU_MEMORYTYPE_HOST = 1, CU_MEMORYTYPE_DEVICE = 2 };

enum {
    CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 1,
    CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X = 2,
    CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X = 5,
    CU_DEVICE_ATTRIBUTE_WARP_SIZE = 10,
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
    CU_DEVICE_ATTRIBUTE_INTEGRATED = 18,
    CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY = 19,
    CU_DEVICE_ATTRIBUTE_ECC_ENABLED = 32,
    CU_DEVICE_ATTRIBUTE_PCI_BUS_ID = 33,
    CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING = 41,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY = 83,
    CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED = 115,
    CU_DEVICE_ATTRIBUTE_MAX = 125,
};

/* The CUDA version this driver reports (12.0, the R525 driver): the oldest the embedded PTX
 * must load on. PTX newer than its ISA is refused, as an old driver's JIT refuses it. */
#define FAKE_DRIVER_VERSION 12000
#define FAKE_PTX_ISA_MAX_MAJOR 8
#define FAKE_PTX_ISA_MAX_MINOR 0
/* Compute capability 8.0 (Ampere): PTX for a newer target does not load. */
#define FAKE_CC_MAJOR 8
#define FAKE_CC_MINOR 0

#define FAKE_MAX_DEVICES 16
/* Device address space: device d's allocations start at FAKE_VA_BASE + d * FAKE_VA_SPAN and
 * are never reused; nothing host-side lives there. */
#define FAKE_VA_BASE 0x100000000000ull
#define FAKE_VA_SPAN 0x010000000000ull
#define FAKE_GARBAGE 0xcd
/* The oom fault: allocations above this size fail. */
#define FAKE_OOM_ABOVE (1ull << 20)

/* ---------------------------------------------------------------------------------------------
 * State.
 */
enum fault {
    FAULT_NONE,
    FAULT_OOM,
    FAULT_HOST_MEMORY,
    FAULT_MANAGED,
    FAULT_INTEGRATED,
    FAULT_LAUNCH_FAIL,
    FAULT_KERNEL_WRONG,
    FAULT_ECC,
};

enum alloc_kind { ALLOC_DEVICE, ALLOC_STREAM_ORDERED };

struct alloc {
    int device;
    enum alloc_kind kind;
    CUdeviceptr va;
    size_t size;
    unsigned char* host;
    /* The host wrote into it (a host-to-device copy or memset ran). */
    int host_written;
    /* Sequence number of the last asynchronous operation queued on it. */
    unsigned long long last_async_use;
    struct alloc* next;
};

struct pinned {
    unsigned char* host;
    size_t size;
    int device;
    struct pinned* next;
};

enum op_kind { OP_HTOD, OP_DTOH, OP_DTOD, OP_MEMSET, OP_LAUNCH, OP_WAIT, OP_FREE };

enum kernel_id { KERNEL_LEAVES = 1, KERNEL_XOR = 2 };

struct op {
    enum op_kind kind;
    CUdeviceptr dst;
    CUdeviceptr src;
    unsigned char* host;     /* pinned host end of a copy */
    unsigned char* snapshot; /* staged pageable source of a host-to-device copy */
    size_t n;
    unsigned char value;
    /* OP_LAUNCH */
    enum kernel_id kernel;
    int wrong; /* kernel-wrong: this launch writes wrong digests */
    unsigned long long args[6];
    unsigned long long threads;
    /* OP_WAIT */
    struct fake_stream* wait_stream;
    unsigned long long wait_pos;
};

struct fake_stream {
    struct fake_ctx* ctx;
    int destroyed;
    int refs; /* events and waits that point here */
    struct op* ops;
    size_t first, len, cap;
    unsigned long long base; /* sequence of ops[0] within the stream */
    struct fake_stream* next;
};

struct fake_ctx {
    int device;
    int refcount;
    unsigned long long last_sync;
    struct fake_stream default_stream;
};

struct fake_event {
    struct fake_ctx* ctx;
    struct fake_stream* stream; /* NULL until recorded */
    unsigned long long pos;
    int queried;
};

struct fake_module {
    struct fake_ctx* ctx;
    int has_leaves;
    int has_xor;
};

struct fake_function {
    struct fake_module* module;
    enum kernel_id kernel;
};

struct device {
    struct fake_ctx ctx;
    unsigned long long used;
    CUdeviceptr next_va;
    int lost;         /* sticky error: every later call on the device fails with `sticky` */
    CUresult sticky;
    int ecc_armed;    /* ecc fault: a read of host-written cuMemAlloc memory has completed */
    unsigned long long launches;
    unsigned long long leaked_on_loss;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialised;
static int device_count = 2;
static unsigned long long mem_bytes = 1ull << 30;
static enum fault fault;
static int strict;
/* launch-fail and kernel-wrong: launches per device that behave before the fault strikes. */
static unsigned long long fault_after;
static struct device devices[FAKE_MAX_DEVICES];
static struct alloc* allocs;
static struct pinned* pinned_list;
static struct fake_stream* streams;
static unsigned long long seq;
static __thread struct fake_ctx* current;

/* Misuse counters, reported at exit. */
static unsigned long long n_free_with_queued_work;
static unsigned long long n_free_without_ctx_sync;
static unsigned long long n_free_in_other_ctx;
static unsigned long long n_call_without_ctx;
static unsigned long long n_ctx_released_with_memory;

static void misuse(unsigned long long* counter, const char* fmt, ...)
{
    ++*counter;
    va_list ap;
    va_start(ap, fmt);
    fputs("fake CUDA driver: misuse: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (strict) {
        fputs("fake CUDA driver: VR_FAKE_CUDA_STRICT=1, aborting\n", stderr);
        abort();
    }
}

/* ---------------------------------------------------------------------------------------------
 * Lookups.
 */
static struct alloc* find_alloc(CUdeviceptr va)
{
    for (struct alloc* a = allocs; a; a = a->next) {
        if (va >= a->va && va - a->va < a->size) {
            return a;
        }
    }
    return NULL;
}

/* Host bytes behind [va, va + n), all inside one live allocation; NULL otherwise. */
static unsigned char* device_bytes(CUdeviceptr va, size_t n, struct alloc** out)
{
    struct alloc* a = find_alloc(va);
    if (!a || n > a->size - (size_t)(va - a->va)) {
        return NULL;
    }
    if (out) {
        *out = a;
    }
    return a->host + (va - a->va);
}

static struct pinned* find_pinned(const void* p, size_t n)
{
    const unsigned char* b = (const unsigned char*)p;
    for (struct pinned* q = pinned_list; q; q = q->next) {
        if (b >= q->host && b < q->host + q->size) {
            return (size_t)(q->host + q->size - b) >= n ? q : NULL;
        }
    }
    return NULL;
}

static int device_of_va(CUdeviceptr va)
{
    if (va < FAKE_VA_BASE) {
        return -1;
    }
    const unsigned long long d = (va - FAKE_VA_BASE) / FAKE_VA_SPAN;
    return d < (unsigned long long)device_count ? (int)d : -1;
}

static int ctx_valid(struct fake_ctx* c)
{
    for (int d = 0; d < device_count; ++d) {
        if (c == &devices[d].ctx) {
            return c->refcount > 0;
        }
    }
    return 0;
}

static int stream_valid(struct fake_stream* s)
{
    for (struct fake_stream* t = streams; t; t = t->next) {
        if (t == s) {
            return !t->destroyed;
        }
    }
    return 0;
}

/* The stream a handle names in the current context: NULL and the per-thread handle (0x2) are
 * the context's default stream. */
static struct fake_stream* resolve_stream(CUstream s)
{
    if (s == NULL || (uintptr_t)s == 0x1 || (uintptr_t)s == 0x2) {
        return current ? &current->default_stream : NULL;
    }
    return stream_valid(s) ? s : NULL;
}

/* The current context, or NULL after counting a call made without one. */
static struct fake_ctx* need_ctx(const char* call)
{
    if (current && ctx_valid(current)) {
        return current;
    }
    misuse(&n_call_without_ctx, "%s called without a current context", call);
    return NULL;
}

/* CUDA_SUCCESS, or the sticky error of a lost device. */
static CUresult device_ok(int device)
{
    if (device >= 0 && device < device_count && devices[device].lost) {
        return devices[device].sticky;
    }
    return CUDA_SUCCESS;
}

static void lose_device(int device, CUresult why)
{
    if (!devices[device].lost) {
        devices[device].lost = 1;
        devices[device].sticky = why;
        fprintf(stderr, "fake CUDA driver: device %d lost (error %d)\n", device, why);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Streams and the work queued on them.
 */
static void stream_init(struct fake_stream* s, struct fake_ctx* ctx)
{
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
}

static unsigned long long stream_enqueued(const struct fake_stream* s)
{
    return s->base + s->len;
}

static unsigned long long stream_done(const struct fake_stream* s)
{
    return s->base + s->first;
}

static CUresult enqueue(struct fake_stream* s, const struct op* op)
{
    if (s->len == s->cap) {
        const size_t cap = s->cap ? s->cap * 2u : 16u;
        struct op* ops = realloc(s->ops, cap * sizeof *ops);
        if (!ops) {
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        s->ops = ops;
        s->cap = cap;
    }
    s->ops[s->len++] = *op;
    ++seq;
    return CUDA_SUCCESS;
}

static void mark_use(CUdeviceptr va)
{
    struct alloc* a = find_alloc(va);
    if (a) {
        a->last_async_use = seq + 1u;
    }
}

static int op_is_work(const struct op* op)
{
    return op->kind != OP_WAIT && op->kind != OP_FREE;
}

static int op_touches(const struct op* op, CUdeviceptr lo, size_t size)
{
    const CUdeviceptr hi = lo + size;
    switch (op->kind) {
    case OP_HTOD:
    case OP_MEMSET:
        return op->dst < hi && op->dst + op->n > lo;
    case OP_DTOH:
        return op->src < hi && op->src + op->n > lo;
    case OP_DTOD:
        return (op->dst < hi && op->dst + op->n > lo) || (op->src < hi && op->src + op->n > lo);
    case OP_LAUNCH:
        for (int i = 0; i < 6; ++i) {
            if (op->args[i] >= lo && op->args[i] < hi) {
                return 1;
            }
        }
        return 0;
    case OP_FREE:
        return op->dst >= lo && op->dst < hi;
    case OP_WAIT:
        return 0;
    }
    return 0;
}

static int op_touches_host(const struct op* op, const unsigned char* lo, size_t size)
{
    return op->host && op->host < lo + size && op->host + op->n > lo;
}

/* Whether any stream still has work queued that touches the allocation (skipping `except`, the
 * free being executed). */
static int queued_on_alloc(const struct alloc* a, const struct op* except)
{
    for (struct fake_stream* s = streams; s; s = s->next) {
        for (size_t i = s->first; i < s->len; ++i) {
            if (&s->ops[i] != except && op_touches(&s->ops[i], a->va, a->size)) {
                return 1;
            }
        }
    }
    for (int d = 0; d < device_count; ++d) {
        struct fake_stream* s = &devices[d].ctx.default_stream;
        for (size_t i = s->first; i < s->len; ++i) {
            if (&s->ops[i] != except && op_touches(&s->ops[i], a->va, a->size)) {
                return 1;
            }
        }
    }
    return 0;
}

static int queued_on_host(const unsigned char* p, size_t size)
{
    for (struct fake_stream* s = streams; s; s = s->next) {
        for (size_t i = s->first; i < s->len; ++i) {
            if (op_touches_host(&s->ops[i], p, size)) {
                return 1;
            }
        }
    }
    for (int d = 0; d < device_count; ++d) {
        struct fake_stream* s = &devices[d].ctx.default_stream;
        for (size_t i = s->first; i < s->len; ++i) {
            if (op_touches_host(&s->ops[i], p, size)) {
                return 1;
            }
        }
    }
    return 0;
}

static void release_alloc(struct alloc* a, int keep_host)
{
    for (struct alloc** p = &allocs; *p; p = &(*p)->next) {
        if (*p == a) {
            *p = a->next;
            break;
        }
    }
    devices[a->device].used -= a->size;
    if (!keep_host) {
        free(a->host);
    }
    free(a);
}

/* The ecc fault: memory that the host wrote and a read then found bad. */
static void note_read(struct alloc* a)
{
    if (fault == FAULT_ECC && a && a->device == 0 && a->kind == ALLOC_DEVICE && a->host_written) {
        devices[0].ecc_armed = 1;
    }
}

static CUresult run_stream_until(struct fake_stream* s, unsigned long long pos);

static CUresult run_launch(const struct op* op)
{
    if (op->kernel == KERNEL_XOR) {
        struct alloc* a = NULL;
        unsigned char* data = device_bytes(op->args[0] + op->args[1], 1u, &a);
        if (!data) {
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
        unsigned char* base = data - op->args[1];
        for (fake_thread_index = 0; fake_thread_index < op->threads; ++fake_thread_index) {
            vr_xor_byte(base, op->args[1], (unsigned char)op->args[2]);
        }
        return CUDA_SUCCESS;
    }
    const unsigned long long len = op->args[1], chunk = op->args[2], n = op->args[4];
    struct alloc* source = NULL;
    const unsigned char* data = device_bytes(op->args[0], (size_t)len, &source);
    const unsigned long long* indices = NULL;
    if (op->args[3] != 0u) {
        indices = (const unsigned long long*)device_bytes(op->args[3], (size_t)(n * 8u), NULL);
        if (!indices) {
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
    }
    unsigned char* out = device_bytes(op->args[5], (size_t)(n * 32u), NULL);
    if (!data || !out) {
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    note_read(source);
    for (fake_thread_index = 0; fake_thread_index < op->threads; ++fake_thread_index) {
        vr_sha256_leaves(data, len, chunk, indices, n, out);
    }
    if (op->wrong) {
        for (unsigned long long t = 0; t < n; ++t) {
            out[32u * t] ^= 0x01u;
        }
    }
    return CUDA_SUCCESS;
}

static CUresult run_op(struct fake_stream* s, struct op* op)
{
    struct alloc* a = NULL;
    switch (op->kind) {
    case OP_HTOD: {
        unsigned char* dst = device_bytes(op->dst, op->n, &a);
        if (!dst) {
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
        memcpy(dst, op->snapshot ? op->snapshot : op->host, op->n);
        a->host_written = 1;
        return CUDA_SUCCESS;
    }
    case OP_DTOH: {
        const unsigned char* src = device_bytes(op->src, op->n, &a);
        if (!src) {
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
        note_read(a);
        memcpy(op->host, src, op->n);
        return CUDA_SUCCESS;
    }
    case OP_DTOD: {
        struct alloc* from = NULL;
        const unsigned char* src = device_bytes(op->src, op->n, &from);
        unsigned char* dst = device_bytes(op->dst, op->n, &a);
        if (!src || !dst) {
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
        note_read(from);
        memmove(dst, src, op->n);
        return CUDA_SUCCESS;
    }
    case OP_MEMSET: {
        unsigned char* dst = device_bytes(op->dst, op->n, &a);
        if (!dst) {
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
        memset(dst, op->value, op->n);
        return CUDA_SUCCESS;
    }
    case OP_LAUNCH:
        return run_launch(op);
    case OP_WAIT: {
        CUresult r = run_stream_until(op->wait_stream, op->wait_pos);
        op->wait_stream->refs--;
        return r;
    }
    case OP_FREE: {
        a = find_alloc(op->dst);
        if (!a || a->va != op->dst) {
            return CUDA_ERROR_ILLEGAL_ADDRESS;
        }
        (void)s;
        if (queued_on_alloc(a, op)) {
            misuse(&n_free_with_queued_work,
                   "stream-ordered free of %zu bytes on device %d while other streams still have work "
                   "queued on them",
                   a->size, a->device);
            /* Keep the bytes so that queued work stays memory-safe; the address is gone. */
            release_alloc(a, 1);
        } else {
            release_alloc(a, 0);
        }
        return CUDA_SUCCESS;
    }
    }
    return CUDA_ERROR_UNKNOWN;
}

static void maybe_reclaim_stream(struct fake_stream* s);

/* Runs the stream's queued operations up to stream position `pos`. */
static CUresult run_stream_until(struct fake_stream* s, unsigned long long pos)
{
    const int device = s->ctx->device;
    CUresult r = device_ok(device);
    if (r != CUDA_SUCCESS) {
        return r;
    }
    while (stream_done(s) < pos && s->first < s->len) {
        struct op* op = &s->ops[s->first];
        r = run_op(s, op);
        free(op->snapshot);
        op->snapshot = NULL;
        s->first++;
        if (r != CUDA_SUCCESS) {
            lose_device(device, r);
            return r;
        }
    }
    if (s->first == s->len) {
        s->base += s->len;
        s->first = s->len = 0;
    }
    return CUDA_SUCCESS;
}

/* Whether the work up to `pos` on `s` includes copies, memsets or launches. */
static int stream_has_work(const struct fake_stream* s, unsigned long long pos)
{
    for (size_t i = s->first; i < s->len && s->base + i < pos; ++i) {
        if (op_is_work(&s->ops[i])) {
            return 1;
        }
    }
    return 0;
}

/* A synchronisation: the ecc fault strikes at the first one that has work to do after a read of
 * host-written memory completed. */
static CUresult sync_point(struct fake_stream* s, unsigned long long pos)
{
    const int device = s->ctx->device;
    CUresult r = device_ok(device);
    if (r != CUDA_SUCCESS) {
        return r;
    }
    if (fault == FAULT_ECC && device == 0 && devices[0].ecc_armed && stream_has_work(s, pos)) {
        lose_device(0, CUDA_ERROR_ECC_UNCORRECTABLE);
        return CUDA_ERROR_ECC_UNCORRECTABLE;
    }
    return run_stream_until(s, pos);
}

static CUresult sync_ctx(struct fake_ctx* c)
{
    CUresult first = device_ok(c->device);
    if (first != CUDA_SUCCESS) {
        return first;
    }
    if (fault == FAULT_ECC && c->device == 0 && devices[0].ecc_armed) {
        int work = stream_has_work(&c->default_stream, ~0ull);
        for (struct fake_stream* s = streams; s && !work; s = s->next) {
            work = s->ctx == c && stream_has_work(s, ~0ull);
        }
        if (work) {
            lose_device(0, CUDA_ERROR_ECC_UNCORRECTABLE);
            return CUDA_ERROR_ECC_UNCORRECTABLE;
        }
    }
    CUresult r = run_stream_until(&c->default_stream, ~0ull);
    if (r != CUDA_SUCCESS) {
        first = r;
    }
    for (struct fake_stream* s = streams; s; s = s->next) {
        if (s->ctx == c) {
            r = run_stream_until(s, ~0ull);
            if (r != CUDA_SUCCESS && first == CUDA_SUCCESS) {
                first = r;
            }
        }
    }
    c->last_sync = seq;
    for (struct fake_stream* s = streams; s;) {
        struct fake_stream* next = s->next;
        maybe_reclaim_stream(s);
        s = next;
    }
    return first;
}

static void maybe_reclaim_stream(struct fake_stream* s)
{
    if (!s->destroyed || s->refs > 0 || s->first < s->len) {
        return;
    }
    for (struct fake_stream** p = &streams; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    free(s->ops);
    free(s);
}

/* ---------------------------------------------------------------------------------------------
 * Initialisation and configuration.
 */
static CUresult configure(void)
{
    const char* v = getenv("VR_FAKE_CUDA_DEVICES");
    if (v && *v) {
        char* end = NULL;
        const long n = strtol(v, &end, 10);
        if (*end != '\0' || n < 0 || n > FAKE_MAX_DEVICES) {
            fprintf(stderr, "fake CUDA driver: VR_FAKE_CUDA_DEVICES=%s is not 0..%d\n", v, FAKE_MAX_DEVICES);
            return CUDA_ERROR_INVALID_VALUE;
        }
        device_count = (int)n;
    }
    v = getenv("VR_FAKE_CUDA_MEM_BYTES");
    if (v && *v) {
        char* end = NULL;
        const unsigned long long n = strtoull(v, &end, 10);
        if (*end != '\0' || n == 0u || v[0] == '-') {
            fprintf(stderr, "fake CUDA driver: VR_FAKE_CUDA_MEM_BYTES=%s is not a byte count\n", v);
            return CUDA_ERROR_INVALID_VALUE;
        }
        mem_bytes = n;
    }
    v = getenv("VR_FAKE_CUDA_FAULT");
    static const struct {
        const char* name;
        enum fault fault;
    } faults[] = {
        {"oom", FAULT_OOM},
        {"host-memory", FAULT_HOST_MEMORY},
        {"managed", FAULT_MANAGED},
        {"integrated", FAULT_INTEGRATED},
        {"launch-fail", FAULT_LAUNCH_FAIL},
        {"kernel-wrong", FAULT_KERNEL_WRONG},
        {"ecc", FAULT_ECC},
    };
    if (v && *v) {
        fault = FAULT_NONE;
        for (size_t i = 0; i < sizeof faults / sizeof faults[0]; ++i) {
            if (strcmp(v, faults[i].name) == 0) {
                fault = faults[i].fault;
            }
        }
        if (fault == FAULT_NONE) {
            fprintf(stderr,
                    "fake CUDA driver: unknown VR_FAKE_CUDA_FAULT=%s (oom | host-memory | managed | "
                    "integrated | launch-fail | kernel-wrong | ecc)\n",
                    v);
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    v = getenv("VR_FAKE_CUDA_FAULT_AFTER");
    if (v && *v) {
        char* end = NULL;
        fault_after = strtoull(v, &end, 10);
        if (*end != '\0' || v[0] == '-') {
            fprintf(stderr, "fake CUDA driver: VR_FAKE_CUDA_FAULT_AFTER=%s is not a count\n", v);
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    v = getenv("VR_FAKE_CUDA_STRICT");
    strict = v && strcmp(v, "1") == 0;
    for (int d = 0; d < device_count; ++d) {
        devices[d].ctx.device = d;
        stream_init(&devices[d].ctx.default_stream, &devices[d].ctx);
        devices[d].next_va = FAKE_VA_BASE + (unsigned long long)d * FAKE_VA_SPAN;
    }
    return CUDA_SUCCESS;
}

static CUresult init_result = CUDA_ERROR_NOT_INITIALIZED;

EXPORT CUresult cuInit(unsigned int flags)
{
    if (flags != 0u) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&lock);
    if (!initialised) {
        init_result = configure();
        initialised = 1;
    }
    const CUresult r = init_result;
    pthread_mutex_unlock(&lock);
    return r;
}

#define LOCKED_INIT()                                                                              \
    pthread_mutex_lock(&lock);                                                                     \
    if (init_result != CUDA_SUCCESS) {                                                             \
        pthread_mutex_unlock(&lock);                                                               \
        return CUDA_ERROR_NOT_INITIALIZED;                                                         \
    }
#define RETURN(x)                                                                                  \
    do {                                                                                           \
        const CUresult ret_ = (x);                                                                 \
        pthread_mutex_unlock(&lock);                                                               \
        return ret_;                                                                               \
    } while (0)

EXPORT CUresult cuDriverGetVersion(int* version)
{
    if (!version) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    *version = FAKE_DRIVER_VERSION;
    return CUDA_SUCCESS;
}

/* ---------------------------------------------------------------------------------------------
 * Errors.
 */
static const struct {
    CUresult code;
    const char* name;
    const char* text;
} error_table[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"},
    {CUDA_ERROR_ECC_UNCORRECTABLE, "CUDA_ERROR_ECC_UNCORRECTABLE", "uncorrectable ECC error encountered"},
    {CUDA_ERROR_INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain."},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

EXPORT CUresult cuGetErrorName(CUresult error, const char** out)
{
    if (!out) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    for (size_t i = 0; i < sizeof error_table / sizeof error_table[0]; ++i) {
        if (error_table[i].code == error) {
            *out = error_table[i].name;
            return CUDA_SUCCESS;
        }
    }
    *out = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorString(CUresult error, const char** out)
{
    if (!out) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    for (size_t i = 0; i < sizeof error_table / sizeof error_table[0]; ++i) {
        if (error_table[i].code == error) {
            *out = error_table[i].text;
            return CUDA_SUCCESS;
        }
    }
    *out = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

/* ---------------------------------------------------------------------------------------------
 * Devices.
 */
EXPORT CUresult cuDeviceGetCount(int* count)
{
    LOCKED_INIT();
    if (!count) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    *count = device_count;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal)
{
    LOCKED_INIT();
    if (!device) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    if (ordinal < 0 || ordinal >= device_count) {
        RETURN(CUDA_ERROR_INVALID_DEVICE);
    }
    *device = ordinal;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev)
{
    LOCKED_INIT();
    if (!name || len <= 0) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    if (dev < 0 || dev >= device_count) {
        RETURN(CUDA_ERROR_INVALID_DEVICE);
    }
    snprintf(name, (size_t)len, "fake CUDA device %d (test driver)", dev);
    RETURN(CUDA_SUCCESS);
}

static CUresult get_uuid(CUuuid* uuid, CUdevice dev)
{
    LOCKED_INIT();
    if (!uuid) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    if (dev < 0 || dev >= device_count) {
        RETURN(CUDA_ERROR_INVALID_DEVICE);
    }
    /* "fakecuda" then the ordinal: recognisable in a GPU-... string. */
    static const unsigned char prefix[8] = {0xfa, 0x4e, 0xc0, 0xda, 0x00, 0x00, 0x7e, 0x57};
    memcpy(uuid->bytes, prefix, sizeof prefix);
    memset(uuid->bytes + 8, 0, 8);
    uuid->bytes[15] = (char)dev;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev)
{
    return get_uuid(uuid, dev);
}

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev)
{
    return get_uuid(uuid, dev);
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev)
{
    LOCKED_INIT();
    if (!bytes) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    if (dev < 0 || dev >= device_count) {
        RETURN(CUDA_ERROR_INVALID_DEVICE);
    }
    *bytes = (size_t)mem_bytes;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice dev)
{
    LOCKED_INIT();
    if (!value || attribute <= 0 || attribute >= CU_DEVICE_ATTRIBUTE_MAX) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    if (dev < 0 || dev >= device_count) {
        RETURN(CUDA_ERROR_INVALID_DEVICE);
    }
    int v = 0;
    switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK:
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X:
        v = 1024;
        break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X:
        v = 2147483647;
        break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE:
        v = 32;
        break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
        v = 4;
        break;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED:
        v = fault == FAULT_INTEGRATED;
        break;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY:
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED:
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY:
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED:
        v = 1;
        break;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID:
        v = 0x10 + dev;
        break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
        v = FAKE_CC_MAJOR;
        break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
        v = FAKE_CC_MINOR;
        break;
    default:
        v = 0;
    }
    *value = v;
    RETURN(CUDA_SUCCESS);
}

/* ---------------------------------------------------------------------------------------------
 * Contexts (primary contexts only).
 */
EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev)
{
    LOCKED_INIT();
    if (!ctx) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    if (dev < 0 || dev >= device_count) {
        RETURN(CUDA_ERROR_INVALID_DEVICE);
    }
    devices[dev].ctx.refcount++;
    *ctx = &devices[dev].ctx;
    RETURN(CUDA_SUCCESS);
}

static CUresult primary_release(CUdevice dev)
{
    LOCKED_INIT();
    if (dev < 0 || dev >= device_count) {
        RETURN(CUDA_ERROR_INVALID_DEVICE);
    }
    struct fake_ctx* c = &devices[dev].ctx;
    if (c->refcount <= 0) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    if (--c->refcount == 0) {
        /* The primary context goes away: its memory with it. */
        if (!devices[dev].lost) {
            (void)sync_ctx(c);
        }
        unsigned long long count = 0, bytes = 0;
        for (struct alloc* a = allocs; a;) {
            struct alloc* next = a->next;
            if (a->device == dev) {
                ++count;
                bytes += a->size;
                if (devices[dev].lost) {
                    devices[dev].leaked_on_loss += a->size;
                }
                release_alloc(a, 0);
            }
            a = next;
        }
        if (count > 0 && !devices[dev].lost) {
            misuse(&n_ctx_released_with_memory,
                   "the last reference to device %d's context was released with %llu allocations "
                   "(%llu bytes) never freed",
                   dev, count, bytes);
        }
    }
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    return primary_release(dev);
}

EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    return primary_release(dev);
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx)
{
    LOCKED_INIT();
    if (ctx && !ctx_valid(ctx)) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    current = ctx;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuCtxGetCurrent(CUcontext* ctx)
{
    LOCKED_INIT();
    if (!ctx) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    *ctx = (current && ctx_valid(current)) ? current : NULL;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuCtxGetDevice(CUdevice* dev)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuCtxGetDevice");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    if (!dev) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    *dev = c->device;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuCtxSynchronize(void)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuCtxSynchronize");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    RETURN(sync_ctx(c));
}

EXPORT CUresult cuCtxSetFlags(unsigned int flags)
{
    (void)flags;
    LOCKED_INIT();
    RETURN(need_ctx("cuCtxSetFlags") ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT);
}

EXPORT CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest)
{
    LOCKED_INIT();
    if (least) {
        *least = 0;
    }
    if (greatest) {
        *greatest = 0;
    }
    RETURN(CUDA_SUCCESS);
}

/* ---------------------------------------------------------------------------------------------
 * Memory.
 */
static CUresult allocate(struct fake_ctx* c, size_t size, enum alloc_kind kind, CUdeviceptr* out)
{
    const int dev = c->device;
    CUresult r = device_ok(dev);
    if (r != CUDA_SUCCESS) {
        return r;
    }
    if (size == 0u) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (fault == FAULT_OOM && size > FAKE_OOM_ABOVE) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (size > mem_bytes - devices[dev].used) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    struct alloc* a = calloc(1, sizeof *a);
    void* host = NULL;
    if (!a || posix_memalign(&host, 256u, size) != 0) {
        free(a);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memset(host, FAKE_GARBAGE, size);
    a->device = dev;
    a->kind = kind;
    a->size = size;
    a->host = host;
    a->va = devices[dev].next_va;
    devices[dev].next_va += (size + 255u) / 256u * 256u + 256u;
    a->next = allocs;
    allocs = a;
    devices[dev].used += size;
    *out = a->va;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t size)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemAlloc");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    if (!dptr) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    RETURN(allocate(c, size, ALLOC_DEVICE, dptr));
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t size, CUstream stream)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemAllocAsync");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    struct fake_stream* s = resolve_stream(stream);
    if (!dptr || !s || s->ctx != c) {
        RETURN(!dptr ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_INVALID_HANDLE);
    }
    RETURN(allocate(c, size, ALLOC_STREAM_ORDERED, dptr));
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemFree");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    if (dptr == 0u) {
        RETURN(CUDA_SUCCESS);
    }
    struct alloc* a = find_alloc(dptr);
    if (!a || a->va != dptr) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    const CUresult lost = device_ok(a->device);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    if (a->device != c->device) {
        misuse(&n_free_in_other_ctx, "cuMemFree of device %d memory with device %d's context current",
               a->device, c->device);
    }
    struct fake_ctx* owner = &devices[a->device].ctx;
    int keep = 0;
    if (queued_on_alloc(a, NULL)) {
        misuse(&n_free_with_queued_work,
               "cuMemFree of %zu bytes on device %d with work still queued on them", a->size, a->device);
        keep = 1;
    } else if (a->last_async_use > owner->last_sync) {
        misuse(&n_free_without_ctx_sync,
               "cuMemFree of %zu bytes on device %d without a context synchronisation since their "
               "last asynchronous use",
               a->size, a->device);
    }
    release_alloc(a, keep);
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemFreeAsync");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    struct fake_stream* s = resolve_stream(stream);
    if (!s) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    struct alloc* a = find_alloc(dptr);
    if (!a || a->va != dptr) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    const CUresult lost = device_ok(a->device);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    struct op op = {.kind = OP_FREE, .dst = dptr};
    RETURN(enqueue(s, &op));
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemGetInfo");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    const CUresult lost = device_ok(c->device);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    if (free_bytes) {
        *free_bytes = (size_t)(mem_bytes - devices[c->device].used);
    }
    if (total_bytes) {
        *total_bytes = (size_t)mem_bytes;
    }
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuMemHostAlloc(void** pp, size_t size, unsigned int flags)
{
    (void)flags;
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemHostAlloc");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    if (!pp || size == 0u) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    struct pinned* p = calloc(1, sizeof *p);
    void* host = NULL;
    if (!p || posix_memalign(&host, 4096u, size) != 0) {
        free(p);
        RETURN(CUDA_ERROR_OUT_OF_MEMORY);
    }
    memset(host, FAKE_GARBAGE, size);
    p->host = host;
    p->size = size;
    p->device = c->device;
    p->next = pinned_list;
    pinned_list = p;
    *pp = host;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuMemFreeHost(void* ptr)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemFreeHost");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    for (struct pinned** p = &pinned_list; *p; p = &(*p)->next) {
        if ((*p)->host == ptr) {
            struct pinned* q = *p;
            *p = q->next;
            if (queued_on_host(q->host, q->size)) {
                misuse(&n_free_with_queued_work,
                       "cuMemFreeHost of a %zu-byte pinned buffer with a copy still queued on it", q->size);
                /* Leaked, so the queued copy stays memory-safe. */
            } else {
                free(q->host);
            }
            free(q);
            RETURN(CUDA_SUCCESS);
        }
    }
    RETURN(CUDA_ERROR_INVALID_VALUE);
}

EXPORT CUresult cuPointerGetAttribute(void* data, int attribute, CUdeviceptr ptr)
{
    LOCKED_INIT();
    if (!data) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    struct alloc* a = find_alloc(ptr);
    struct pinned* p = a ? NULL : find_pinned((const void*)(uintptr_t)ptr, 1u);
    if (!a && !p) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    const int dev = a ? a->device : p->device;
    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
        *(CUcontext*)data = &devices[dev].ctx;
        RETURN(CUDA_SUCCESS);
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int*)data =
            (a && fault != FAULT_HOST_MEMORY) ? CU_MEMORYTYPE_DEVICE : CU_MEMORYTYPE_HOST;
        RETURN(CUDA_SUCCESS);
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
        *(unsigned int*)data = a && fault == FAULT_MANAGED;
        RETURN(CUDA_SUCCESS);
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int*)data = dev;
        RETURN(CUDA_SUCCESS);
    default:
        RETURN(CUDA_ERROR_NOT_SUPPORTED);
    }
}

/* Checks a device range for a copy and returns its device (or -1). */
static int device_range(CUdeviceptr va, size_t n)
{
    return device_bytes(va, n, NULL) ? device_of_va(va) : -1;
}

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream stream)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemcpyHtoDAsync");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    struct fake_stream* s = resolve_stream(stream);
    if (!s) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (n == 0u) {
        RETURN(CUDA_SUCCESS);
    }
    const int dev = device_range(dst, n);
    if (dev < 0 || !src) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    const CUresult lost = device_ok(dev);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    struct op op = {.kind = OP_HTOD, .dst = dst, .n = n};
    if (find_pinned(src, n)) {
        /* Read when the copy runs: reuse before the wait uploads whatever is there then. */
        op.host = (unsigned char*)src;
    } else {
        /* Pageable: the driver stages the bytes before returning. */
        op.snapshot = malloc(n);
        if (!op.snapshot) {
            RETURN(CUDA_ERROR_OUT_OF_MEMORY);
        }
        memcpy(op.snapshot, src, n);
    }
    mark_use(dst);
    RETURN(enqueue(s, &op));
}

EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream stream)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemcpyDtoHAsync");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    struct fake_stream* s = resolve_stream(stream);
    if (!s) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (n == 0u) {
        RETURN(CUDA_SUCCESS);
    }
    const int dev = device_range(src, n);
    if (dev < 0 || !dst) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    const CUresult lost = device_ok(dev);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    struct op op = {.kind = OP_DTOH, .src = src, .n = n, .host = (unsigned char*)dst};
    mark_use(src);
    CUresult r = enqueue(s, &op);
    if (r == CUDA_SUCCESS && !find_pinned(dst, n)) {
        /* Pageable destination: returns once the copy (and the work before it) is done. */
        r = sync_point(s, stream_enqueued(s));
    }
    RETURN(r);
}

EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream stream)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemcpyDtoDAsync");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    struct fake_stream* s = resolve_stream(stream);
    if (!s) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (n == 0u) {
        RETURN(CUDA_SUCCESS);
    }
    if (device_range(dst, n) < 0 || device_range(src, n) < 0) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    struct op op = {.kind = OP_DTOD, .dst = dst, .src = src, .n = n};
    mark_use(dst);
    mark_use(src);
    RETURN(enqueue(s, &op));
}

EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream stream)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuMemsetD8Async");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    struct fake_stream* s = resolve_stream(stream);
    if (!s) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (n == 0u) {
        RETURN(CUDA_SUCCESS);
    }
    if (device_range(dst, n) < 0) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    struct op op = {.kind = OP_MEMSET, .dst = dst, .n = n, .value = value};
    mark_use(dst);
    RETURN(enqueue(s, &op));
}

/* Synchronous copies run on the context's default stream: after the work queued there (not
 * after work on other, non-blocking, streams), before returning. */
static CUresult sync_copy(const char* call, struct op* op, CUdeviceptr checked, size_t n)
{
    struct fake_ctx* c = need_ctx(call);
    if (!c) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (n == 0u) {
        return CUDA_SUCCESS;
    }
    const int dev = device_range(checked, n);
    if (dev < 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const CUresult lost = device_ok(dev);
    if (lost != CUDA_SUCCESS) {
        return lost;
    }
    struct fake_stream* s = &devices[dev].ctx.default_stream;
    CUresult r = enqueue(s, op);
    if (r != CUDA_SUCCESS) {
        free(op->snapshot);
        return r;
    }
    return sync_point(s, stream_enqueued(s));
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n)
{
    LOCKED_INIT();
    struct op op = {.kind = OP_HTOD, .dst = dst, .n = n, .host = (unsigned char*)src};
    RETURN(sync_copy("cuMemcpyHtoD", &op, dst, n));
}

EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n)
{
    LOCKED_INIT();
    struct op op = {.kind = OP_DTOH, .src = src, .n = n, .host = (unsigned char*)dst};
    RETURN(sync_copy("cuMemcpyDtoH", &op, src, n));
}

EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    LOCKED_INIT();
    if (n > 0u && device_range(src, n) < 0) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    struct op op = {.kind = OP_DTOD, .dst = dst, .src = src, .n = n};
    RETURN(sync_copy("cuMemcpyDtoD", &op, dst, n));
}

EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n)
{
    LOCKED_INIT();
    struct op op = {.kind = OP_MEMSET, .dst = dst, .n = n, .value = value};
    RETURN(sync_copy("cuMemsetD8", &op, dst, n));
}

/* ---------------------------------------------------------------------------------------------
 * Streams and events.
 */
static CUresult stream_create(CUstream* out)
{
    struct fake_ctx* c = need_ctx("cuStreamCreate");
    if (!c) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (!out) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    const CUresult lost = device_ok(c->device);
    if (lost != CUDA_SUCCESS) {
        return lost;
    }
    struct fake_stream* s = malloc(sizeof *s);
    if (!s) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    stream_init(s, c);
    s->next = streams;
    streams = s;
    *out = s;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamCreate(CUstream* out, unsigned int flags)
{
    (void)flags;
    LOCKED_INIT();
    RETURN(stream_create(out));
}

EXPORT CUresult cuStreamCreateWithPriority(CUstream* out, unsigned int flags, int priority)
{
    (void)flags;
    (void)priority;
    LOCKED_INIT();
    RETURN(stream_create(out));
}

EXPORT CUresult cuStreamDestroy_v2(CUstream stream)
{
    LOCKED_INIT();
    if (!stream_valid(stream)) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    /* Work queued before the destroy still completes (the real driver finishes it in the
     * background); here it runs now. */
    CUresult r = device_ok(stream->ctx->device);
    if (r == CUDA_SUCCESS) {
        r = run_stream_until(stream, ~0ull);
    } else {
        for (size_t i = stream->first; i < stream->len; ++i) {
            free(stream->ops[i].snapshot);
            if (stream->ops[i].kind == OP_WAIT) {
                stream->ops[i].wait_stream->refs--;
            }
        }
        stream->first = stream->len;
    }
    stream->destroyed = 1;
    maybe_reclaim_stream(stream);
    (void)r;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuStreamSynchronize(CUstream stream)
{
    LOCKED_INIT();
    struct fake_stream* s = resolve_stream(stream);
    if (!s) {
        RETURN(stream == NULL ? CUDA_ERROR_INVALID_CONTEXT : CUDA_ERROR_INVALID_HANDLE);
    }
    RETURN(sync_point(s, stream_enqueued(s)));
}

EXPORT CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int flags)
{
    (void)flags;
    LOCKED_INIT();
    struct fake_stream* s = resolve_stream(stream);
    if (!s || !event) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (!event->stream) {
        RETURN(CUDA_SUCCESS); /* never recorded: nothing to wait for */
    }
    struct op op = {.kind = OP_WAIT, .wait_stream = event->stream, .wait_pos = event->pos};
    event->stream->refs++;
    RETURN(enqueue(s, &op));
}

EXPORT CUresult cuStreamIsCapturing(CUstream stream, int* status)
{
    (void)stream;
    if (status) {
        *status = 0;
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventCreate(CUevent* out, unsigned int flags)
{
    (void)flags;
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuEventCreate");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    if (!out) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    struct fake_event* e = calloc(1, sizeof *e);
    if (!e) {
        RETURN(CUDA_ERROR_OUT_OF_MEMORY);
    }
    e->ctx = c;
    *out = e;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuEventRecord(CUevent event, CUstream stream)
{
    LOCKED_INIT();
    struct fake_stream* s = resolve_stream(stream);
    if (!event || !s) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (s->ctx != event->ctx) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    const CUresult lost = device_ok(s->ctx->device);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    if (event->stream) {
        event->stream->refs--;
        maybe_reclaim_stream(event->stream);
    }
    event->stream = s;
    event->pos = stream_enqueued(s);
    event->queried = 0;
    s->refs++;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuEventSynchronize(CUevent event)
{
    LOCKED_INIT();
    if (!event) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (!event->stream) {
        RETURN(device_ok(event->ctx->device));
    }
    RETURN(sync_point(event->stream, event->pos));
}

EXPORT CUresult cuEventQuery(CUevent event)
{
    LOCKED_INIT();
    if (!event) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (!event->stream || stream_done(event->stream) >= event->pos) {
        RETURN(device_ok(event->ctx->device));
    }
    /* Not done the first time it is asked; done (the work runs) the next. */
    if (!event->queried) {
        event->queried = 1;
        RETURN(CUDA_ERROR_NOT_READY);
    }
    RETURN(sync_point(event->stream, event->pos));
}

EXPORT CUresult cuEventDestroy_v2(CUevent event)
{
    LOCKED_INIT();
    if (!event) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (event->stream) {
        event->stream->refs--;
        maybe_reclaim_stream(event->stream);
    }
    free(event);
    RETURN(CUDA_SUCCESS);
}

/* ---------------------------------------------------------------------------------------------
 * Modules and launches: the crate's PTX, run as the host build of its .cu.
 */
static int ptx_has_entry(const char* ptx, const char* name)
{
    const size_t len = strlen(name);
    for (const char* p = strstr(ptx, ".entry "); p; p = strstr(p + 1, ".entry ")) {
        const char* q = p + strlen(".entry ");
        while (*q == ' ') {
            ++q;
        }
        if (strncmp(q, name, len) == 0 && (q[len] == '(' || q[len] == ' ' || q[len] == '\n')) {
            return 1;
        }
    }
    return 0;
}

EXPORT CUresult cuModuleLoadData(CUmodule* module, const void* image)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuModuleLoadData");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    if (!module || !image) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    const CUresult lost = device_ok(c->device);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    const char* ptx = image;
    if (memcmp(ptx, "\177ELF", 4) == 0) {
        RETURN(CUDA_ERROR_NOT_SUPPORTED); /* cubins: not modelled */
    }
    const char* version = strstr(ptx, ".version ");
    const char* target = strstr(ptx, ".target ");
    if (!version || !target) {
        RETURN(CUDA_ERROR_INVALID_PTX);
    }
    int major = 0, minor = 0;
    if (sscanf(version, ".version %d.%d", &major, &minor) != 2) {
        RETURN(CUDA_ERROR_INVALID_PTX);
    }
    if (major > FAKE_PTX_ISA_MAX_MAJOR || (major == FAKE_PTX_ISA_MAX_MAJOR && minor > FAKE_PTX_ISA_MAX_MINOR)) {
        RETURN(CUDA_ERROR_UNSUPPORTED_PTX_VERSION);
    }
    int arch = 0;
    if (sscanf(target, ".target sm_%d", &arch) != 1 && sscanf(target, ".target compute_%d", &arch) != 1) {
        RETURN(CUDA_ERROR_INVALID_PTX);
    }
    if (arch > FAKE_CC_MAJOR * 10 + FAKE_CC_MINOR) {
        RETURN(CUDA_ERROR_NO_BINARY_FOR_GPU);
    }
    struct fake_module* m = calloc(1, sizeof *m);
    if (!m) {
        RETURN(CUDA_ERROR_OUT_OF_MEMORY);
    }
    m->ctx = c;
    m->has_leaves = ptx_has_entry(ptx, "vr_sha256_leaves");
    m->has_xor = ptx_has_entry(ptx, "vr_xor_byte");
    if (!m->has_leaves && !m->has_xor) {
        free(m);
        RETURN(CUDA_ERROR_INVALID_IMAGE); /* not the crate's kernels: nothing here can run it */
    }
    *module = m;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuModuleUnload(CUmodule module)
{
    LOCKED_INIT();
    if (!module) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    free(module);
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name)
{
    LOCKED_INIT();
    if (!function || !module || !name) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    enum kernel_id kernel;
    if (strcmp(name, "vr_sha256_leaves") == 0 && module->has_leaves) {
        kernel = KERNEL_LEAVES;
    } else if (strcmp(name, "vr_xor_byte") == 0 && module->has_xor) {
        kernel = KERNEL_XOR;
    } else {
        RETURN(CUDA_ERROR_NOT_FOUND);
    }
    /* Functions live as long as the process (their modules may go first, as in CUDA, where
     * using one then is undefined). */
    struct fake_function* f = calloc(1, sizeof *f);
    if (!f) {
        RETURN(CUDA_ERROR_OUT_OF_MEMORY);
    }
    f->module = module;
    f->kernel = kernel;
    *function = f;
    RETURN(CUDA_SUCCESS);
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int shared, CUstream stream, void** params,
                               void** extra)
{
    LOCKED_INIT();
    struct fake_ctx* c = need_ctx("cuLaunchKernel");
    if (!c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    struct fake_stream* s = resolve_stream(stream);
    if (!f || !s) {
        RETURN(CUDA_ERROR_INVALID_HANDLE);
    }
    if (s->ctx != c) {
        RETURN(CUDA_ERROR_INVALID_CONTEXT);
    }
    const CUresult lost = device_ok(c->device);
    if (lost != CUDA_SUCCESS) {
        RETURN(lost);
    }
    if (!params || extra || shared != 0u || gx == 0u || gy == 0u || gz == 0u || bx == 0u || by == 0u ||
        bz == 0u || (unsigned long long)bx * by * bz > 1024u) {
        RETURN(CUDA_ERROR_INVALID_VALUE);
    }
    const int faulty = devices[c->device].launches++ >= fault_after;
    if (fault == FAULT_LAUNCH_FAIL && faulty) {
        RETURN(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
    }
    struct op op = {.kind = OP_LAUNCH, .kernel = f->kernel, .wrong = fault == FAULT_KERNEL_WRONG && faulty};
    op.threads = (unsigned long long)gx * gy * gz * bx * by * bz;
    /* The argument values are copied now, as the driver does. */
    if (f->kernel == KERNEL_LEAVES) {
        for (int i = 0; i < 6; ++i) {
            memcpy(&op.args[i], params[i], sizeof op.args[i]);
        }
    } else {
        memcpy(&op.args[0], params[0], 8u);
        memcpy(&op.args[1], params[1], 8u);
        op.args[2] = *(const unsigned char*)params[2];
    }
    mark_use(op.args[0]);
    if (f->kernel == KERNEL_LEAVES) {
        mark_use(op.args[3]);
        mark_use(op.args[5]);
    }
    RETURN(enqueue(s, &op));
}

/* ---------------------------------------------------------------------------------------------
 * The rest of what cudarc can reach: present (a missing symbol panics in cudarc), not modelled.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define UNSUPPORTED(name, ...)                                                                     \
    EXPORT CUresult name(__VA_ARGS__)                                                              \
    {                                                                                              \
        return CUDA_ERROR_NOT_SUPPORTED;                                                           \
    }

UNSUPPORTED(cuCtxCreate_v3, void* a, void* b, int c, unsigned int d, int e)
UNSUPPORTED(cuCtxCreate_v4, void* a, void* b, unsigned int c, int d)
UNSUPPORTED(cuCtxDestroy_v2, void* a)
UNSUPPORTED(cuCtxGetCacheConfig, void* a)
UNSUPPORTED(cuCtxSetCacheConfig, int a)
UNSUPPORTED(cuCtxGetLimit, void* a, int b)
UNSUPPORTED(cuCtxSetLimit, int a, size_t b)
UNSUPPORTED(cuDeviceGetDefaultMemPool, void* a, int b)
UNSUPPORTED(cuDeviceGetMemPool, void* a, int b)
UNSUPPORTED(cuDeviceSetMemPool, int a, void* b)
UNSUPPORTED(cuDestroyExternalMemory, void* a)
UNSUPPORTED(cuExternalMemoryGetMappedBuffer, void* a, void* b, void* c)
UNSUPPORTED(cuImportExternalMemory, void* a, void* b)
UNSUPPORTED(cuEventElapsedTime, void* a, void* b, void* c)
UNSUPPORTED(cuEventElapsedTime_v2, void* a, void* b, void* c)
UNSUPPORTED(cuFuncGetAttribute, void* a, int b, void* c)
UNSUPPORTED(cuFuncSetAttribute, void* a, int b, int c)
UNSUPPORTED(cuFuncSetCacheConfig, void* a, int b)
UNSUPPORTED(cuGraphDestroy, void* a)
UNSUPPORTED(cuGraphExecDestroy, void* a)
UNSUPPORTED(cuGraphInstantiateWithFlags, void* a, void* b, unsigned long long c)
UNSUPPORTED(cuGraphLaunch, void* a, void* b)
UNSUPPORTED(cuGraphUpload, void* a, void* b)
UNSUPPORTED(cuLaunchCooperativeKernel, void* a, unsigned int b, unsigned int c, unsigned int d, unsigned int e,
            unsigned int f, unsigned int g, unsigned int h, void* i, void* j)
UNSUPPORTED(cuLaunchHostFunc, void* a, void* b, void* c)
UNSUPPORTED(cuMemAdvise_v2, CUdeviceptr a, size_t b, int c, int d)
UNSUPPORTED(cuMemAllocFromPoolAsync, void* a, size_t b, void* c, void* d)
UNSUPPORTED(cuMemAllocManaged, void* a, size_t b, unsigned int c)
UNSUPPORTED(cuMemPoolCreate, void* a, void* b)
UNSUPPORTED(cuMemPoolDestroy, void* a)
UNSUPPORTED(cuMemPoolGetAttribute, void* a, int b, void* c)
UNSUPPORTED(cuMemPoolSetAttribute, void* a, int b, void* c)
UNSUPPORTED(cuMemPoolTrimTo, void* a, size_t b)
UNSUPPORTED(cuMemPrefetchAsync_v2, CUdeviceptr a, size_t b, int c, int d, unsigned int e, void* f)
UNSUPPORTED(cuMemcpyPeerAsync, CUdeviceptr a, void* b, CUdeviceptr c, void* d, size_t e, void* f)
UNSUPPORTED(cuModuleGetGlobal_v2, void* a, void* b, void* c, const char* d)
UNSUPPORTED(cuModuleLoad, void* a, const char* b)
UNSUPPORTED(cuOccupancyAvailableDynamicSMemPerBlock, void* a, void* b, int c, int d)
UNSUPPORTED(cuOccupancyMaxActiveBlocksPerMultiprocessor, void* a, void* b, int c, size_t d)
UNSUPPORTED(cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags, void* a, void* b, int c, size_t d,
            unsigned int e)
UNSUPPORTED(cuOccupancyMaxActiveClusters, void* a, void* b, void* c)
UNSUPPORTED(cuOccupancyMaxPotentialBlockSize, void* a, void* b, void* c, void* d, size_t e, int f)
UNSUPPORTED(cuOccupancyMaxPotentialBlockSizeWithFlags, void* a, void* b, void* c, void* d, size_t e, int f,
            unsigned int g)
UNSUPPORTED(cuOccupancyMaxPotentialClusterSize, void* a, void* b, void* c)
UNSUPPORTED(cuDevicePrimaryCtxGetState, int a, void* b, void* c)
UNSUPPORTED(cuDevicePrimaryCtxSetFlags_v2, int a, unsigned int b)
UNSUPPORTED(cuDevicePrimaryCtxReset_v2, int a)
UNSUPPORTED(cuProfilerStart, void)
UNSUPPORTED(cuProfilerStop, void)
UNSUPPORTED(cuStreamAttachMemAsync, void* a, CUdeviceptr b, size_t c, unsigned int d)
UNSUPPORTED(cuStreamBeginCapture_v2, void* a, int b)
UNSUPPORTED(cuStreamEndCapture, void* a, void* b)
#pragma GCC diagnostic pop

/* ---------------------------------------------------------------------------------------------
 * At exit: what was never given back, and the misuse counted on the way.
 */
__attribute__((destructor)) static void report_at_exit(void)
{
    pthread_mutex_lock(&lock);
    unsigned long long leaked_allocs = 0, leaked_bytes = 0, leaked_pinned = 0, lost_bytes = 0;
    for (struct alloc* a = allocs; a; a = a->next) {
        if (devices[a->device].lost) {
            lost_bytes += a->size;
            continue;
        }
        ++leaked_allocs;
        leaked_bytes += a->size;
    }
    for (struct pinned* p = pinned_list; p; p = p->next) {
        ++leaked_pinned;
    }
    for (int d = 0; d < device_count; ++d) {
        lost_bytes += devices[d].leaked_on_loss;
    }
    const int problems = leaked_allocs || leaked_pinned || n_free_with_queued_work || n_free_without_ctx_sync ||
                         n_free_in_other_ctx || n_call_without_ctx || n_ctx_released_with_memory;
    if (problems) {
        fprintf(stderr,
                "fake CUDA driver: at exit: %llu device allocations (%llu bytes) and %llu pinned host "
                "buffers never freed; %llu frees with work still queued; %llu cuMemFree without a "
                "context synchronisation; %llu frees in another device's context; %llu calls "
                "without a current context; %llu contexts released with memory\n",
                leaked_allocs, leaked_bytes, leaked_pinned, n_free_with_queued_work, n_free_without_ctx_sync,
                n_free_in_other_ctx, n_call_without_ctx, n_ctx_released_with_memory);
    }
    if (lost_bytes > 0) {
        fprintf(stderr, "fake CUDA driver: at exit: %llu bytes still held on lost devices (excused)\n",
                lost_bytes);
    }
    pthread_mutex_unlock(&lock);
    if (problems && strict) {
        fputs("fake CUDA driver: VR_FAKE_CUDA_STRICT=1, aborting\n", stderr);
        abort();
    }
}
