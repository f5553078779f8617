/* The board side of the host protocol (protocol.py holds the host side and the frame layout).
 *
 * INFER_STORED exists for emulated boards only: QEMU's UART delivers bytes to the guest one
 * main-loop iteration at a time (about 14 KB/s), so the QEMU transport preloads the test
 * samples into memory outside the budgets and names each by its offset; the inference itself,
 * and everything measured about it, is the same as for a sample sent over the UART.
 *
 * A frame is SYNC(0xA5) TYPE LEN(u16 LE) PAYLOAD CRC(u16 LE, CRC-16/CCITT-FALSE over TYPE, LEN
 * and PAYLOAD). The board answers every request with exactly one frame, so the host never
 * needs a timeout to tell where an answer ends. The input is received straight into the buffer
 * the model reads, so a sample costs no copy and no extra RAM.
 */
#include <string.h>

#include "model.h"
#include "tinyml_fw.h"

#define PROTOCOL_VERSION 1u
#define SYNC 0xA5u

#define MSG_INFO 0x01u
#define MSG_INFER 0x02u
#define MSG_INFER_MARKED 0x03u
#define MSG_INFER_STORED 0x04u
#define MSG_READY 0x80u
#define MSG_INFO_REPLY 0x81u
#define MSG_OUTPUT 0x82u
#define MSG_ERROR 0xFFu

#define ERR_CRC 1u
#define ERR_LENGTH 2u
#define ERR_TYPE 3u
#define ERR_RANGE 4u

#define INPUT_CAPACITY (TINYML_INPUT_SIZE > 8 ? TINYML_INPUT_SIZE : 8)

static int8_t input_buffer[INPUT_CAPACITY] __attribute__((aligned(8)));
/* status (i32), cycles (u32), then the model's output */
static int8_t output_buffer[8 + TINYML_OUTPUT_SIZE] __attribute__((aligned(8)));

/* Cycles per inference: the DWT cycle counter where the core has one that runs; otherwise
 * (Armv8-M parts may omit it, and QEMU models no DWT) SysTick on the processor clock, 24 bits
 * wide, restarted for each inference and polled, so one longer than 2^24 cycles reports 0
 * (unknown). Under QEMU SysTick follows the host's clock: the harness uses the exact
 * instruction counts there. */
#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define DWT_LAR (*(volatile uint32_t *)0xE0001FB0u)
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_COUNTFLAG (1u << 16)

static int use_systick;

static void cycle_counter_init(void)
{
    DEMCR |= 1u << 24; /* TRCENA */
    DWT_LAR = 0xC5ACCE55u; /* unlocks the DWT on cores that have the lock (Cortex-M7) */
    DWT_CYCCNT = 0u;
    DWT_CTRL |= 1u; /* CYCCNTENA */
    uint32_t before = DWT_CYCCNT;
    for (volatile int i = 0; i < 16; i++) {
    }
    if (DWT_CYCCNT == before) {
        use_systick = 1;
        SYST_RVR = 0x00FFFFFFu;
        SYST_CVR = 0u;
        SYST_CSR = 5u; /* processor clock, enabled, no interrupt */
    }
}

static uint32_t cycles_now(void)
{
    if (use_systick) {
        SYST_CVR = 0u; /* restarts the count from the reload value and clears COUNTFLAG */
        return 0x00FFFFFFu;
    }
    return DWT_CYCCNT;
}

static uint32_t cycles_since(uint32_t start)
{
    if (use_systick) {
        uint32_t now = SYST_CVR;
        if (SYST_CSR & SYST_COUNTFLAG) {
            return 0u; /* counted down through 0: longer than 2^24 cycles, too long to tell */
        }
        return start - now;
    }
    return DWT_CYCCNT - start;
}

/* Read back from the image by the host build (elf.py): the model's sizes as compiled. */
__attribute__((used, section(".rodata.tinyml_facts"))) const uint32_t tinyml_fw_facts[4] = {
    (uint32_t)TINYML_INPUT_SIZE, (uint32_t)TINYML_OUTPUT_SIZE, (uint32_t)TINYML_ARENA_SIZE, PROTOCOL_VERSION,
};

/* Written by the markers so that the compiler can neither fold nor drop them. */
volatile uint32_t tinyml_marker_state;

/* The instruction-count plugin counts every instruction executed from the first instruction
 * of tinyml_mark_begin up to the first instruction of tinyml_mark_end. */
__attribute__((noipa, used)) void tinyml_mark_begin(void)
{
    tinyml_marker_state = 1u;
}

__attribute__((noipa, used)) void tinyml_mark_end(void)
{
    tinyml_marker_state = 2u;
}

uint16_t tinyml_crc16(uint16_t crc, const uint8_t *data, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint16_t)data[i] << 8);
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

void tinyml_send_frame(uint8_t type, const uint8_t *payload, uint16_t len)
{
    uint8_t head[3] = {type, (uint8_t)(len & 0xFFu), (uint8_t)(len >> 8)};
    uint16_t crc = tinyml_crc16(0xFFFFu, head, 3u);
    crc = tinyml_crc16(crc, payload, len);
    tinyml_uart_putc(SYNC);
    for (int i = 0; i < 3; i++) {
        tinyml_uart_putc(head[i]);
    }
    for (uint16_t i = 0; i < len; i++) {
        tinyml_uart_putc(payload[i]);
    }
    tinyml_uart_putc((uint8_t)(crc & 0xFFu));
    tinyml_uart_putc((uint8_t)(crc >> 8));
}

