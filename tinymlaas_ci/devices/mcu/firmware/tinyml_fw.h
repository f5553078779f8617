/* Firmware-side declarations shared by the startup code, the UART driver and the main loop.
 *
 * The board preset passes its facts as -D flags (see boards.py): TINYML_UART_BASE,
 * TINYML_UART_PCLK_HZ, TINYML_BAUD. Nothing here depends on a vendor SDK: the firmware talks to
 * the CMSDK APB UART of the MPS2/MPS3 FPGA images directly.
 */
#ifndef TINYML_FW_H
#define TINYML_FW_H

#include <stdint.h>

/* Linker-script symbols (link.ld is generated per build from the board and the budgets). */
extern uint32_t __data_load, __data_start, __data_end;
extern uint32_t __bss_start, __bss_end;
extern uint32_t __stack_bottom, __stack_top;

#define TINYML_STACK_PAINT 0xC5A5C5A5u

void tinyml_uart_init(void);
void tinyml_uart_putc(uint8_t c);
uint8_t tinyml_uart_getc(void);

/* Frame writer used by the main loop and by the fault handler (layout: devices/mcu/protocol.py). */
void tinyml_send_frame(uint8_t type, const uint8_t *payload, uint16_t len);
uint16_t tinyml_crc16(uint16_t crc, const uint8_t *data, uint32_t len);

/* Bytes of the stack ever used since boot: the painted words that were overwritten. */
uint32_t tinyml_stack_high_water(void);

#endif
