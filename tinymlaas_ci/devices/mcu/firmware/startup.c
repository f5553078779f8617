/* Reset handler, vector table and fault reporting for Armv7-M and Armv8-M mainline cores.
 *
 * Order at reset matters: the FPU (and, on Cortex-M55, MVE, which uses the same coprocessor
 * enables) is switched on before any code that may use floating point; on Armv8-M the stack
 * limit register is set so that an overflow faults instead of silently overwriting .bss; then
 * .data is copied, .bss zeroed and the unused stack painted for the high-water measurement.
 */
#include "tinyml_fw.h"

int main(void);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_SHCSR (*(volatile uint32_t *)0xE000ED24u)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)

void Reset_Handler(void);
void Fault_Handler(void);
void tinyml_fault_report(uint32_t *frame, uint32_t exc_return);

/* newlib's exit path (never taken: main does not return) references these with -nostartfiles. */
void _init(void) {}
void _fini(void) {}

__attribute__((section(".vectors"), used)) void (*const tinyml_vectors[16])(void) = {
    (void (*)(void))(&__stack_top),
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    Fault_Handler, /* SecureFault (Armv8-M) */
    0,
    0,
    0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    Fault_Handler, /* SysTick */
};

__attribute__((noreturn)) void Reset_Handler(void)
{
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    SCB_CPACR |= 0xFu << 20; /* CP10 and CP11 full access: FPU, and MVE on Cortex-M55 */
    __asm volatile("dsb\n\tisb" ::: "memory");
#endif
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
    __asm volatile("msr msplim, %0" ::"r"(&__stack_bottom));
#endif
    /* Usage, bus and memory faults get their own status instead of escalating silently. */
    SCB_SHCSR |= (1u << 16) | (1u << 17) | (1u << 18);

    uint32_t *src = &__data_load;
    for (uint32_t *dst = &__data_start; dst < &__data_end;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &__bss_start; dst < &__bss_end;) {
        *dst++ = 0u;
    }
    uint32_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    /* Paint up to a little below the live frame of this function. */
    for (volatile uint32_t *p = &__stack_bottom; (uint32_t)p < sp - 64u; p++) {
        *p = TINYML_STACK_PAINT;
    }
    main();
    for (;;) {
    }
}

uint32_t tinyml_stack_high_water(void)
{
    const uint32_t *p = &__stack_bottom;
    while (p < &__stack_top && *p == TINYML_STACK_PAINT) {
        p++;
    }
    return (uint32_t)((const uint8_t *)&__stack_top - (const uint8_t *)p);
}

/* The reporter runs on its own stack: after a stack overflow the main one has no room left,
 * and on Armv8-M every push would hit the stack limit again and lock the core up. */
static uint32_t fault_stack[128] __attribute__((aligned(8), used));

/* Picks the stack the exception frame was pushed to and hands it to the reporter. */
__attribute__((naked)) void Fault_Handler(void)
{
    __asm volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "mov r1, lr\n\t"
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
        "movs r2, #0\n\t"
        "msr msplim, r2\n\t"
#endif
        "movw r2, #:lower16:fault_stack + 512\n\t"
        "movt r2, #:upper16:fault_stack + 512\n\t"
        "msr msp, r2\n\t"
        "b tinyml_fault_report\n\t");
}

/* Sends one FAULT frame (type 0xFE) with the exception number and fault status, then stops.
 * The host turns it into an error naming the fault and the faulting instruction's address. */
__attribute__((noreturn, used)) void tinyml_fault_report(uint32_t *frame, uint32_t exc_return)
{
    uint32_t ipsr;
    __asm volatile("mrs %0, ipsr" : "=r"(ipsr));
    uint32_t words[9] = {
        ipsr & 0x1FFu, SCB_CFSR, SCB_HFSR, SCB_MMFAR, SCB_BFAR, frame[6], frame[5], exc_return,
        tinyml_stack_high_water(),
    };
    tinyml_send_frame(0xFEu, (const uint8_t *)words, (uint16_t)sizeof(words));
    for (;;) {
    }
}
