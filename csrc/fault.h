/*
 * fault.h -- crash points for tests.
 *
 * Built with -DTK_FAULT_INJECTION (the `make` variable FAULT=1, never the
 * normal build), TK_FAULT("create.renamed") kills the process with SIGKILL
 * when the environment variable TAKHIN_FAULT names that step ("step", or
 * "step@N" for the Nth time this process reaches it).  Specs use it
 * to stop a child at every named step of a protocol and check what a new
 * process finds.  In a normal build the macro is empty.
 */
#ifndef TK_FAULT_H
#define TK_FAULT_H

#ifdef TK_FAULT_INJECTION
void tk_fault_point(const char *name);
#define TK_FAULT(name) tk_fault_point(name)
#else
#define TK_FAULT(name) ((void)(name))
#endif

#endif
