/*
 * strata_plugin.h: write a Strata plugin in C (plugin ABI version 3).
 *
 * One header, no libc. Name your plugin and its hook functions, then
 * include this file once, in one .c file:
 *
 *     #define STRATA_PLUGIN_NAME    "largest-alone"
 *     #define STRATA_PLUGIN_VERSION "0.1.0"
 *     #define STRATA_GROUP_LAYERS   group       // your function, below
 *     #include "strata_plugin.h"
 *
 *     const char *group(const strata_group_input *in, strata_layers *out) {
 *         for (uint32_t i = 0; i < in->n_paths; i++) {
 *             strata_layer(out);           // a new layer ...
 *             strata_add(out, i);          // ... holding path i
 *         }
 *         return 0;                        // or an error message
 *     }
 *
 * and build it with Debian's clang and lld (see examples/c-plugin/build.sh):
 *
 *     clang --target=wasm32 -O2 -mbulk-memory -nostdlib -Wl,--no-entry \
 *           -I plugin-sdk/c -o my_plugin.wasm my_plugin.c
 *
 * This header produces every export the host requires (`memory` comes from
 * the linker): strata_abi_version, strata_alloc, strata_dealloc,
 * strata_plugin_info, and strata_<hook> for each hook you name:
 *
 *   STRATA_GROUP_LAYERS fn   const char *fn(const strata_group_input *in,
 *                                           strata_layers *out);
 *       `in` is the compact input, decoded (indices checked against the
 *       closure); add layers to `out`.
 *   STRATA_EXPAND_NAMES fn   const char *fn(const char *json, uint32_t len,
 *   STRATA_RENDER_SOURCE fn                 strata_json *out);
 *       `json` is the hook's input as JSON text (not NUL-terminated);
 *       write the output object to `out` with the strata_json_* writers.
 *
 * A hook returns 0 (NULL) on success, or a message (any bytes; escaped for
 * you) that fails the request and is shown to whoever pulled the image.
 * The header writes the answer envelope, {"ok": ...} or {"err": {"message":
 * ...}}, as docs/plugins.md specifies. A plain message is a 500 to the
 * client; to refuse with a registry code instead, return
 *
 *         return strata_refuse(STRATA_MANIFEST_UNKNOWN, "no such tag");
 *
 * with STRATA_DENIED (403), STRATA_NAME_UNKNOWN or STRATA_MANIFEST_UNKNOWN
 * (404), STRATA_TOOMANYREQUESTS (429) or STRATA_UNSUPPORTED (405); the
 * envelope then carries "code" (docs/plugins.md says which to use when).
 *
 * Memory: a bump allocator (strata_malloc) over the linear memory after the
 * linker's __heap_base, 8-byte aligned; nothing is ever freed, because the
 * host runs every call in a fresh instance and discards it afterwards (it
 * never calls strata_dealloc, and never frees the answer). When memory
 * cannot grow (the host's plugins.memory_mib) the module traps, which the
 * host reports as "exceeded its memory limit".
 *
 * No libc: the compiler may still emit calls to memcpy, memset, memmove or
 * memcmp (struct copies, loops it recognises); they are defined here, since
 * anything left undefined would become an import, and the host refuses any
 * import. Do not call other libc functions (printf, malloc, qsort...).
 * Floats work but must not reach the output: the wire carries only integers
 * and strings.
 */
#ifndef STRATA_PLUGIN_H
#define STRATA_PLUGIN_H

#if !defined(__wasm32__)
#error "strata_plugin.h builds WebAssembly plugins: compile with clang --target=wasm32"
#endif

#ifndef STRATA_PLUGIN_NAME
#error "define STRATA_PLUGIN_NAME (\"my-plugin\") before including strata_plugin.h"
#endif
#ifndef STRATA_PLUGIN_VERSION
#define STRATA_PLUGIN_VERSION "0.1.0"
#endif
#if !defined(STRATA_GROUP_LAYERS) && !defined(STRATA_EXPAND_NAMES) && !defined(STRATA_RENDER_SOURCE)
#error "define at least one of STRATA_GROUP_LAYERS, STRATA_EXPAND_NAMES, STRATA_RENDER_SOURCE"
#endif

/* The plugin ABI this header speaks; the host refuses any other. */
#define STRATA_ABI_VERSION 3

