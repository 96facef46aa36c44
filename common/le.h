// Little-endian field encoding for kvlab's binary files (checkpoints, the training section): every field is
// written byte by byte, so a file is the same on every host and no struct padding leaks in. Floats travel as
// their IEEE-754 bit patterns (NaN payloads, -0 and subnormals survive).
#ifndef KVLAB_LE_H
#define KVLAB_LE_H

#include <stdint.h>

void le_put_u32(unsigned char *p, uint32_t v);
void le_put_u64(unsigned char *p, uint64_t v);
void le_put_f32(unsigned char *p, float v);
uint32_t le_get_u32(const unsigned char *p);
uint64_t le_get_u64(const unsigned char *p);
float le_get_f32(const unsigned char *p);

#endif
