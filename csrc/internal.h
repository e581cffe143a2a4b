/*
 * internal.h -- included first by every engine source file.
 *
 * Everything the engine defines is hidden from the dynamic symbol table
 * unless takhin.h marks it TK_API, whatever -fvisibility the build passes
 * (a rockspec cannot pass that flag): engine internals never clash with
 * the host's symbols.
 *
 * It must come after every other #include of the file: a system or
 * library function declared after the pragma would be taken for one of
 * ours, and the link would fail.
 */
#ifndef TK_INTERNAL_H
#define TK_INTERNAL_H

#include "takhin.h"

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#endif
