// Fibers for the CUDA emulator: see emu_fiber.h. glibc's swapcontext saves and restores the signal mask with a
// system call on every switch, which made a kernel with barriers or warp shuffles hundreds of times slower;
// on x86-64 the switch here is cuemu_switch_ctx below (six pushes, a stack swap, six pops, ret). Other
// architectures (or -DCUEMU_FORCE_UCONTEXT, to test that path on x86-64) use getcontext/makecontext/swapcontext.
#include "emu_fiber.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define CUEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUEMU_ASAN 1
#endif
#endif
#ifndef CUEMU_ASAN
#define CUEMU_ASAN 0
#endif

#if CUEMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__) || defined(CUEMU_FORCE_UCONTEXT)
#include <ucontext.h>
#endif

struct CuemuFiber {
    void *sp; // saved stack pointer (x86-64)
#if !defined(__x86_64__) || defined(CUEMU_FORCE_UCONTEXT)
    ucontext_t uc;
#endif
    CuemuFiberFn fn;
    void *user;
    char *stack;       // lowest usable byte (above the guard page)
    size_t stack_size; // usable bytes
    void *asan_fake;   // AddressSanitizer's fake stack of this fiber while it is switched out
};

// The scheduler's side: its saved context, and (AddressSanitizer) the bounds of its stack.
static void *g_sched_sp;
#if !defined(__x86_64__) || defined(CUEMU_FORCE_UCONTEXT)
static ucontext_t g_sched_uc;
#endif
#if CUEMU_ASAN
static void *g_sched_fake;
static const void *g_sched_bottom;
static size_t g_sched_size;
static int g_from_sched; // whether the switch in progress left the scheduler (whose stack bounds it then reports)

static void asan_arrived(void *fake) {
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(fake, &bottom, &size);
    if (g_from_sched) g_sched_bottom = bottom, g_sched_size = size;
}
#endif

#if defined(__x86_64__) && !defined(CUEMU_FORCE_UCONTEXT)
extern "C" void cuemu_switch_ctx(void **save_sp, void *new_sp);
extern "C" void cuemu_fiber_entry(void);
// cuemu_switch_ctx(save, to): pushes the callee-saved registers, stores rsp in *save, loads `to` and pops the
// other fiber's registers; its `ret` resumes that fiber. A new fiber's stack holds a frame whose r12 is the
// fiber and r13 its function, and whose return address is cuemu_fiber_entry, which calls fn(fiber).
asm(R"(
    .text
    .p2align 4
    .globl cuemu_switch_ctx
    .hidden cuemu_switch_ctx
    .type cuemu_switch_ctx, @function
cuemu_switch_ctx:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuemu_switch_ctx, .-cuemu_switch_ctx

    .p2align 4
    .globl cuemu_fiber_entry
    .hidden cuemu_fiber_entry
    .type cuemu_fiber_entry, @function
cuemu_fiber_entry:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cuemu_fiber_entry, .-cuemu_fiber_entry
)");
#else
static void fiber_trampoline(unsigned lo, unsigned hi) {
    CuemuFiber *f = (CuemuFiber *)(((uintptr_t)hi << 32) | (uintptr_t)lo);
    f->fn(f);
    abort();
}