static void send_error(uint8_t code, const char *message)
{
    uint8_t payload[48];
    uint16_t len = 1u;
    payload[0] = code;
    while (*message && len < sizeof(payload)) {
        payload[len++] = (uint8_t)*message++;
    }
    tinyml_send_frame(MSG_ERROR, payload, len);
}

static void put_u32(uint8_t *out, uint32_t value)
{
    out[0] = (uint8_t)value;
    out[1] = (uint8_t)(value >> 8);
    out[2] = (uint8_t)(value >> 16);
    out[3] = (uint8_t)(value >> 24);
}

static uint32_t float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof(bits));
    return bits;
}

static void send_info(void)
{
    uint8_t payload[48];
    uint32_t words[11] = {
        tinyml_fw_facts[0],
        tinyml_fw_facts[1],
        tinyml_fw_facts[2],
        (uint32_t)tinyml_macs,
        (uint32_t)tinyml_weights_bytes,
        (uint32_t)((uint8_t *)&__stack_top - (uint8_t *)&__stack_bottom),
        tinyml_stack_high_water(),
        float_bits(tinyml_input_scale),
        (uint32_t)tinyml_input_zero_point,
        float_bits(tinyml_output_scale),
        (uint32_t)tinyml_output_zero_point,
    };
    payload[0] = (uint8_t)tinyml_fw_facts[3];
    payload[1] = 0u;
    payload[2] = 0u;
    payload[3] = 0u;
    for (int i = 0; i < 11; i++) {
        put_u32(&payload[4 + 4 * i], words[i]);
    }
    tinyml_send_frame(MSG_INFO_REPLY, payload, (uint16_t)sizeof(payload));
}

static void infer(int marked)
{
    int status;
    uint32_t cycles = 0u;
    if (marked) {
        uint32_t start = cycles_now();
        tinyml_mark_begin();
        status = tinyml_model_run(input_buffer, &output_buffer[8]);
        tinyml_mark_end();
        cycles = cycles_since(start);
    } else {
        status = tinyml_model_run(input_buffer, &output_buffer[8]);
    }
    put_u32((uint8_t *)output_buffer, (uint32_t)status);
    put_u32((uint8_t *)output_buffer + 4, cycles);
    tinyml_send_frame(MSG_OUTPUT, (const uint8_t *)output_buffer, (uint16_t)(8 + TINYML_OUTPUT_SIZE));
}

int main(void)
{
    tinyml_uart_init();
    cycle_counter_init();
    uint8_t version = PROTOCOL_VERSION;
    tinyml_send_frame(MSG_READY, &version, 1u);
    for (;;) {
        if (tinyml_uart_getc() != SYNC) {
            continue; /* resynchronise on the next sync byte */
        }
        uint8_t head[3];
        for (int i = 0; i < 3; i++) {
            head[i] = tinyml_uart_getc();
        }
        uint16_t len = (uint16_t)(head[1] | ((uint16_t)head[2] << 8));
        if (len > INPUT_CAPACITY) {
            for (uint32_t i = 0; i < (uint32_t)len + 2u; i++) {
                (void)tinyml_uart_getc();
            }
            send_error(ERR_LENGTH, "payload longer than the input buffer");
            continue;
        }
        uint8_t *payload = (uint8_t *)input_buffer;
        for (uint16_t i = 0; i < len; i++) {
            payload[i] = tinyml_uart_getc();
        }
        uint16_t got = tinyml_uart_getc();
        got |= (uint16_t)((uint16_t)tinyml_uart_getc() << 8);
        uint16_t crc = tinyml_crc16(tinyml_crc16(0xFFFFu, head, 3u), payload, len);
        if (got != crc) {
            send_error(ERR_CRC, "frame CRC mismatch");
            continue;
        }
        switch (head[0]) {
        case MSG_INFO:
            send_info();
            break;
        case MSG_INFER:
        case MSG_INFER_MARKED:
            if (len != TINYML_INPUT_SIZE) {
                send_error(ERR_LENGTH, "input is not TINYML_INPUT_SIZE bytes");
            } else {
                infer(head[0] == MSG_INFER_MARKED);
            }
            break;
#ifdef TINYML_SAMPLE_BASE
        case MSG_INFER_STORED:
            /* u32 offset of the sample in the preloaded sample memory, u8 marked */
            if (len != 5u) {
                send_error(ERR_LENGTH, "INFER_STORED takes a u32 offset and a u8 flag");
            } else {
                uint32_t offset = (uint32_t)payload[0] | ((uint32_t)payload[1] << 8) |
                                  ((uint32_t)payload[2] << 16) | ((uint32_t)payload[3] << 24);
                int marked = payload[4] != 0u;
                if (offset > (uint32_t)TINYML_SAMPLE_BYTES - (uint32_t)TINYML_INPUT_SIZE) {
                    send_error(ERR_RANGE, "sample offset outside the sample memory");
                } else {
                    memcpy(input_buffer, (const void *)(TINYML_SAMPLE_BASE + offset), TINYML_INPUT_SIZE);
                    infer(marked);
                }
            }
            break;
#endif
        default:
            send_error(ERR_TYPE, "unknown message type");
            break;
        }
    }
}