/* Clang's own freestanding headers: no libc involved. */
#include <stddef.h>
#include <stdint.h>

#define STRATA_EXPORT(name) __attribute__((export_name(name), used))
#define STRATA_INTERNAL static __attribute__((unused))

/* ------------------------------------------------------------ libc stand-ins */

/* What the compiler may call on its own. With -mbulk-memory (recommended)
 * they are single memory.copy / memory.fill instructions. */
__attribute__((weak)) void *memcpy(void *dst, const void *src, size_t n) {
#ifdef __wasm_bulk_memory__
    __builtin_memcpy(dst, src, n);
#else
    volatile uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--) *d++ = *s++;
#endif
    return dst;
}

__attribute__((weak)) void *memmove(void *dst, const void *src, size_t n) {
#ifdef __wasm_bulk_memory__
    __builtin_memmove(dst, src, n);
#else
    volatile uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
#endif
    return dst;
}

__attribute__((weak)) void *memset(void *dst, int c, size_t n) {
#ifdef __wasm_bulk_memory__
    __builtin_memset(dst, c, n);
#else
    volatile uint8_t *d = dst;
    while (n--) *d++ = (uint8_t)c;
#endif
    return dst;
}

__attribute__((weak)) int memcmp(const void *a, const void *b, size_t n) {
    const volatile uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++) {
        if (*x != *y) return *x < *y ? -1 : 1;
    }
    return 0;
}

/* ----------------------------------------------------------------- allocator */

extern uint8_t __heap_base;
static uint32_t strata__top; /* next free byte; 0 until first use */
static uint32_t strata__last; /* start of the latest allocation */

/* Ends the call with a trap: the host reports it as a failure of this hook
 * (a memory-limit trap comes first when the cause was memory). */
#define strata_trap() __builtin_trap()

/* `len` bytes, 8-byte aligned, never NULL (traps instead). */
STRATA_INTERNAL void *strata_malloc(uint32_t len) {
    if (strata__top == 0) strata__top = (uint32_t)(size_t)&__heap_base;
    uint32_t start = (strata__top + 7u) & ~7u;
    uint64_t end = (uint64_t)start + len;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        uint64_t pages = (end - have + 65535u) / 65536u;
        if (end > 0xFFFF0000u || __builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) strata_trap();
    }
    strata__top = (uint32_t)end;
    strata__last = start;
    return (void *)(size_t)start;
}

/* Resizes the latest allocation in place (or copies it): for buffers that
 * grow while nothing else is allocated, like the answer being written. */
/* `count` elements of `size` bytes. */
STRATA_INTERNAL void *strata_calloc_array(uint32_t count, uint32_t size) {
    uint64_t bytes = (uint64_t)count * size;
    if (bytes > 0xFFFFFFFFu) strata_trap();
    return memset(strata_malloc((uint32_t)bytes), 0, (size_t)bytes);
}

STRATA_INTERNAL void *strata_realloc(void *p, uint32_t old_len, uint32_t new_len) {
    if (p && (uint32_t)(size_t)p == strata__last) {
        strata__top = strata__last;
        void *q = strata_malloc(new_len); /* same start, grown if needed */
        return q;
    }
    void *q = strata_malloc(new_len);
    if (p) memcpy(q, p, old_len < new_len ? old_len : new_len);
    return q;
}

STRATA_EXPORT("strata_abi_version") int32_t strata_abi_version(void) { return STRATA_ABI_VERSION; }

/* The host asks for a buffer to write a hook's input into. */
STRATA_EXPORT("strata_alloc") int32_t strata_alloc(int32_t len) {
    return (int32_t)(size_t)strata_malloc(len < 0 ? 0 : (uint32_t)len);
}

/* Required by the ABI; the host never calls it (each call's instance is
 * discarded whole), and a bump allocator has nothing to give back. */
STRATA_EXPORT("strata_dealloc") void strata_dealloc(int32_t ptr, int32_t len) {
    (void)ptr;
    (void)len;
}

/* ----------------------------------------------------------- the JSON writer */

/* A growing buffer of JSON text; write the hook's output with these. */
typedef struct {
    char *buf;
    uint32_t len, cap;
} strata_json;

