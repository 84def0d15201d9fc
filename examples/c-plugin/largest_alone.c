/*
 * A group_layers plugin in C: every store path alone in its layer, the
 * largest first, and whatever is over the budget merged into one last layer.
 * Big paths change rarely and are shared between images, so giving each its
 * own layer lets clients reuse them.
 *
 * The glue is the four lines below; the rest is the strategy.
 */
#define STRATA_PLUGIN_NAME "largest-alone-c"
#define STRATA_PLUGIN_VERSION "0.1.0"
#define STRATA_GROUP_LAYERS group_layers
#include "strata_plugin.h"

/* Whether path a goes before path b: larger first, then in path order. */
static int before(const strata_path *p, uint32_t a, uint32_t b) {
    return p[a].nar_size != p[b].nar_size ? p[a].nar_size > p[b].nar_size : a < b;
}

/* Heap sort of path indices (no qsort without libc): a max-heap of the
 * paths that go last, popped to the end. */
static void sift(const strata_path *p, uint32_t *v, uint32_t i, uint32_t n) {
    for (uint32_t c; (c = 2 * i + 1) < n; i = c) {
        if (c + 1 < n && before(p, v[c], v[c + 1])) c++;
        if (!before(p, v[i], v[c])) return;
        uint32_t t = v[i]; v[i] = v[c]; v[c] = t;
    }
}

const char *group_layers(const strata_group_input *in, strata_layers *out) {
    uint32_t n = in->n_paths;
    if (in->budget == 0) return "no layer budget";
    uint32_t *order = strata_malloc(n * 4);
    for (uint32_t i = 0; i < n; i++) order[i] = i;
    for (uint32_t i = n / 2; i-- > 0;) sift(in->paths, order, i, n);
    for (uint32_t end = n; end-- > 1;) {
        uint32_t t = order[0]; order[0] = order[end]; order[end] = t;
        sift(in->paths, order, 0, end);
    }
    for (uint32_t i = 0; i < n; i++) {
        /* A new layer for each path until the last one the budget allows. */
        if (i < in->budget) strata_layer(out);
        strata_add(out, order[i]);
    }
    return 0;
}