__attribute__((noinline)) static void init_ucontext(CuemuFiber *f) {
    if (getcontext(&f->uc) != 0) abort();
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = f->stack_size;
    f->uc.uc_link = NULL;
    uintptr_t p = (uintptr_t)f;
    makecontext(&f->uc, (void (*)(void))fiber_trampoline, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
}
#endif

CuemuFiber *cuemu_fiber_new(CuemuFiberFn fn, size_t stack_bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    stack_bytes = (stack_bytes + page - 1) / page * page;
    size_t head = (sizeof(CuemuFiber) + page - 1) / page * page;
    // [guard page][stack, growing down][the CuemuFiber]: no heap allocation, so nothing for the leak checker (the
    // pool lives as long as the process)
    char *mem = (char *)mmap(NULL, page + stack_bytes + head, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                             -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "cuda-emu: cannot map a %zu-byte fiber stack\n", stack_bytes);
        abort();
    }
    if (mprotect(mem, page, PROT_NONE) != 0) abort(); // guard page: an overflow faults instead of corrupting
    CuemuFiber *f = new (mem + page + stack_bytes) CuemuFiber();
    f->fn = fn;
    f->stack = mem + page;
    f->stack_size = stack_bytes;
#if defined(__x86_64__) && !defined(CUEMU_FORCE_UCONTEXT)
    // Stack colouring: the fibers' stack tops, where their hot frames live, would all sit at the same offset in
    // a page and evict each other from the same cache sets (a block's threads run in turn); spread them out.
    static unsigned count;
    size_t colour = (size_t)(count++ % 61) * 1088; // 17 cache lines apart, over 64 KB
    if (colour + 64 * 1024 > stack_bytes) colour = 0;
    uintptr_t top = ((uintptr_t)(f->stack + stack_bytes - colour)) & ~(uintptr_t)15;
    void **sp = (void **)top - 7; // r15 r14 r13 r12 rbx rbp, return address
    sp[0] = NULL;
    sp[1] = NULL;
    sp[2] = (void *)fn;
    sp[3] = (void *)f;
    sp[4] = NULL;
    sp[5] = NULL; // rbp = 0 ends frame-pointer walks (AddressSanitizer's stack traces)
    sp[6] = (void *)&cuemu_fiber_entry;
    f->sp = sp;
#else
    init_ucontext(f);
#endif
    return f;
}

void *cuemu_fiber_user(CuemuFiber *f) { return f->user; }
void cuemu_fiber_set_user(CuemuFiber *f, void *user) { f->user = user; }

void cuemu_fiber_switch_to(CuemuFiber *f) {
#if CUEMU_ASAN
    g_from_sched = 1;
    __sanitizer_start_switch_fiber(&g_sched_fake, f->stack, f->stack_size);
#endif
#if defined(__x86_64__) && !defined(CUEMU_FORCE_UCONTEXT)
    cuemu_switch_ctx(&g_sched_sp, f->sp);
#else
    (void)g_sched_sp;
    if (swapcontext(&g_sched_uc, &f->uc) != 0) abort();
#endif
#if CUEMU_ASAN
    __sanitizer_finish_switch_fiber(g_sched_fake, NULL, NULL);
#endif
}

void cuemu_fiber_started(CuemuFiber *self) {
    (void)self;
#if CUEMU_ASAN
    asan_arrived(NULL);
#endif
}

void cuemu_fiber_yield(CuemuFiber *self) {
#if CUEMU_ASAN
    __sanitizer_start_switch_fiber(&self->asan_fake, g_sched_bottom, g_sched_size);
#endif
#if defined(__x86_64__) && !defined(CUEMU_FORCE_UCONTEXT)
    cuemu_switch_ctx(&self->sp, g_sched_sp);
#else
    if (swapcontext(&self->uc, &g_sched_uc) != 0) abort();
#endif
#if CUEMU_ASAN
    asan_arrived(self->asan_fake);
#endif
}

// Straight from one fiber to the next (a pass over a block's threads goes fiber to fiber, and since they all
// wait in the same call chain the processor's return-address predictions stay right).
void cuemu_fiber_switch(CuemuFiber *self, CuemuFiber *to) {
#if CUEMU_ASAN
    g_from_sched = 0;
    __sanitizer_start_switch_fiber(&self->asan_fake, to->stack, to->stack_size);
#endif
#if defined(__x86_64__) && !defined(CUEMU_FORCE_UCONTEXT)
    cuemu_switch_ctx(&self->sp, to->sp);
#else
    if (swapcontext(&self->uc, &to->uc) != 0) abort();
#endif
#if CUEMU_ASAN
    asan_arrived(self->asan_fake);
#endif
}
