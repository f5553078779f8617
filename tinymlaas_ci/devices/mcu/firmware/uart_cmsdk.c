/* Polled driver for the CMSDK APB UART (MPS2 AN386/AN500, MPS2 AN505, MPS3 AN547).
 *
 * Registers (Arm DDI0479C): DATA 0x0, STATE 0x4 (bit 0 TX full, bit 1 RX full), CTRL 0x8
 * (bit 0 TX enable, bit 1 RX enable), BAUDDIV 0x10 (at least 16). Polling keeps the firmware
 * free of interrupts, so an inference is never interrupted and its instruction count is exact.
 */
#include "tinyml_fw.h"

#define UART_DATA (*(volatile uint32_t *)(TINYML_UART_BASE + 0x00u))
#define UART_STATE (*(volatile uint32_t *)(TINYML_UART_BASE + 0x04u))
#define UART_CTRL (*(volatile uint32_t *)(TINYML_UART_BASE + 0x08u))
#define UART_BAUDDIV (*(volatile uint32_t *)(TINYML_UART_BASE + 0x10u))

void tinyml_uart_init(void)
{
    uint32_t div = (uint32_t)(TINYML_UART_PCLK_HZ) / (uint32_t)(TINYML_BAUD);
    UART_BAUDDIV = div < 16u ? 16u : div;
    UART_CTRL = 0x3u; /* TX and RX enabled, no interrupts */
}

void tinyml_uart_putc(uint8_t c)
{
    while (UART_STATE & 0x1u) {
    }
    UART_DATA = c;
}

uint8_t tinyml_uart_getc(void)
{
    while (!(UART_STATE & 0x2u)) {
    }
    return (uint8_t)UART_DATA;
}