STRATA_INTERNAL void strata_json_bytes(strata_json *j, const char *s, uint32_t n) {
    if (j->len + n > j->cap) {
        uint32_t cap = j->cap ? j->cap : 256;
        while (cap < j->len + n) cap *= 2;
        j->buf = strata_realloc(j->buf, j->cap, cap);
        j->cap = cap;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
}

STRATA_INTERNAL uint32_t strata_strlen(const char *s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Raw JSON text, as is: punctuation and keys you know need no escaping. */
STRATA_INTERNAL void strata_json_raw(strata_json *j, const char *s) { strata_json_bytes(j, s, strata_strlen(s)); }

/* A JSON string of `n` bytes, quoted and escaped. */
STRATA_INTERNAL void strata_json_strn(strata_json *j, const char *s, uint32_t n) {
    static const char hex[] = "0123456789abcdef";
    strata_json_bytes(j, "\"", 1);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            strata_json_bytes(j, e, 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            strata_json_bytes(j, e, 6);
        } else {
            strata_json_bytes(j, (const char *)&c, 1);
        }
    }
    strata_json_bytes(j, "\"", 1);
}

/* A NUL-terminated string as a JSON string. */
STRATA_INTERNAL void strata_json_str(strata_json *j, const char *s) { strata_json_strn(j, s, strata_strlen(s)); }

/* An unsigned integer. */
STRATA_INTERNAL void strata_json_u64(strata_json *j, uint64_t v) {
    char digits[20];
    uint32_t n = 0;
    do {
        digits[19 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    strata_json_bytes(j, digits + 20 - n, n);
}

/* Packs the answer for the host: (pointer << 32) | length. */
STRATA_INTERNAL int64_t strata__answer(strata_json *j) {
    return (int64_t)(((uint64_t)(size_t)j->buf << 32) | j->len);
}

/* The registry codes a hook may refuse with (strata_refuse). */
#define STRATA_DENIED "DENIED"
#define STRATA_NAME_UNKNOWN "NAME_UNKNOWN"
#define STRATA_MANIFEST_UNKNOWN "MANIFEST_UNKNOWN"
#define STRATA_TOOMANYREQUESTS "TOOMANYREQUESTS"
#define STRATA_UNSUPPORTED "UNSUPPORTED"

/* The code strata_refuse set for this call (each call runs in a fresh
 * instance, so it starts out unset). */
static const char *strata__code = 0;

/* Returns `message` for a hook to return, after setting the registry code
 * its envelope carries. */
STRATA_INTERNAL const char *strata_refuse(const char *code, const char *message) {
    strata__code = code;
    return message;
}

/* The envelope around a hook's output: {"ok": <value>} or {"err": ...}. */
STRATA_INTERNAL int64_t strata__envelope(strata_json *value, const char *err) {
    strata_json e = {0, 0, 0};
    if (err) {
        strata_json_raw(&e, "{\"err\":{\"message\":");
        strata_json_str(&e, err);
        if (strata__code) {
            strata_json_raw(&e, ",\"code\":");
            strata_json_str(&e, strata__code);
        }
        strata_json_raw(&e, "}}");
    } else {
        strata_json_raw(&e, "{\"ok\":");
        strata_json_bytes(&e, value->buf, value->len);
        strata_json_raw(&e, "}");
    }
    return strata__answer(&e);
}

STRATA_EXPORT("strata_plugin_info") int64_t strata_plugin_info(void) {
    strata_json j = {0, 0, 0};
    strata_json_raw(&j, "{\"name\":");
    strata_json_str(&j, STRATA_PLUGIN_NAME);
    strata_json_raw(&j, ",\"version\":");
    strata_json_str(&j, STRATA_PLUGIN_VERSION);
    strata_json_raw(&j, ",\"hooks\":[");
    const char *sep = "";
#ifdef STRATA_EXPAND_NAMES
    strata_json_raw(&j, "\"expand_names\"");
    sep = ",";
#endif
#ifdef STRATA_GROUP_LAYERS
    strata_json_raw(&j, sep);
    strata_json_raw(&j, "\"group_layers\"");
    sep = ",";
#endif
#ifdef STRATA_RENDER_SOURCE
    strata_json_raw(&j, sep);
    strata_json_raw(&j, "\"render_source\"");
#endif
    (void)sep;
    strata_json_raw(&j, "]}");
    return strata__envelope(&j, 0);
}

/* ------------------------------------------------------------- group_layers */

#ifdef STRATA_GROUP_LAYERS

/* One store path of the closure (docs/plugins.md, `StorePath`). */
typedef struct {
    const char *path; /* "/nix/store/<hash>-<name>", path_len bytes, not NUL-terminated */
    uint32_t path_len;
    uint32_t n_refs;
    const uint32_t *refs; /* indices into paths; may include this path itself */
    uint64_t nar_size;
    uint64_t popularity;
} strata_path;

/* The decoded compact input (docs/plugins.md, `GroupInput`). Every index in
 * `roots` and `refs` is below `n_paths`: the header checked. */
typedef struct {
    const char *config; /* your configuration as JSON text ("{}" if none) */
    uint32_t config_len;
    uint32_t budget; /* the most layers you may return */
    uint32_t n_roots;
    const uint32_t *roots; /* the requested packages' paths, in request order */
    uint32_t n_paths;
    const strata_path *paths; /* the whole closure, sorted by path */
} strata_group_input;

/* The answer being built: layers of path indices, base-most first. */
typedef struct {
    const char *strategy; /* shown in `docker history`; STRATA_PLUGIN_NAME unless set */
    uint32_t n_layers;
    uint32_t n_entries;
    uint32_t cap;
    uint32_t *entries; /* path indices, layer after layer */
    uint32_t *ends;    /* ends[k]: one past layer k's last entry */
} strata_layers;

/* Starts a new, empty layer after the others. */
STRATA_INTERNAL void strata_layer(strata_layers *out) {
    if (out->n_layers == out->cap) strata_trap(); /* more layers than paths: cannot be valid */
    out->ends[out->n_layers++] = out->n_entries;
}

/* Adds path `index` to the current layer (starting one if there is none). */
STRATA_INTERNAL void strata_add(strata_layers *out, uint32_t index) {
    if (out->n_layers == 0) strata_layer(out);
    if (out->n_entries == out->cap) strata_trap(); /* a path twice: cannot be valid */
    out->entries[out->n_entries++] = index;
    out->ends[out->n_layers - 1] = out->n_entries;
}

/* Reads postcard (wire format 1.0) as the host writes it. */
typedef struct {
    const uint8_t *p, *end;
    const char *err;
} strata__reader;

/* An unsigned LEB128 varint of at most `max_bytes` bytes (5 for u32, 10 for
 * u64), refusing bits past the type's width, as postcard does. */
STRATA_INTERNAL uint64_t strata__varint(strata__reader *r, uint32_t max_bytes) {
    uint64_t v = 0;
    uint8_t last_max = max_bytes == 5 ? 0x0f : 0x01;
    for (uint32_t i = 0; i < max_bytes; i++) {
        if (r->p == r->end) {
            r->err = "compact input: unexpected end";
            return 0;
        }
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            if (i == max_bytes - 1 && b > last_max) break;
            return v;
        }
    }
    r->err = "compact input: bad varint";
    return 0;
}

STRATA_INTERNAL uint32_t strata__u32(strata__reader *r) { return (uint32_t)strata__varint(r, 5); }
STRATA_INTERNAL uint64_t strata__u64(strata__reader *r) { return strata__varint(r, 10); }

/* A length-prefixed run of bytes (a string). */
STRATA_INTERNAL const char *strata__bytes(strata__reader *r, uint32_t *len) {
    *len = strata__u32(r);
    if (r->err) return 0;
    if (*len > (uint32_t)(r->end - r->p)) {
        r->err = "compact input: unexpected end";
        return 0;
    }
    const char *s = (const char *)r->p;
    r->p += *len;
    return s;
}

/* A sequence of u32 indices, each below `n`. An element takes at least one
 * byte, so a count past the bytes left is refused before allocating. */
STRATA_INTERNAL const uint32_t *strata__indices(strata__reader *r, uint32_t *count, uint32_t n, int check) {
    *count = strata__u32(r);
    if (r->err) return 0;
    if (*count > (uint32_t)(r->end - r->p)) {
        r->err = "compact input: unexpected end";
        return 0;
    }
    uint32_t *v = strata_calloc_array(*count, 4);
    for (uint32_t i = 0; i < *count && !r->err; i++) {
        v[i] = strata__u32(r);
        if (check && v[i] >= n && !r->err) r->err = "compact input: an index past the closure's end";
    }
    return v;
}

/* Decodes the compact form (docs/plugins.md): the tuple (config, budget,
 * graph.roots, graph.paths). Returns 0, or why the bytes are not one. */
STRATA_INTERNAL const char *strata_decode_group_input(const uint8_t *bytes, uint32_t len, strata_group_input *in) {
    strata__reader r = {bytes, bytes + len, 0};
    in->config = strata__bytes(&r, &in->config_len);
    in->budget = strata__u32(&r);
    /* Roots are checked once the number of paths is known. */
    in->roots = strata__indices(&r, &in->n_roots, 0, 0);
    in->n_paths = r.err ? 0 : strata__u32(&r);
    /* A path takes at least 4 bytes. */
    if (!r.err && in->n_paths > (uint32_t)(r.end - r.p) / 4u) r.err = "compact input: unexpected end";
    if (r.err) return r.err;
    strata_path *paths = strata_calloc_array(in->n_paths, sizeof(strata_path));
    for (uint32_t i = 0; i < in->n_paths && !r.err; i++) {
        paths[i].path = strata__bytes(&r, &paths[i].path_len);
        paths[i].nar_size = strata__u64(&r);
        paths[i].refs = strata__indices(&r, &paths[i].n_refs, in->n_paths, 1);
        paths[i].popularity = strata__u64(&r);
    }
    in->paths = paths;
    for (uint32_t i = 0; i < in->n_roots && !r.err; i++) {
        if (in->roots[i] >= in->n_paths) r.err = "compact input: a root past the closure's end";
    }
    if (!r.err && r.p != r.end) r.err = "compact input: bytes after the end";
    return r.err;
}

const char *STRATA_GROUP_LAYERS(const strata_group_input *in, strata_layers *out);

STRATA_EXPORT("strata_group_layers") int64_t strata_group_layers(int32_t ptr, int32_t len) {
    strata_group_input in;
    const char *err = strata_decode_group_input((const uint8_t *)(size_t)ptr, (uint32_t)len, &in);
    strata_json j = {0, 0, 0};
    if (err) return strata__envelope(&j, err);
    strata_layers out = {STRATA_PLUGIN_NAME, 0, 0, in.n_paths, 0, 0};
    out.entries = strata_calloc_array(in.n_paths, 4);
    out.ends = strata_calloc_array(in.n_paths, 4);
    err = STRATA_GROUP_LAYERS(&in, &out);
    if (err) return strata__envelope(&j, err);
    strata_json_raw(&j, "{\"strategy\":");
    strata_json_str(&j, out.strategy);
    strata_json_raw(&j, ",\"layers\":[");
    uint32_t e = 0;
    for (uint32_t k = 0; k < out.n_layers; k++) {
        strata_json_raw(&j, k ? ",[" : "[");
        for (; e < out.ends[k]; e++) {
            if (e > (k ? out.ends[k - 1] : 0)) strata_json_raw(&j, ",");
            strata_json_u64(&j, out.entries[e]);
        }
        strata_json_raw(&j, "]");
    }
    strata_json_raw(&j, "]}");
    return strata__envelope(&j, 0);
}

#endif /* STRATA_GROUP_LAYERS */

/* ------------------------------------------- expand_names and render_source */

/* A hook whose input is JSON text: the function writes the output object. */
#define STRATA__JSON_HOOK(hook, fn)                                                 \
    const char *fn(const char *json, uint32_t len, strata_json *out);               \
    STRATA_EXPORT("strata_" #hook) int64_t strata_##hook(int32_t ptr, int32_t len) { \
        strata_json j = {0, 0, 0};                                                  \
        const char *err = fn((const char *)(size_t)ptr, (uint32_t)len, &j);         \
        return strata__envelope(&j, err);                                           \
    }

#ifdef STRATA_EXPAND_NAMES
STRATA__JSON_HOOK(expand_names, STRATA_EXPAND_NAMES)
#endif

#ifdef STRATA_RENDER_SOURCE
STRATA__JSON_HOOK(render_source, STRATA_RENDER_SOURCE)
#endif

#endif /* STRATA_PLUGIN_H */
