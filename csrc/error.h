/*
 * error.h -- filling a tk_err.
 *
 * Every failing engine function fills the caller's tk_err (which may be
 * NULL) and returns its code, so call sites read `return tk_fail(...)`.
 * Messages name the operation first and the path or offset second, as
 * luaL_fileresult does: "open /data/log/x.log: Permission denied".
 */
#ifndef TK_ERROR_H
#define TK_ERROR_H

#include "takhin.h"

#if defined(__GNUC__)
#define TK_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TK_PRINTF(a, b)
#endif

/* A failure that is not a system call's: code and message only. */
tk_code tk_fail(tk_err *err, tk_code code, const char *fmt, ...) TK_PRINTF(3, 4);

/* A system call failed with errno e: the code is derived from e
 * (ENOENT -> NOT_FOUND, ENOSPC/EDQUOT -> NOSPC, ...) and ": strerror(e)"
 * is appended to the message. */
tk_code tk_fail_errno(tk_err *err, int e, const char *fmt, ...) TK_PRINTF(3, 4);

tk_code tk_code_from_errno(int e);

/* Passes on an error a callee put in a scratch tk_err: copies it into err
 * (which may be NULL) and returns its code. */
tk_code tk_fail_pass(tk_err *err, const tk_err *scratch);

/* Puts "<formatted text>: " before the message already in err (which may
 * be NULL) and returns code: for naming the operation around a callee's
 * error. */
tk_code tk_fail_prefix(tk_err *err, tk_code code, const char *fmt, ...) TK_PRINTF(3, 4);

#endif
