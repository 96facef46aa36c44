// Import of GGUF v3 model files (the llama.cpp format) with architecture "llama": the metadata becomes a
// ModelConfig, the tensors are dequantized to fp32 into our ParamTensors at load, and the tokenizer.ggml.*
// keys become a byte-level BPE (data/bpe.h). Read-only: kvlab never writes GGUF.
//
// Format (every integer little-endian):
//   u32 magic "GGUF", u32 version (3; 2 is read the same way), u64 tensor_count, u64 kv_count,
//   kv_count x (string key, u32 value type, value), tensor_count x (string name, u32 n_dims, u64 dims[n_dims],
//   u32 ggml type, u64 offset), padding to general.alignment (default 32), then the tensor data; each tensor at
//   data_start + offset. A string is u64 length + bytes (no NUL); an array is u32 element type, u64 count,
//   elements.
//
// Supported tensor types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K (dequantized as ggml does).
// GGUF dims list the fastest-varying first: a weight with dims [in, out] is our (out, in) matrix.
// Q and K: llama.cpp's converter stores each head's rows so that RoPE rotates adjacent pairs (x[2i], x[2i+1]),
// which is our layers/rope.c convention, so the rows are loaded as they are (scripts/gguf_oracle.py proves it
// against a forward in the Hugging Face convention).
//
// Validation, in order, before anything is trusted: the file length against every read (a bounded cursor),
// magic, version, counts against what the remaining bytes could hold, string lengths, value types, array
// counts, duplicate keys, the architecture, the required keys and their ranges, each tensor's type, dims and
// byte size (overflow-checked) against the file, the tensor set (every tensor the model needs, nothing
// unknown), the tokenizer. Any failure is one line in err naming the file and what is wrong, and -1 with
// nothing left allocated.
#ifndef KVLAB_GGUF_H
#define KVLAB_GGUF_H

#include "../common/common.h"
#include "../data/tokenizer.h"
#include "../layers/model.h"
#include "../layers/ops.h"

#define GGUF_MAGIC "GGUF"

// Whether the file at path starts with the GGUF magic (0 when it cannot be read).
int gguf_is_file(const char *path);

// Loads a GGUF llama model into an uninitialised Model (model_init(m, &cfg, ops), weights dequantized) and its
// tokenizer into tok (a BPE; free with tokenizer_free). -1 with a one-line message in err, nothing allocated.
int gguf_load(const char *path, Model *m, const Ops *ops, Tokenizer *tok, char *err);

// The one way the programs load a model file: a GGUF file (by its magic) through gguf_load, anything else
// through checkpoint_load (weights and tokenizer only). -1 with a one-line message in err.
int gguf_or_checkpoint_load(const char *path, Model *m, const Ops *ops, Tokenizer *tok, char *err);

// The parsing and validation alone, from memory (the fuzz target and the tests): data[0..len) is a whole
// file. With m == NULL only parses and validates (no weights dequantized, no model allocated); otherwise as
// gguf_load. tok may be NULL (the tokenizer is then validated and freed).
int gguf_load_memory(const unsigned char *data, size_t len, const char *name, Model *m, const Ops *ops,
                     Tokenizer *tok, char *err);

#endif
