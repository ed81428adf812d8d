/*
 * engine.h: internal access to a context's parts, for other library modules (the context
 * codec reads and writes its KV cache; evaluation compares caches). Not public API.
 */
#ifndef KVP_ENGINE_H
#define KVP_ENGINE_H

#include "kv/kv.h"
#include "kvpack.h"
#include "model/model.h"

kvp_kv *kvp_ctx_kv(kvp_ctx *c);
kvp_pool *kvp_ctx_pool(kvp_ctx *c);

#endif
