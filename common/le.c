// Little-endian field encoding (le.h).
#include "le.h"

#include <string.h>

void le_put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

void le_put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

void le_put_f32(unsigned char *p, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    le_put_u32(p, u);
}

uint32_t le_get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}

uint64_t le_get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

float le_get_f32(const unsigned char *p) {
    uint32_t u = le_get_u32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
