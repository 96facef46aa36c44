// Private salts: a request that must share no block with any other (a reuse hit's moved prompt, a request
// asking for no reuse) seeds its block hashes with a salt no other sequence has. Used by the engine and the
// reuse path alike, so neither calls into the other for it.
#include <xxhash.h>

#include "serve.h"

uint64_t serve_private_salt(Engine *e) {
    uint64_t salt = XXH64(&e->private_salt, sizeof e->private_salt, 0x6b766c6162ULL);
    e->private_salt++;
    return salt;
}
