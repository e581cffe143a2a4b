/*
 * error.c -- error codes and messages.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "internal.h"

static const char *const code_names[TK_CODE_COUNT] = {
    "OK", "NOT_FOUND", "OUT_OF_RANGE", "LOCKED", "CORRUPT", "EXISTS",
    "NOT_EMPTY", "TOO_SOON", "INVALID", "NOSPC", "IO", "READONLY", "NOMEM",
    "CONFLICT", "FULL", "CANCELED",
};

const char *tk_code_name(tk_code code) {
    if ((unsigned)code >= TK_CODE_COUNT) return "IO";
    return code_names[code];
}

tk_code tk_code_from_errno(int e) {
    switch (e) {
    case ENOENT: case ENOTDIR: return TK_NOT_FOUND;
    case ENOSPC: case EDQUOT:  return TK_NOSPC;
    case ENOMEM:               return TK_NOMEM;
    case EEXIST:               return TK_EXISTS;
    case ENOTEMPTY:            return TK_NOT_EMPTY;
    case EROFS:                return TK_READONLY;
    default:                   return TK_IO;
    }
}

tk_code tk_fail(tk_err *err, tk_code code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
        err->sys_errno = 0;
    }
    return code;
}

tk_code tk_fail_errno(tk_err *err, int e, const char *fmt, ...) {
    tk_code code = tk_code_from_errno(e);
    if (err) {
        va_list ap;
        size_t n;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, ": %s", strerror(e));
        err->code = code;
        err->sys_errno = e;
    }
    return code;
}

tk_code tk_fail_pass(tk_err *err, const tk_err *scratch) {
    if (err && err != scratch) *err = *scratch;
    return scratch->code;
}

tk_code tk_fail_prefix(tk_err *err, tk_code code, const char *fmt, ...) {
    if (err) {
        char tail[sizeof err->msg];
        va_list ap;
        size_t n;
        snprintf(tail, sizeof tail, "%s", err->msg);
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        n = strlen(err->msg);
        snprintf(err->msg + n, sizeof err->msg - n, ": %s", tail);
        err->code = code;
    }
    return code;
}
