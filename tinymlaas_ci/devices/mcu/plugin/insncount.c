/* Exact instruction counts between two marker addresses, for QEMU's TCG plugin loader.
 *
 * Arguments: begin=<address>, end=<address>, out=<file>. Every executed guest instruction adds
 * one to a counter (an inline add, no callback); the first instruction of the begin marker
 * records the counter, the first instruction of the end marker appends the difference to the
 * output file, one decimal count per line, flushed at once so the host can read it as soon as
 * the board's answer arrives. The firmware runs with interrupts off, so nothing else executes
 * between the markers.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

TINYML_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t executed;
static uint64_t begin_at;
static uint64_t begin_addr = UINT64_MAX;
static uint64_t end_addr = UINT64_MAX;
static FILE *out;

static void on_begin(unsigned int vcpu, void *userdata)
{
    (void)vcpu;
    (void)userdata;
    begin_at = executed;
}

static void on_end(unsigned int vcpu, void *userdata)
{
    (void)vcpu;
    (void)userdata;
    fprintf(out, "%" PRIu64 "\n", executed - begin_at);
    fflush(out);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t addr = qemu_plugin_insn_vaddr(insn);
        /* The marker callbacks are registered before the add so both see the same order. */
        if (addr == begin_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (addr == end_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
    }
}

static void on_qemu_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    if (out) {
        fclose(out);
        out = NULL;
    }
}

TINYML_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    const char *path = NULL;
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "begin=", 6) == 0) {
            begin_addr = strtoull(argv[i] + 6, NULL, 0);
        } else if (strncmp(argv[i], "end=", 4) == 0) {
            end_addr = strtoull(argv[i] + 4, NULL, 0);
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else {
            fprintf(stderr, "insncount: unknown argument %s\n", argv[i]);
            return 1;
        }
    }
    if (begin_addr == UINT64_MAX || end_addr == UINT64_MAX || path == NULL) {
        fprintf(stderr, "insncount: needs begin=, end= and out=\n");
        return 1;
    }
    out = fopen(path, "a"); /* the host created it empty and reads it as it grows */
    if (out == NULL) {
        fprintf(stderr, "insncount: cannot open %s\n", path);
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
    return 0;
}
