// Fibers for the CUDA emulator (emu_fiber.cpp): one per CUDA thread of a block, on its own mmap'd stack with a
// guard page, switched in user space (x86-64: a few instructions that save the callee-saved registers and the
// stack pointer; elsewhere the portable, slower ucontext). AddressSanitizer is told about every switch, so it
// follows the stack in use.
#ifndef KVLAB_CUDA_EMU_FIBER_H
#define KVLAB_CUDA_EMU_FIBER_H

#include <stddef.h>

typedef struct CuemuFiber CuemuFiber;
typedef void (*CuemuFiberFn)(CuemuFiber *self);

// A fiber that will run fn(self) on its first switch_to; fn must never return (it switches back instead).
CuemuFiber *cuemu_fiber_new(CuemuFiberFn fn, size_t stack_bytes);
void *cuemu_fiber_user(CuemuFiber *f);            // the user pointer (set with cuemu_fiber_set_user)
void cuemu_fiber_set_user(CuemuFiber *f, void *user);
void cuemu_fiber_switch_to(CuemuFiber *f);        // from the scheduler (the OS thread's own stack) into f
void cuemu_fiber_yield(CuemuFiber *self);         // from f back to the scheduler
void cuemu_fiber_switch(CuemuFiber *self, CuemuFiber *to); // from one fiber straight into another
void cuemu_fiber_started(CuemuFiber *self);       // the first thing fn does (AddressSanitizer bookkeeping)

#endif
